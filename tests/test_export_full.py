"""The export at full size (134 M parameters) on the parity fixture's weights: fp32 + int8.

Slow (a few minutes on two cores: the dynamo exporter alone takes ~80 s for the three
towers, and the image tower tries int8 recipes until one meets its target), so the
held-out set is 8 inputs per encoder instead of 32; the numbers the export reports at full
strength are in the README.

Version 2 of the fixture tames the random audio tower (its float32 and float64 runs agree
to 0.99998), so every graph is held to its target here, audio included. The image tower's
random attention pool is not tamed and amplifies any error in its input (measured: input
cosine 0.999997 gives output cosine 0.994), so its int8 graph keeps as many late stages in
fp32 as the target needs; the manifest says which.
"""
from __future__ import annotations

import json
import resource

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from export import build_bundle_report  # noqa: E402
from export.parity import TARGETS, cosines  # noqa: E402
from runtime.manifest import Manifest  # noqa: E402

INPUT = {"image": "pixels", "text": "tokens", "audio": "waveform"}


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory, full_parity_model):
    # The fixture's own weights (the recipe draws them in the order of the fixture's layout
    # file; the model's own key order would draw another set: README, "Recipes, chosen by
    # measurement").
    model = full_parity_model
    out = tmp_path_factory.mktemp("export_full") / "bundle"
    # The default calibration set (32 pages, 16 clips).
    report = build_bundle_report(model, out, precisions=("fp32", "int8"), progress=False, parity_inputs=8)
    return model, out, report


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_full_size_bundle(full_bundle):
    model, out, report = full_bundle
    manifest = report.manifest
    assert Manifest.from_dict(json.loads((out / "manifest.json").read_text())).embed_dim == 1024
    # The whole export (model, exporter, quantiser, parity) stayed far inside 24 GB.
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    assert peak_gb < 12, peak_gb
    sizes = {(e.modality, e.precision): e.bytes for e in manifest.encoders}
    # Text and audio shrink ~4x and ~3x; the image int8 graph may keep its last stage and
    # attention pool in fp32 (when the all-int8 recipe misses the parity target).
    for modality in INPUT:
        limit = 1.0 if modality == "image" else 0.5
        assert sizes[(modality, "int8")] < limit * sizes[(modality, "fp32")], (modality, sizes)
    parity = {(p.modality, p.precision): p for p in manifest.parity}
    lines = [f"{m}.{p}: {sizes[(m, p)] / 1e6:.1f} MB, cosine min {e.min_cosine:.6f} mean {e.mean_cosine:.6f} "
             f"({'ok' if e.passed else 'MISSED'})" for (m, p), e in sorted(parity.items())]
    print("\nfull-size export (parity weights, 8 held-out inputs):\n  " + "\n  ".join(lines)
          + f"\n  exporters: {report.exporters}; {report.seconds:.0f} s")
    for key, entry in parity.items():
        assert entry.passed == TARGETS[key[1]].met(entry.min_cosine, entry.mean_cosine)
        assert entry.passed, entry  # every graph, int8 included, on the v2 weights
    for e in manifest.encoders:
        if e.precision == "int8":
            assert e.int8_format.saturation_free and e.int8_format.max_abs_weight <= 64, e
        assert e.selfcheck_min_cosine >= (0.9999 if e.precision == "fp32" else 0.9), e


@pytest.mark.slow
def test_full_size_audio_5s_and_dynamic_batch(full_bundle):
    model, out, _ = full_bundle
    rng = np.random.default_rng(5)
    n = 5 * 44100
    t = np.arange(n) / 44100
    # Music-like rows (chord + noise) and one noise row; batch 3, then the first row alone.
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    wave = np.stack([0.4 * chord + 0.02 * rng.standard_normal(n), 0.2 * rng.standard_normal(n),
                     0.3 * np.roll(chord, 1000) + 0.05 * rng.standard_normal(n)]).astype(np.float32)
    with torch.no_grad():
        ref = model.audio(torch.from_numpy(wave) * 32768.0).numpy()
    sess = _session(out / "audio.fp32.onnx")
    got = sess.run(["embedding"], {"waveform": wave})[0]
    cos = cosines(got, ref)
    print(f"\nfull-size audio fp32 at 5 s, batch 3: cosine {np.round(cos, 6).tolist()}")
    assert got.shape == (3, 1024)
    assert cos.min() >= 0.9999, cos
    one = sess.run(["embedding"], {"waveform": wave[:1]})[0]
    assert cosines(one, got[:1])[0] > 0.9999
