"""Exact parity with the published AudioCLIP: the fixture made by the reference implementation.

Builds the full-size model from the weight recipe, loads it strictly, runs the fixture's
inputs and compares each row with the reference outputs (cosine and relative L2 error).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.model import AudioCLIP, AudioCLIPConfig  # noqa: E402

COS_MIN, REL_MAX = 0.9999, 1e-3


def _rows(ours: torch.Tensor, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = ours.detach().double().numpy()
    b = ref.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    return cos, rel


def test_state_dict_layout_matches_published(parity_dir):
    layout = json.loads((parity_dir / "state_dict_layout.json").read_text())
    sd = AudioCLIP(AudioCLIPConfig.full()).state_dict()
    assert len(layout) == len(sd) == 861
    for entry in layout:
        assert entry["key"] in sd, entry["key"]
        assert list(sd[entry["key"]].shape) == entry["shape"], entry["key"]
        assert str(sd[entry["key"]].dtype) == f"torch.{entry['dtype']}", entry["key"]


def test_config_inferred_from_published_layout(parity_dir):
    layout = json.loads((parity_dir / "state_dict_layout.json").read_text())
    fake = {e["key"]: torch.empty(e["shape"]) for e in layout}
    assert AudioCLIPConfig.from_state_dict(fake) == AudioCLIPConfig.full()


@pytest.mark.slow
def test_encoders_match_reference_outputs(full_parity_model, parity_dir):
    model = full_parity_model
    inputs = np.load(parity_dir / "inputs.npz")
    outputs = np.load(parity_dir / "outputs.npz")
    audio = torch.from_numpy(inputs["audio"])
    with torch.no_grad():
        ours = {
            "image": model.encode_image(torch.from_numpy(inputs["image"])),
            "text": model.encode_text(torch.from_numpy(inputs["text_tokens"])),
            "audio": model.encode_audio(audio),
            "audio_short": model.encode_audio(audio[:, :88200]),
        }
    report = []
    for name, emb in ours.items():
        cos, rel = _rows(emb, outputs[name])
        report.append(f"{name}: worst cosine {cos.min():.8f}, worst relative L2 {rel.max():.2e}")
        assert (cos >= COS_MIN).all(), (name, cos)
        assert (rel <= REL_MAX).all(), (name, rel)
    print("\nparity vs reference: " + "; ".join(report))
    scale = model.logit_scales()["image_text"].item()
    assert scale == pytest.approx(float(outputs["logit_scale"]), rel=1e-6)


@pytest.mark.slow
def test_rows_are_distinguishable(parity_dir):
    """The check has teeth: different inputs' reference outputs are far below the threshold."""
    outputs = np.load(parity_dir / "outputs.npz")
    for name in ("image", "text", "audio"):
        a, b = outputs[name].astype(np.float64)
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos < COS_MIN - 0.01, (name, cos)
