"""Checkpoint loading: the published layouts load strictly; anything else fails by name."""
from __future__ import annotations

import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from training.checkpoints import CheckpointError, load_model, save_checkpoint  # noqa: E402
from training.model import AudioCLIP, AudioCLIPConfig  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(1)
    return AudioCLIP(AudioCLIPConfig.tiny()).state_dict()


def test_published_layout_loads_strictly(tmp_path, parity_dir):
    """A file with exactly the fixture's keys, shapes and dtypes (as the real checkpoints) loads."""
    layout = json.loads((parity_dir / "state_dict_layout.json").read_text())
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    sd = {e["key"]: torch.zeros(e["shape"], dtype=dtypes[e["dtype"]]) for e in layout}
    path = tmp_path / "AudioCLIP-Full-Training.pt"
    torch.save(sd, path)
    loaded = load_model(path)
    assert loaded.kind == "audioclip"
    assert loaded.config == AudioCLIPConfig.full()
    assert loaded.notes == ()


def test_known_harmless_differences_are_accepted(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if k != "audio.window" and not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt", config=AudioCLIPConfig.tiny())
    assert any("recomputed" in n for n in loaded.notes)
    # The window was rebuilt, not left empty.
    assert torch.allclose(loaded.model.audio.window, AudioCLIP(AudioCLIPConfig.tiny()).audio.window)


def test_logit_scales_stored_with_shape_1_load_as_scalars(tmp_path, tiny_sd):
    """Old checkpoints keep the 0-d logit scales as shape (1,); PyTorch's own
    load_state_dict accepts that, so the loader does too, and says so."""
    sd = dict(tiny_sd)
    scales = [k for k, v in sd.items() if k.startswith("logit_scale")]
    assert len(scales) == 3 and all(sd[k].dim() == 0 for k in scales)
    for i, k in enumerate(scales):
        sd[k] = torch.tensor([1.5 + i])
    torch.save(sd, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    state = loaded.model.state_dict()
    for i, k in enumerate(scales):
        assert state[k].shape == () and state[k].item() == pytest.approx(1.5 + i)
    note = next(n for n in loaded.notes if "shape (1,)" in n)
    assert all(k in note for k in scales)
    # Only the (1,) form of a scalar is accepted: two elements are still a mismatch.
    sd[scales[0]] = torch.tensor([1.0, 2.0])
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"misshapen key\(s\): logit_scale"):
        load_model(tmp_path / "bad.pt")


@pytest.mark.parametrize("damage,needle", [
    ("missing", "missing key(s): visual.conv1.weight"),
    ("extra", "unexpected key(s): visual.extra_head.weight"),
    ("misshapen", "misshapen key(s): text_projection"),
])
def test_mismatches_are_named(tmp_path, tiny_sd, damage, needle):
    sd = dict(tiny_sd)
    if damage == "missing":
        del sd["visual.conv1.weight"]
    elif damage == "extra":
        sd["visual.extra_head.weight"] = torch.zeros(3)
    else:
        sd["text_projection"] = torch.zeros(5, 5)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "bad.pt", config=AudioCLIPConfig.tiny())
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)


def test_garbage_and_wrong_model(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match="not an AudioCLIP checkpoint"):
        load_model(tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.pt")


def test_audio_only_checkpoint_without_prefix(tmp_path, tiny_sd):
    audio = {k[len("audio."):]: v + 1 for k, v in tiny_sd.items() if k.startswith("audio.") and v.is_floating_point()}
    torch.save(audio, tmp_path / "ESRNXFBSP.pt")
    base = AudioCLIP(AudioCLIPConfig.tiny())
    loaded = load_model(tmp_path / "ESRNXFBSP.pt", base=base)
    assert loaded.kind == "audio-only"
    assert torch.equal(loaded.model.audio.fc.weight, tiny_sd["audio.fc.weight"] + 1)


def test_clip_only_checkpoint(tmp_path, tiny_sd):
    clip = {k: v for k, v in tiny_sd.items() if not k.startswith("audio.") and k not in ("logit_scale_ai", "logit_scale_at")}
    clip.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(clip, tmp_path / "CLIP.pt")
    loaded = load_model(tmp_path / "CLIP.pt", base=AudioCLIP(AudioCLIPConfig.tiny()))
    assert loaded.kind == "clip-only"
    assert torch.equal(loaded.model.visual.conv1.weight, tiny_sd["visual.conv1.weight"])


def test_save_roundtrip_keeps_config_and_is_atomic(tmp_path):
    model = AudioCLIP(AudioCLIPConfig.tiny(embed_dim=32))
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, meta={"epoch": 3})
    loaded = load_model(path)
    assert loaded.kind == "manga-music" and loaded.config == model.config and loaded.meta["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left behind
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    """A checkpoint's bytes depend on its contents only (not on its or a temp file's name),
    so a rebuilt model's sha256 in a bundle manifest changes only when the model does."""
    torch.manual_seed(0)
    model = AudioCLIP(AudioCLIPConfig.tiny())
    a = save_checkpoint(tmp_path / "one.pt", model, {"name": "x"}).read_bytes()
    b = save_checkpoint(tmp_path / "sub" / "two.pt", model, {"name": "x"}).read_bytes()
    assert a == b
