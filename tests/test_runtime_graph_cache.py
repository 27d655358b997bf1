"""What a start need not redo (runtime/graph_cache.py): a graph's sha256 and ORT's optimised
form of it are remembered between processes, and neither hides a changed or damaged file."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import runtime_fixtures as rf
from runtime_fixtures import world  # noqa: F401  (session fixture)

from runtime import graph_cache, sessions
from runtime.bundle import Bundle
from runtime.encoders import Encoders
from runtime.errors import BundleError


@pytest.fixture()
def bundle_copy(world, tmp_path):  # noqa: F811
    return shutil.copytree(world.bundle, tmp_path / "bundle")


def _hashes(monkeypatch) -> list:
    calls = []
    real = graph_cache.sha256_file
    monkeypatch.setattr(graph_cache, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    return calls


def test_a_graph_is_hashed_once_and_its_optimised_form_reused(bundle_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    hashed = _hashes(monkeypatch)
    first = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    page = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    a = first.embed_images([page])
    assert [p.name for p in hashed] == ["image.int8.onnx"]
    optimised = list((cache / graph_cache.OPTIMIZED).glob("*.onnx"))
    assert len(optimised) == 1
    # A second start: no hashing, and the session is made from the optimised file.
    hashed.clear()
    opened = []
    real = sessions._new_session
    monkeypatch.setattr(sessions, "_new_session", lambda p, *a: opened.append(p) or real(p, *a))
    second = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    b = second.embed_images([page])
    assert hashed == [] and opened == []  # the cached optimised graph was loaded directly
    assert np.allclose(a, b, atol=1e-6)


def test_a_rewritten_graph_is_hashed_again_and_refused(bundle_copy, tmp_path):
    cache = tmp_path / "cache"
    Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache).encoder("image")
    enc = Bundle.load(bundle_copy).manifest.encoder("image", "int8")
    path = bundle_copy / enc.file
    st = path.stat()
    rf.tamper(path)  # same size; the write changes ctime, which no user can set back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with mtime put back
    with pytest.raises(BundleError, match="sha256 does not match"):
        Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache).encoder("image")


def test_a_damaged_optimised_graph_is_dropped_and_rebuilt(bundle_copy, tmp_path):
    cache = tmp_path / "cache"
    page = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    a = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache).embed_images([page])
    (entry,) = (cache / graph_cache.OPTIMIZED).glob("*.onnx")
    entry.write_bytes(b"not a graph")
    b = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache).embed_images([page])
    assert np.allclose(a, b, atol=1e-6)
    assert entry.stat().st_size > 100  # rebuilt


def test_a_callers_own_session_options_get_the_graph_as_it_is(bundle_copy, tmp_path):
    import onnxruntime as ort

    cache = tmp_path / "cache"
    so = ort.SessionOptions()
    Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache, session_options=so).encoder("image")
    assert not (cache / graph_cache.OPTIMIZED).exists()


def test_an_unwritable_cache_still_runs(bundle_copy, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    enc = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=blocked)
    assert enc.embed_texts(["hello"]).shape == (1, rf.EMBED_DIM)
