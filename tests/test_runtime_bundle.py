"""Bundle loading and validation, precision choice, and session creation (runtime/bundle.py,
runtime/sessions.py) against the tiny bundle the tests write themselves."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

import runtime_fixtures as rf
from runtime_fixtures import world  # noqa: F401  (session fixture)

from runtime import sessions
from runtime.bundle import Bundle, load_bundle
from runtime.errors import BundleError, InputError


@pytest.fixture()
def bundle_copy(world, tmp_path):  # noqa: F811
    return shutil.copytree(world.bundle, tmp_path / "bundle")


def _edit_manifest(bdir, fn):
    p = bdir / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def test_load_reads_manifest_and_fingerprints_its_bytes(world):  # noqa: F811
    b = Bundle.load(world.bundle)
    assert b.embed_dim == rf.EMBED_DIM
    assert b.fingerprint == hashlib.sha256((world.bundle / "manifest.json").read_bytes()).hexdigest()
    assert sorted(b.manifest.precisions("image")) == ["fp32", "int8"]
    assert not b.is_demo
    assert load_bundle(b) is b
    b.verify()  # every graph's sha256 matches


def test_fingerprint_changes_with_any_manifest_change(bundle_copy, world):  # noqa: F811
    _edit_manifest(bundle_copy, lambda d: d["model"].update(description="other"))
    assert Bundle.load(bundle_copy).fingerprint != Bundle.load(world.bundle).fingerprint


def test_tampered_graph_is_refused_when_opened_naming_the_file(bundle_copy):
    b = Bundle.load(bundle_copy)
    enc = b.manifest.encoder("image", "int8")
    rf.tamper(bundle_copy / enc.file)  # same size: only the hash can tell
    b = Bundle.load(bundle_copy)  # cheap checks pass
    with pytest.raises(BundleError, match=r"image\.int8\.onnx: sha256 does not match"):
        b.open_session("image", "int8", device="cpu")
    # the other modality is untouched and still opens
    sess, provider, _ = b.open_session("text", "int8", device="cpu")
    assert provider == "cpu"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema_version=99), "unknown schema_version 99"),
    (lambda d: d.pop("embed_dim"), "missing field 'embed_dim'"),
    (lambda d: d["encoders"][0].update(bytes=d["encoders"][0]["bytes"] + 1), "does not match the manifest"),
    (lambda d: d["encoders"][0].update(file="../escape.onnx"), "points outside the bundle"),
    (lambda d: d["encoders"][0].update(file="gone.onnx"), "gone.onnx is missing"),
    (lambda d: d.update(vocab_sha256="0" * 64), "vocab_sha256"),
])
def test_bad_manifests_are_refused_with_the_field_named(bundle_copy, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bundle.load(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no bundle here"):
        Bundle.load(tmp_path / "missing")
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("name", "image_input", "manifest input 'image_input' is not in the graph"),
    ("dtype", "float16", "input 'pixels' has dtype float32 in the graph but float16 in the manifest"),
    ("shape", ["batch", 3, rf.IMAGE_SIZE], "rank 4 in the graph but 3"),
    ("shape", ["batch", 3, 224, 224], "dimension 2 is 32 in the graph but 224"),
])
def test_graph_inputs_must_match_the_manifest(bundle_copy, field, value, message):
    def edit(d):
        for e in d["encoders"]:
            if e["modality"] == "image":
                e["inputs"][0][field] = value
    _edit_manifest(bundle_copy, edit)
    b = Bundle.load(bundle_copy)
    with pytest.raises(BundleError, match=message) as err:
        b.open_session("image", "fp32", device="cpu")
    assert "image.fp32.onnx" in str(err.value)


def test_output_dynamic_in_manifest_but_fixed_in_graph_is_a_mismatch(bundle_copy):
    def edit(d):
        for e in d["encoders"]:
            e["outputs"][0]["shape"] = ["batch", "dim"]
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="dimension 1 is fixed at 16 in the graph but dynamic"):
        Bundle.load(bundle_copy).open_session("audio", "fp32", device="cpu")


def test_precision_auto_prefers_int8_on_cpu_and_fp16_on_cuda(world):  # noqa: F811
    b = Bundle.load(world.bundle)
    cpu = b.choose_precision("image", "auto", "cpu")
    assert (cpu.precision, cpu.note) == ("int8", "")
    cuda = b.choose_precision("image", "auto", "cuda")
    assert cuda.precision == "fp32" and "no fp16 image encoder" in cuda.note  # falls back, says so
    assert b.choose_precision("text", "fp32", "cpu").precision == "fp32"
    with pytest.raises(BundleError, match=r"no audio encoder at fp16 \(it has: fp32, int8\)"):
        b.choose_precision("audio", "fp16", "cpu")


def test_precision_auto_falls_back_to_what_the_bundle_has(tmp_path):
    bdir = rf.write_tiny_bundle(tmp_path / "b", precisions=("fp32",))
    choice = Bundle.load(bdir).choose_precision("audio", "auto", "cpu")
    assert choice.precision == "fp32" and "no int8 audio encoder" in choice.note


def test_session_reports_the_provider_it_really_got(world):  # noqa: F811
    b = Bundle.load(world.bundle)
    sess, provider, enc = b.open_session("image", "fp32", device="cpu", threads=1)
    assert provider == "cpu" and enc.precision == "fp32"
    assert sess.get_providers() == ["CPUExecutionProvider"]
    out = sess.run(None, {"pixels": np.zeros((2, 3, rf.IMAGE_SIZE, rf.IMAGE_SIZE), np.float32)})[0]
    assert out.shape == (2, rf.EMBED_DIM)


def test_cuda_requested_without_provider_warns_once_and_uses_cpu(world, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(sessions, "cuda_available", lambda: False)
    monkeypatch.setattr(sessions, "_warned", set())
    path = world.bundle / "image.fp32.onnx"
    with caplog.at_level(logging.WARNING, logger="manga_music"):
        _, p1 = sessions.make_session(path, device="cuda")
        _, p2 = sessions.make_session(path, device="cuda")
    assert (p1, p2) == ("cpu", "cpu")
    warnings = [r for r in caplog.records if "CUDA was requested" in r.getMessage()]
    assert len(warnings) == 1
    with pytest.raises(InputError, match="CUDA was requested"):
        sessions.make_session(path, device="cuda", strict=True)
    assert sessions.resolve_device("auto").device == "cpu"


def test_cuda_provider_that_fails_to_start_is_reported(world, monkeypatch, caplog):  # noqa: F811
    # ORT lists CUDA but silently runs on CPU (e.g. CUDA libraries missing): read back, warn.
    monkeypatch.setattr(sessions, "cuda_available", lambda: True)
    monkeypatch.setattr(sessions, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="manga_music"):
        _, provider = sessions.make_session(world.bundle / "text.fp32.onnx", device="cuda")
    assert provider == "cpu"
    assert any("CUDA provider failed to start" in r.getMessage() for r in caplog.records)


def test_session_options_and_bad_requests(world, tmp_path):  # noqa: F811
    assert sessions.session_options(3).intra_op_num_threads == 3
    with pytest.raises(InputError, match="threads must be >= 1"):
        sessions.session_options(0)
    with pytest.raises(InputError, match="unknown device"):
        sessions.resolve_device("tpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="junk.onnx: onnxruntime cannot load"):
        sessions.make_session(junk, device="cpu")
