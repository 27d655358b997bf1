"""Shared test fixtures: where the golden data lives, and the expensive models built once."""
from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
PARITY = GOLDEN / "parity"  # a copy of shared/reference/parity, so CI needs nothing beside the repo


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The runtime remembers self-check passes in a cache folder: never the user's own
    during tests (and a fresh one per test session, so every check really runs once)."""
    import os

    path = tmp_path_factory.mktemp("mm-cache")
    old = os.environ.get("MANGA_MUSIC_CACHE")
    os.environ["MANGA_MUSIC_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MANGA_MUSIC_CACHE", None)
    else:
        os.environ["MANGA_MUSIC_CACHE"] = old


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY


@pytest.fixture(scope="session")
def full_parity_model():
    """Full-size AudioCLIP with the parity recipe's weights (about 3 s and 0.6 GB to build)."""
    torch = pytest.importorskip("torch")
    from training.parity_weights import parity_model

    torch.set_num_threads(2)
    return parity_model(str(PARITY / "state_dict_layout.json"))
