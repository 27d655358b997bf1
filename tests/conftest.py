"""Shared test fixtures: where the golden data lives, and the expensive models built once."""
from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
PARITY = GOLDEN / "parity"  # a copy of shared/reference/parity, so CI needs nothing beside the repo


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
