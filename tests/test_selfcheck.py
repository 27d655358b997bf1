"""The bundle's self-check (runtime/selfcheck.py, Encoders): a graph computing wrong numbers
on this machine is caught at first use, a pass is remembered per graph and machine, a
failure falls back to the fp32 graph or stops with one line, and the check can be skipped.
No torch: the tiny bundle's goldens are made with its fp32 graphs (tests/runtime_fixtures.py).
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx import numpy_helper

import runtime_fixtures as rf
from runtime_fixtures import world  # noqa: F401  (session fixture)

from runtime import selfcheck
from runtime.bundle import Bundle
from runtime.encoders import Encoders
from runtime.errors import BundleError

REPO = rf.ROOT


def _rewrite_graph(bundle_dir, file: str, edit) -> None:
    """Apply ``edit`` to one graph's model proto and record the new file's sha256 and size
    in the manifest: the file is then consistent, only its numbers are wrong."""
    import onnx

    path = bundle_dir / file
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for e in manifest["encoders"]:
        if e["file"] == file:
            e["sha256"], e["bytes"] = rf._sha(path), path.stat().st_size
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


def _scale_first_weight(factor: float):
    """Scale one weight matrix (the first float initializer with 2 dimensions)."""
    def edit(model):
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim == 2:
                init.CopyFrom(numpy_helper.from_array((arr * factor).astype(np.float32), init.name))
                return
        raise AssertionError("no 2-D float weight to scale")
    return edit


def _scale_int8_weight_scale(factor: float):
    """In a dynamically quantised graph, scale one weight's dequantisation scale."""
    def edit(model):
        for init in model.graph.initializer:
            if init.name.endswith("w1_scale"):
                arr = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((arr * factor).astype(arr.dtype), init.name))
                return
        raise AssertionError([i.name for i in model.graph.initializer])
    return edit


@pytest.fixture()
def bundle_copy(world, tmp_path):  # noqa: F811
    return shutil.copytree(world.bundle, tmp_path / "bundle")


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "cache"


def test_every_graph_of_a_healthy_bundle_passes_and_the_pass_is_cached(bundle_copy, cache, monkeypatch):
    manifest = Bundle.load(bundle_copy).manifest
    assert {g.modality for g in manifest.goldens} == {"image", "text", "audio"}
    assert all(e.selfcheck_min_cosine > 0.9 for e in manifest.encoders)
    enc = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    for modality in ("image", "text", "audio"):
        enc.encoder(modality)
        r = enc.selfchecks[modality]
        print(f"\n{r.describe()}")
        assert r.passed and not r.cached and r.cosine >= r.floor
    assert len(list((cache / "selfcheck").glob("*.json"))) == 3

    # A new process (here: new Encoders) finds the passes and runs nothing.
    runs = []
    monkeypatch.setattr(selfcheck, "golden_batch", lambda *a: runs.append(a) or pytest.fail("re-ran a cached check"))
    again = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    again.encoder("image")
    assert again.selfchecks["image"].cached and runs == []


def test_the_cache_key_names_graph_runtime_and_cpu(bundle_copy, cache, monkeypatch):
    from runtime.cpu import CpuInfo

    Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache).encoder("image")
    # The same graph on a CPU with other int8 features is a different machine: checked again.
    other = CpuInfo("Some AVX2 laptop", "x86_64", ("avx2", "fma"))
    monkeypatch.setattr(selfcheck, "cpu_info", lambda: other)
    e = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    e.encoder("image")
    assert not e.selfchecks["image"].cached
    assert len(list((cache / "selfcheck").glob("*.json"))) == 2


def test_a_scaled_weight_is_caught_and_the_fp32_graph_used_instead(bundle_copy, cache, caplog):
    _rewrite_graph(bundle_copy, "image.int8.onnx", _scale_int8_weight_scale(-1.0))
    enc = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="manga_music"):
        loaded = enc.encoder("image")
    failed = [r for r in caplog.records if "fails its self-check" in r.getMessage()]
    assert len(failed) == 1 and "\n" not in failed[0].getMessage()
    assert "image.int8.onnx" in failed[0].getMessage() and "fp32" in failed[0].getMessage()
    assert loaded.encoder.precision == "fp32" and enc.selfchecks["image"].passed
    # The failure was not remembered: it is measured again next time.
    assert all(json.loads(p.read_text())["file"] != "image.int8.onnx" for p in (cache / "selfcheck").glob("*.json"))
    # Embeddings now come from the fp32 graph, which agrees with a fresh fp32 session.
    page = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    ref = Encoders(bundle_copy, device="cpu", precision="fp32", selfcheck=False).embed_images([page])
    assert np.allclose(enc.embed_images([page]), ref, atol=1e-6)


