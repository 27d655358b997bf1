"""Reading and writing model checkpoints, safely and with errors that name the problem.

Checkpoints users bring (AUDIOCLIP.md): the full AudioCLIP state dict
(`AudioCLIP-Full-Training.pt`, `-Partial-`, or one fine-tuned with the seed paper's code),
the audio tower alone (`ESRNXFBSP.pt`, keys without the `audio.` prefix), and CLIP-only
weights (image + text). Our own training writes a wrapped dict that also carries the model
config. Every file is opened with `torch.load(weights_only=True)`: a checkpoint is data,
never code, so a pickle that would run code is refused.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from runtime.errors import MangaMusicError, one_line
from runtime.hashing import sha256_file

from .model import AudioCLIP, AudioCLIPConfig

FORMAT = "manga-music-checkpoint"
FORMAT_VERSION = 1
# Keys the reference loads with strict=False and that real checkpoints may lack or add.
_HARMLESS_SUFFIXES = ("num_batches_tracked",)
_RECOMPUTED = ("audio.window",)


class CheckpointError(MangaMusicError):
    """A checkpoint cannot be read, is not an AudioCLIP checkpoint, or does not fit the model."""


@dataclass(frozen=True)
class LoadedModel:
    model: AudioCLIP
    config: AudioCLIPConfig
    kind: str  # "manga-music", "audioclip", "audio-only", "clip-only"
    path: str
    sha256: str
    notes: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True, turning every failure into a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()):
                raise CheckpointError(
                    f"{path}: a TorchScript archive (e.g. OpenAI's CLIP .pt); it holds code, so it is not "
                    "loaded here. Convert it once where you trust it: torch.save(torch.jit.load(P).state_dict(), OUT)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, refused globals: all "not loadable"
        text = str(exc)
        blocked = [line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported global" in line]
        if blocked:  # the weights-only unpickler met a callable: the file wants to run code
            raise CheckpointError(f"{path}: refused: loading it would run code ({blocked[0][:160]})") from None
        reason = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip() and "documentation" not in ln),
                      type(exc).__name__)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason[:160]})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _unwrap(obj: dict) -> tuple[dict, dict | None, dict]:
    """(state_dict, config dict or None, meta) from our wrapped format or a plain/nested dict."""
    if obj.get("format") == FORMAT:
        return dict(obj["state_dict"]), obj.get("config"), dict(obj.get("meta", {}))
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), None, {}
    return obj, None, {}


def classify(sd: Mapping[str, torch.Tensor]) -> str:
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if has("visual.") and has("audio."):
        return "audioclip"
    if has("visual.") and has("transformer."):
        return "clip-only"
    if "fbsp.m" in sd and "conv1.weight" in sd:
        return "audio-only"
    return "unknown"


def _scalar_as_vector(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """A 1-element tensor of shape (1,) stored for a 0-d parameter (the logit scales):
    older code and other implementations save scalars that way, and PyTorch's own
    ``load_state_dict`` accepts it."""
    return expected.dim() == 0 and tuple(got.shape) == (1,)


def check_state_dict(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Compare `sd` with the `expected` keys and shapes; raise naming any real mismatch.

    Returns notes on the harmless differences that were accepted.
    """
    notes = []
    scalars = [k for k in sd if k in expected and _scalar_as_vector(expected[k], sd[k])]
    missing = [k for k in expected if k not in sd]
    harmless_missing = [k for k in missing if k.endswith(_HARMLESS_SUFFIXES) or k in _RECOMPUTED]
    missing = [k for k in missing if k not in harmless_missing]
    unexpected = [k for k in sd if k not in expected and not k.endswith(_HARMLESS_SUFFIXES)]
    misshapen = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
                 for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape) and k not in scalars]
    problems = []
    if missing:
        problems.append(f"missing key(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected key(s): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if misshapen:
        problems.append(f"misshapen key(s): {', '.join(misshapen[:3])}{' ...' if len(misshapen) > 3 else ''}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    if scalars:
        notes.append(f"accepted {', '.join(scalars)} stored with shape (1,) for a scalar; read as the scalar")
    if harmless_missing:
        notes.append(f"accepted {len(harmless_missing)} missing buffer(s) that are recomputed "
                     f"({', '.join(sorted({k.rsplit('.', 1)[-1] for k in harmless_missing}))})")
    return notes


def _fit(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A checked checkpoint tensor in the model's dtype (and, for a (1,)-shaped scalar, shape)."""
    value = value.to(like.dtype)
    return value.reshape(()) if _scalar_as_vector(like, value) else value


def load_into(model: AudioCLIP, sd: Mapping[str, torch.Tensor], *, part: str = "") -> list[str]:
    """Load `sd` into the keys of `model` starting with `part` ("" = all of them).

    Checked first by `check_state_dict`; buffers the checkpoint lacks keep the model's own
    values (the Blackman-Harris window is recomputed by construction).
    """
    own = {k: v for k, v in model.state_dict().items() if k.startswith(part)}
    notes = check_state_dict(own, sd)
    merged = {k: (_fit(sd[k], v) if k in sd else v) for k, v in own.items()}
    model.load_state_dict(merged, strict=not part)
    return notes


def load_model(path: str | os.PathLike, *, config: AudioCLIPConfig | None = None, base: AudioCLIP | None = None,
               device: str = "cpu") -> LoadedModel:
    """Build the model a checkpoint describes and load it.

    Full checkpoints (ours or AudioCLIP's) rebuild their own config. Partial ones
    (audio-only, CLIP-only) are loaded into `base` (or a fresh full-size model).
    """
    path = Path(path)
    obj = read_checkpoint(path)
    sd, cfg_dict, meta = _unwrap(obj)
    kind = "manga-music" if cfg_dict is not None else classify(sd)
    if kind == "unknown":
        sample = ", ".join(list(sd)[:3]) or "no keys"
        raise CheckpointError(f"{path}: not an AudioCLIP checkpoint (keys like {sample})")
    try:
        if kind == "audio-only":
            model = base or AudioCLIP(config or AudioCLIPConfig.full())
            notes = load_into(model, {f"audio.{k}": v for k, v in sd.items()}, part="audio.")
        elif kind == "clip-only":
            model = base or AudioCLIP(config or AudioCLIPConfig.full())
            # OpenAI's CLIP state dicts carry three int metadata entries the model does not have.
            clip_sd = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
            notes = _load_clip(model, clip_sd)
        else:
            cfg = (AudioCLIPConfig.from_dict(cfg_dict) if cfg_dict is not None
                   else config or AudioCLIPConfig.from_state_dict(sd))
            model = AudioCLIP(cfg)
            notes = load_into(model, sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not fit the model ({one_line(exc, 200)})") from None
    model.eval().to(device)
    return LoadedModel(model, model.config, kind, str(path), sha256_file(path), tuple(notes), meta)


def _load_clip(model: AudioCLIP, sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Load CLIP-only weights: every non-audio key; the audio scales keep their init values."""
    own = {k: v for k, v in model.state_dict().items()
           if not k.startswith("audio.") and k not in ("logit_scale_ai", "logit_scale_at")}
    notes = check_state_dict(own, sd)
    model.load_state_dict({k: (_fit(sd[k], v) if k in sd else v) for k, v in own.items()}, strict=False)
    return notes


def save_checkpoint(path: str | os.PathLike, model: AudioCLIP, meta: dict | None = None) -> Path:
    """Write our wrapped checkpoint atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary name in the same folder, then rename: never a half file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # Through a file object, not the name: torch.save names the zip's root folder after
        # a file name (here a random temporary one), so equal contents would differ in bytes.
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
