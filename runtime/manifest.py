"""The bundle manifest: the one contract between export (writer) and runtime (reader).

Every concept is a frozen dataclass built from ``manifest.json`` and passed around; nothing
downstream reads raw dicts. ``Manifest.from_dict`` validates and raises ``ManifestError``
with a message naming the offending field; ``Manifest.to_dict`` is its exact inverse.
Language-neutral on purpose: an Android or web app reads the same JSON.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MODALITIES = ("image", "text", "audio")
PRECISIONS = ("fp32", "int8", "fp16")


class ManifestError(ValueError):
    """The manifest is missing a field, has the wrong type, or uses an unknown schema."""


def _req(d: dict, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ManifestError(f"manifest: missing field '{where}.{key}'" if where else f"manifest: missing field '{key}'")
    return d[key]


@dataclass(frozen=True)
class ImagePreprocess:
    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    # "center_crop": resize short side to `size` (bicubic, antialiased) then centre crop.
    resize_mode: str = "center_crop"
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class AudioPreprocess:
    sample_rate: int = 44100
    # The graph takes a float waveform in [-1, 1] and multiplies it by `int16_scale`
    # itself (the model expects the int16 value range); recorded for other implementations.
    int16_scale: float = 32768.0
    scaling_in_graph: bool = True
    window_seconds: float = 5.0
    hop_seconds: float = 2.5
    min_seconds: float = 1.0


@dataclass(frozen=True)
class TextPreprocess:
    context_length: int = 77
    vocab_file: str = "bpe_simple_vocab_16e6.txt.gz"
    sot_token: int = 49406
    eot_token: int = 49407


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32", "float16", "int64"
    shape: tuple[int | str, ...]  # strings are symbolic (dynamic) axes, e.g. "batch"


@dataclass(frozen=True)
class EncoderFile:
    modality: str
    precision: str
    file: str
    sha256: str
    bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # How the int8 graph was made (e.g. "static-qdq-per-channel", "dynamic", "optimum:avx2").
    method: str = ""


@dataclass(frozen=True)
class LabelEmbeddings:
    name: str
    classes: tuple[str, ...]
    template: str
    # float32 [len(classes), embed_dim], L2-normalised text embeddings of the prompts.
    embeddings: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class ParityEntry:
    """Cosine of an exported graph's output against PyTorch fp32 on held-out inputs."""

    modality: str
    precision: str
    n: int
    min_cosine: float
    mean_cosine: float
    target: str
    passed: bool


@dataclass(frozen=True)
class LogitScales:
    image_text: float
    audio_text: float
    audio_image: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    checkpoint: str
    checkpoint_sha256: str
    demo: bool = False
    config: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    model: ModelInfo
    embed_dim: int
    logit_scales: LogitScales
    image: ImagePreprocess
    audio: AudioPreprocess
    text: TextPreprocess
    encoders: tuple[EncoderFile, ...]
    labels: tuple[LabelEmbeddings, ...]
    parity: tuple[ParityEntry, ...] = ()
    vocab_sha256: str = ""

    # -- lookups -------------------------------------------------------------------
    def encoder(self, modality: str, precision: str) -> EncoderFile:
        for e in self.encoders:
            if e.modality == modality and e.precision == precision:
                return e
        have = sorted(f"{e.modality}.{e.precision}" for e in self.encoders)
        raise ManifestError(f"bundle has no {modality} encoder at precision {precision} (has: {', '.join(have)})")

    def precisions(self, modality: str) -> tuple[str, ...]:
        return tuple(e.precision for e in self.encoders if e.modality == modality)

    def label_set(self, name: str) -> LabelEmbeddings:
        for ls in self.labels:
            if ls.name == name:
                return ls
        raise ManifestError(f"bundle has no label set '{name}'")

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "schema_version": self.schema_version,
            "model": asdict(self.model),
            "embed_dim": self.embed_dim,
            "logit_scales": asdict(self.logit_scales),
            "preprocess": {"image": asdict(self.image), "audio": asdict(self.audio), "text": asdict(self.text)},
            "encoders": [asdict(e) for e in self.encoders],
            "labels": [
                {"name": ls.name, "classes": list(ls.classes), "template": ls.template,
                 "embeddings": [[float(f"{v:.8g}") for v in row] for row in np.asarray(ls.embeddings, np.float32)]}
                for ls in self.labels
            ],
            "parity": [asdict(p) for p in self.parity],
            "vocab_sha256": self.vocab_sha256,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if not isinstance(d, dict):
            raise ManifestError("manifest: top level is not a JSON object")
        version = _req(d, "schema_version", "")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"manifest: unknown schema_version {version!r} (this runtime reads {SCHEMA_VERSION})")
        try:
            pre = _req(d, "preprocess", "")
            image = ImagePreprocess(**{**_req(pre, "image", "preprocess"),
                                       "mean": tuple(pre["image"]["mean"]), "std": tuple(pre["image"]["std"])})
            audio = AudioPreprocess(**_req(pre, "audio", "preprocess"))
            text = TextPreprocess(**_req(pre, "text", "preprocess"))
            embed_dim = int(_req(d, "embed_dim", ""))
            encoders = []
            for i, e in enumerate(_req(d, "encoders", "")):
                for k in ("modality", "precision", "file", "sha256", "bytes", "inputs", "outputs"):
                    _req(e, k, f"encoders[{i}]")
                if e["modality"] not in MODALITIES:
                    raise ManifestError(f"manifest: encoders[{i}].modality {e['modality']!r} not one of {MODALITIES}")
                if e["precision"] not in PRECISIONS:
                    raise ManifestError(f"manifest: encoders[{i}].precision {e['precision']!r} not one of {PRECISIONS}")
                specs = lambda xs: tuple(TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in xs)  # noqa: E731
                encoders.append(EncoderFile(e["modality"], e["precision"], e["file"], e["sha256"], int(e["bytes"]),
                                            specs(e["inputs"]), specs(e["outputs"]), e.get("method", "")))
            labels = []
            for i, ls in enumerate(_req(d, "labels", "")):
                emb = np.asarray(_req(ls, "embeddings", f"labels[{i}]"), dtype=np.float32)
                classes = tuple(_req(ls, "classes", f"labels[{i}]"))
                if emb.shape != (len(classes), embed_dim):
                    raise ManifestError(f"manifest: labels[{i}] ({ls.get('name')}) embeddings have shape "
                                        f"{emb.shape}, expected {(len(classes), embed_dim)}")
                labels.append(LabelEmbeddings(_req(ls, "name", f"labels[{i}]"), classes,
                                              _req(ls, "template", f"labels[{i}]"), emb))
            m = _req(d, "model", "")
            model = ModelInfo(**m)
            scales = LogitScales(**_req(d, "logit_scales", ""))
            parity = tuple(ParityEntry(**p) for p in d.get("parity", []))
        except TypeError as exc:  # unexpected / missing keyword in a section
            raise ManifestError(f"manifest: malformed section ({exc})") from None
        return cls(version, model, embed_dim, scales, image, audio, text, tuple(encoders), tuple(labels),
                   parity, d.get("vocab_sha256", ""))