def test_without_an_fp32_graph_a_failure_stops_with_one_line(world, tmp_path, cache):  # noqa: F811
    bdir = rf.write_tiny_bundle(tmp_path / "int8only", precisions=("int8",))
    _rewrite_graph(bdir, "audio.int8.onnx", _scale_int8_weight_scale(-1.0))
    track = sorted(world.music.rglob("*.wav"))[0]
    with pytest.raises(BundleError, match="fails its self-check.*no fp32 audio graph") as err:
        Encoders(bdir, device="cpu", cache_dir=cache).embed_audio([track])
    assert "\n" not in str(err.value)
    # The CLI: exit 2, one line on stderr, no traceback.
    run = subprocess.run([sys.executable, "-m", "runtime.query", "--audio", str(track), "--bundle", str(bdir),
                          "--cache-dir", str(cache)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "fails its self-check" in lines[0] and "Traceback" not in run.stderr


def test_an_fp32_graph_with_a_scaled_weight_is_caught_too(bundle_copy, cache):
    _rewrite_graph(bundle_copy, "audio.fp32.onnx", _scale_first_weight(1.5))
    with pytest.raises(BundleError, match="audio.fp32.onnx fails its self-check"):
        Encoders(bundle_copy, device="cpu", precision="fp32", cache_dir=cache).encoder("audio")


def test_the_check_can_be_skipped(bundle_copy, cache, monkeypatch):
    _rewrite_graph(bundle_copy, "image.int8.onnx", _scale_int8_weight_scale(-1.0))
    for enc in (Encoders(bundle_copy, device="cpu", precision="int8", selfcheck=False, cache_dir=cache),):
        assert enc.encoder("image").encoder.precision == "int8" and enc.selfchecks == {}
    monkeypatch.setenv("MANGA_MUSIC_SELFCHECK", "0")
    enc = Encoders(bundle_copy, device="cpu", precision="int8", cache_dir=cache)
    assert enc.encoder("image").encoder.precision == "int8" and enc.selfchecks == {}
    assert not (cache / "selfcheck").exists()


def test_cli_skip_flag_and_cache_dir_are_documented():
    run = subprocess.run([sys.executable, "-m", "runtime.query", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert "--no-selfcheck" in run.stdout and "--cache-dir" in run.stdout and "MANGA_MUSIC_SELFCHECK" in run.stdout


def test_schema_1_bundles_load_and_run_unchecked(world, tmp_path, cache):  # noqa: F811
    bdir = rf.write_tiny_bundle(tmp_path / "old", goldens=False)
    data = json.loads((bdir / "manifest.json").read_text())
    data["schema_version"] = 1
    for e in data["encoders"]:
        for k in ("int8_format", "selfcheck_min_cosine", "selfcheck_export_cosine"):
            e.pop(k, None)
    data.pop("goldens")
    (bdir / "manifest.json").write_text(json.dumps(data))
    enc = Encoders(bdir, device="cpu", cache_dir=cache)
    assert enc.embed_texts(["hello"]).shape == (1, rf.EMBED_DIM) and enc.selfchecks == {}


def test_golden_arrays_are_language_neutral_and_bounded():
    from runtime.manifest import ManifestError, PackedArray

    a = np.arange(-5, 5, dtype=np.int16).reshape(2, 5)
    p = PackedArray.pack(a)
    assert p.to_dict()["encoding"] == "zlib+base64"
    back = PackedArray.from_dict(json.loads(json.dumps(p.to_dict())), "x")
    assert np.array_equal(back.array(), a) and back.array().dtype == np.int16
    # A payload that inflates past its declared shape is refused, not decompressed whole.
    bomb = PackedArray.pack(np.zeros(1 << 20, np.uint8))
    with pytest.raises(ManifestError, match="holds"):
        PackedArray("uint8", (16,), bomb.data).array()
    with pytest.raises(ManifestError, match="at most"):
        PackedArray.from_dict({"dtype": "float32", "shape": [1 << 20, 1 << 10], "encoding": "zlib+base64",
                               "data": ""}, "x")
