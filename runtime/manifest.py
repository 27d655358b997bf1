"""The bundle manifest: the one contract between export (writer) and runtime (reader).

Every concept is a frozen dataclass built from ``manifest.json`` and passed around; nothing
downstream reads raw dicts. ``Manifest.from_dict`` validates every field it reads (type,
range, finiteness) and raises ``ManifestError`` naming the field, so a malformed or hostile
manifest is refused in one line and never reaches a session or a division;
``Manifest.to_dict`` is its exact inverse. Language-neutral on purpose: an Android or web
app reads the same JSON (arrays inside it are base64 of zlib-compressed little-endian
bytes, see ``PackedArray``).

Schema 2 (this writer) adds, per encoder, the int8 format and the self-check floor, per
modality a golden input with the exporting PyTorch model's embedding of it, and, per
parity entry, the machine it was measured on. Schema 1 bundles still load; they have no
golden inputs, so the runtime cannot self-check them and says so.
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .json_fields import Fields

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MODALITIES = ("image", "text", "audio")
PRECISIONS = ("fp32", "int8", "fp16")
RESIZE_MODES = ("center_crop", "letterbox", "tiles")
PARTS = ("", "trunk", "head")
# dtypes a PackedArray may hold: what golden inputs and embeddings need, nothing else.
PACKED_DTYPES = ("uint8", "int16", "int32", "int64", "float16", "float32")
TENSOR_DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "int8")
# A packed array larger than this is not "small"; refusing it bounds what a manifest can
# make the runtime allocate.
MAX_PACKED_BYTES = 64 << 20


class ManifestError(ValueError):
    """The manifest is missing a field, has the wrong type, or uses an unknown schema."""


# -- field readers: each names the field it refuses (rules in runtime/json_fields.py) ---------
_F = Fields(ManifestError, "manifest: ")
_where, _req, _bad = _F.path, _F.req, _F.bad
_int, _float, _str, _bool, _list, _obj = _F.int, _F.float, _F.str, _F.bool, _F.list, _F.obj


def _items(d: Any, key: str, where: str, read: Callable[[Any, str], Any], default: Any = ...) -> tuple:
    return tuple(read(x, f"{_where(where, key)}[{i}]") for i, x in enumerate(_list(d, key, where, default)))


# -- sections ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePreprocess:
    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    # "center_crop": resize short side to `size` (bicubic, antialiased) then centre crop.
    resize_mode: str = "center_crop"
    interpolation: str = "bicubic"

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocess.image") -> "ImagePreprocess":
        def triple(key: str, lo: float, lo_open: bool) -> tuple[float, float, float]:
            v = _list(d, key, where)
            if len(v) != 3:
                raise _bad(where, key, "a list of 3 numbers", v)
            return tuple(_float({key: x}, key, where, lo=lo, lo_open=lo_open) for x in v)  # type: ignore[return-value]

        return cls(size=_int(d, "size", where, lo=1, hi=8192), mean=triple("mean", -1e3, False),
                   std=triple("std", 0.0, True), resize_mode=_str(d, "resize_mode", where, RESIZE_MODES),
                   interpolation=_str(d, "interpolation", where, ("bicubic", "bilinear", "nearest", "lanczos")))


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

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocess.audio") -> "AudioPreprocess":
        window = _float(d, "window_seconds", where, lo=0.1, hi=600.0)
        # A hop far below the window would make a track cost thousands of encoder runs a
        # minute; a tenth of a second is already finer than any use of the start times.
        hop = _float(d, "hop_seconds", where, lo=0.1, hi=window)
        return cls(sample_rate=_int(d, "sample_rate", where, lo=8000, hi=384000),
                   int16_scale=_float(d, "int16_scale", where, lo=0.0, lo_open=True),
                   scaling_in_graph=_bool(d, "scaling_in_graph", where), window_seconds=window, hop_seconds=hop,
                   min_seconds=_float(d, "min_seconds", where, lo=0.0, hi=window))


@dataclass(frozen=True)
class TextPreprocess:
    context_length: int = 77
    vocab_file: str = "bpe_simple_vocab_16e6.txt.gz"
    sot_token: int = 49406
    eot_token: int = 49407

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocess.text") -> "TextPreprocess":
        return cls(context_length=_int(d, "context_length", where, lo=2, hi=4096),
                   vocab_file=_str(d, "vocab_file", where, nonempty=True),
                   sot_token=_int(d, "sot_token", where, lo=0), eot_token=_int(d, "eot_token", where, lo=0))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32", "float16", "int64"
    shape: tuple[int | str, ...]  # strings are symbolic (dynamic) axes, e.g. "batch"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "TensorSpec":
        shape = _list(d, "shape", where)
        for i, s in enumerate(shape):
            if not (isinstance(s, str) and s) and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
                raise _bad(where, f"shape[{i}]", "a positive integer or an axis name", s)
        return cls(_str(d, "name", where, nonempty=True), _str(d, "dtype", where, TENSOR_DTYPES), tuple(shape))


@dataclass(frozen=True)
class PackedArray:
    """A small array inside the JSON: base64 of the zlib-compressed little-endian C-order
    bytes, with its dtype and shape (every platform has base64 and zlib)."""

    dtype: str
    shape: tuple[int, ...]
    data: str = field(repr=False)

    @classmethod
    def pack(cls, arr: np.ndarray) -> "PackedArray":
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in PACKED_DTYPES:
            raise ValueError(f"cannot pack dtype {a.dtype.name} (one of {', '.join(PACKED_DTYPES)})")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        return cls(a.dtype.name, tuple(int(s) for s in a.shape), base64.b64encode(zlib.compress(raw, 9)).decode())

    def array(self) -> np.ndarray:
        dt = np.dtype(self.dtype).newbyteorder("<")
        n = int(np.prod(self.shape, dtype=np.int64)) * dt.itemsize
        try:
            # Decompress at most the declared size (+1 to notice a longer payload): a
            # "zip bomb" in a manifest costs nothing.
            d = zlib.decompressobj()
            raw = d.decompress(base64.b64decode(self.data, validate=True), n + 1)
        except (ValueError, zlib.error) as exc:
            raise ManifestError(f"manifest: packed {self.dtype} array {list(self.shape)} does not decode ({exc})") from None
        if len(raw) != n:
            raise ManifestError(f"manifest: packed {self.dtype} array {list(self.shape)} holds {len(raw)} bytes, "
                                f"expected {n}")
        return np.frombuffer(raw, dtype=dt).reshape(self.shape).astype(self.dtype)

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "encoding": "zlib+base64", "data": self.data}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "PackedArray":
        shape = _list(d, "shape", where)
        if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise _bad(where, "shape", "a list of positive integers", shape)
        dtype = _str(d, "dtype", where, PACKED_DTYPES)
        if int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize > MAX_PACKED_BYTES:
            raise _bad(where, "shape", f"at most {MAX_PACKED_BYTES >> 20} MiB of data", shape)
        _str(d, "encoding", where, ("zlib+base64",))
        return cls(dtype, tuple(shape), _str(d, "data", where))


@dataclass(frozen=True)
class Int8Format:
    """How an int8 graph stores its numbers, and why that gives the same result on every CPU.

    ONNX Runtime's AVX2 kernels (x86 without VNNI) multiply u8 activations by s8 weights
    and add each adjacent pair in a saturating 16-bit lane: |a1*w1 + a2*w2| <= 2 * 255 *
    max|w| must stay <= 32767, i.e. max|w| <= 64. ``pair_sum_bound`` is that product for
    this graph, measured from its weights, and ``saturation_free`` whether it fits (u8
    weights, or s8 activations, use widening kernels instead and cannot saturate).
    """

    activations: str  # "uint8" | "int8" | "none" (no quantised activations, e.g. weight-only)
    weights: str  # "int8" | "uint8"
    weight_bits: int  # 7 with ORT's reduce_range, else 8
    per_channel: bool
    max_abs_weight: int  # largest |quantised weight| - zero point over the graph's integer ops
    pair_sum_bound: int  # 2 * 255 * max_abs_weight for u8 x s8, else 0
    saturation_free: bool
    fp32_nodes: int  # nodes kept in float on purpose (front end, sensitive layers)
    recipe: str  # the export's recipe in words

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Int8Format":
        return cls(_str(d, "activations", where, ("uint8", "int8", "none")), _str(d, "weights", where, ("int8", "uint8")),
                   _int(d, "weight_bits", where, lo=2, hi=8), _bool(d, "per_channel", where),
                   _int(d, "max_abs_weight", where, lo=0, hi=255), _int(d, "pair_sum_bound", where, lo=0),
                   _bool(d, "saturation_free", where), _int(d, "fp32_nodes", where, lo=0), _str(d, "recipe", where))


@dataclass(frozen=True)
class EncoderFile:
    modality: str
    precision: str
    file: str
    sha256: str
    bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # How the graph was made (e.g. "static-qdq ... per-channel u8s8", "dynamic").
    method: str = ""
    # int8 graphs: their number format (schema 2).
    int8_format: Int8Format | None = None
    # The self-check: the golden input of this modality must give at least this cosine
    # against the exporting PyTorch model's embedding (0: no floor recorded, schema 1) ...
    selfcheck_min_cosine: float = 0.0
    # ... and gave this one on the exporting machine.
    selfcheck_export_cosine: float | None = None
    # "" for a whole encoder; audio only: "trunk" / "head", the two halves that embed a
    # whole track at once (``audio_span``). The trunk's self-check runs the pair.
    part: str = ""

    @classmethod
    def from_dict(cls, e: Any, where: str) -> "EncoderFile":
        sha = _str(e, "sha256", where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _bad(where, "sha256", "64 lower-case hex digits", sha)
        fmt = e.get("int8_format") if isinstance(e, dict) else None
        export_cos = e.get("selfcheck_export_cosine") if isinstance(e, dict) else None
        return cls(_str(e, "modality", where, MODALITIES), _str(e, "precision", where, PRECISIONS),
                   _str(e, "file", where, nonempty=True), sha, _int(e, "bytes", where, lo=1),
                   _items(e, "inputs", where, TensorSpec.from_dict), _items(e, "outputs", where, TensorSpec.from_dict),
                   _str(e, "method", where, default=""),
                   None if fmt is None else Int8Format.from_dict(fmt, f"{where}.int8_format"),
                   _float(e, "selfcheck_min_cosine", where, lo=-1.0, hi=1.0, default=0.0),
                   None if export_cos is None else _float(e, "selfcheck_export_cosine", where, lo=-1.0, hi=1.0),
                   _str(e, "part", where, PARTS, default=""))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["int8_format"] = None if self.int8_format is None else asdict(self.int8_format)
        return d


@dataclass(frozen=True)
class Golden:
    """One modality's self-check: a small input and the embedding the exporting PyTorch
    model gave for it.

    ``input`` is in the compact form the graph input is made from: image uint8 RGB
    [k, S, S, 3] (normalised with ``preprocess.image`` mean/std), text int32 token ids
    [k, context], audio int16 [k, T] (divided by 32768). ``reference`` is float32 [k, D],
    L2-normalised rows."""

    modality: str
    input: PackedArray
    reference: PackedArray

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Golden":
        return cls(_str(d, "modality", where, MODALITIES), PackedArray.from_dict(_obj(d, "input", where),
                                                                                f"{where}.input"),
                   PackedArray.from_dict(_obj(d, "reference", where), f"{where}.reference"))

    def to_dict(self) -> dict:
        return {"modality": self.modality, "input": self.input.to_dict(), "reference": self.reference.to_dict()}


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
    # Where it was measured: the CPU (model, int8 kernel class, features) and the
    # onnxruntime version (schema 2; int8 results depend on both).
    cpu: str = ""
    cpu_features: tuple[str, ...] = ()
    onnxruntime: str = ""
    provider: str = "CPUExecutionProvider"
    # Which held-out inputs: "built-in" (generated) or the user's folder.
    inputs: str = "built-in"
    # Retrieval agreement on the user's held-out data (``--calibration``): mean overlap of
    # the top-k lists ranked with this graph's embeddings and with PyTorch's.
    topk_overlap: float | None = None
    topk: int | None = None
    # "" for a whole encoder; "trunk": the audio trunk + head pair (``audio_span``).
    part: str = ""

    @classmethod
    def from_dict(cls, p: Any, where: str) -> "ParityEntry":
        def opt_float(key):
            v = p.get(key) if isinstance(p, dict) else None
            return None if v is None else _float(p, key, where, lo=0.0, hi=1.0)

        topk = p.get("topk") if isinstance(p, dict) else None
        return cls(_str(p, "modality", where, MODALITIES), _str(p, "precision", where, PRECISIONS),
                   _int(p, "n", where, lo=0), _float(p, "min_cosine", where, lo=-1.0, hi=1.0),
                   _float(p, "mean_cosine", where, lo=-1.0, hi=1.0), _str(p, "target", where),
                   _bool(p, "passed", where), _str(p, "cpu", where, default=""),
                   tuple(_str({"f": f}, "f", f"{where}.cpu_features") for f in _list(p, "cpu_features", where, [])),
                   _str(p, "onnxruntime", where, default=""),
                   _str(p, "provider", where, default="CPUExecutionProvider"), _str(p, "inputs", where, default="built-in"),
                   opt_float("topk_overlap"), None if topk is None else _int(p, "topk", where, lo=1),
                   _str(p, "part", where, PARTS, default=""))


@dataclass(frozen=True)
class LogitScales:
    image_text: float
    audio_text: float
    audio_image: float

    @classmethod
    def from_dict(cls, d: Any, where: str = "logit_scales") -> "LogitScales":
        # exp'ed and clamped to [1, 100] by the export, as the model does.
        return cls(*(_float(d, k, where, lo=1.0, hi=100.0) for k in ("image_text", "audio_text", "audio_image")))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    checkpoint: str
    checkpoint_sha256: str
    demo: bool = False
    config: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, m: Any, where: str = "model") -> "ModelInfo":
        return cls(_str(m, "name", where), _str(m, "description", where), _str(m, "checkpoint", where),
                   _str(m, "checkpoint_sha256", where), _bool(m, "demo", where, default=False),
                   _obj(m, "config", where, default={}))


@dataclass(frozen=True)
class AudioSpan:
    """How the audio trunk's feature steps map to samples, for embedding a whole track at
    once (``runtime.audio_span``), and how well that agreed with per-window embedding."""

    samples_per_step: int  # STFT hop x the trunk's time stride
    window_steps: int  # steps of a window's slice
    min_cosine: float  # the runtime keeps per-window embedding for a track below this
    # Measured by the export on long generated clips: agreement with the per-window graph.
    export_mean_cosine: float | None = None
    export_min_cosine: float | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "audio_span") -> "AudioSpan":
        def opt(key):
            v = d.get(key) if isinstance(d, dict) else None
            return None if v is None else _float(d, key, where, lo=-1.0, hi=1.0)

        return cls(_int(d, "samples_per_step", where, lo=1), _int(d, "window_steps", where, lo=1, hi=100000),
                   _float(d, "min_cosine", where, lo=0.0, hi=1.0), opt("export_mean_cosine"), opt("export_min_cosine"))


def _audio_span(d: dict, encoders: tuple[EncoderFile, ...]) -> AudioSpan | None:
    """The span section, present exactly when some precision has both audio halves."""
    raw = d.get("audio_span")
    span = None if raw is None else AudioSpan.from_dict(raw)
    parts = {e.part for e in encoders if e.part}
    paired = parts == {"trunk", "head"}
    if (span is None) == paired:
        raise ManifestError("manifest: 'audio_span' must be given exactly when the bundle has audio trunk and "
                            "head graphs")
    return span


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
    goldens: tuple[Golden, ...] = ()
    audio_span: AudioSpan | None = None

    # -- lookups -------------------------------------------------------------------
    def encoder(self, modality: str, precision: str, part: str = "") -> EncoderFile:
        for e in self.encoders:
            if e.modality == modality and e.precision == precision and e.part == part:
                return e
        have = sorted(f"{e.modality}{'.' + e.part if e.part else ''}.{e.precision}" for e in self.encoders)
        what = f"{modality} {part}" if part else modality
        raise ManifestError(f"bundle has no {what} encoder at precision {precision} (has: {', '.join(have)})")

    def precisions(self, modality: str, part: str = "") -> tuple[str, ...]:
        return tuple(e.precision for e in self.encoders if e.modality == modality and e.part == part)

    def label_set(self, name: str) -> LabelEmbeddings:
        for ls in self.labels:
            if ls.name == name:
                return ls
        raise ManifestError(f"bundle has no label set '{name}'")

    def golden(self, modality: str) -> Golden | None:
        return next((g for g in self.goldens if g.modality == modality), None)

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "schema_version": self.schema_version,
            "model": asdict(self.model),
            "embed_dim": self.embed_dim,
            "logit_scales": asdict(self.logit_scales),
            "preprocess": {"image": asdict(self.image), "audio": asdict(self.audio), "text": asdict(self.text)},
            "encoders": [e.to_dict() for e in self.encoders],
            "labels": [
                {"name": ls.name, "classes": list(ls.classes), "template": ls.template,
                 "embeddings": [[float(f"{v:.8g}") for v in row] for row in np.asarray(ls.embeddings, np.float32)]}
                for ls in self.labels
            ],
            "parity": [asdict(p) for p in self.parity],
            "vocab_sha256": self.vocab_sha256,
            "goldens": [g.to_dict() for g in self.goldens],
            "audio_span": None if self.audio_span is None else asdict(self.audio_span),
        }
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict):
            raise ManifestError("manifest: top level is not a JSON object")
        version = _req(d, "schema_version", "")
        if isinstance(version, bool) or version not in READABLE_SCHEMAS:
            raise ManifestError(f"manifest: unknown schema_version {version!r} (this runtime reads "
                                f"{', '.join(map(str, READABLE_SCHEMAS))})")
        pre = _obj(d, "preprocess", "")
        image = ImagePreprocess.from_dict(_obj(pre, "image", "preprocess"))
        audio = AudioPreprocess.from_dict(_obj(pre, "audio", "preprocess"))
        text = TextPreprocess.from_dict(_obj(pre, "text", "preprocess"))
        embed_dim = _int(d, "embed_dim", "", lo=1, hi=65536)
        encoders = _items(d, "encoders", "", EncoderFile.from_dict)
        seen = set()
        for i, e in enumerate(encoders):
            if (e.modality, e.precision, e.part) in seen:
                raise ManifestError(f"manifest: encoders[{i}] repeats {e.modality}.{e.precision}")
            seen.add((e.modality, e.precision, e.part))
            if e.part and e.modality != "audio":
                raise ManifestError(f"manifest: encoders[{i}] has part {e.part!r}; only audio graphs come in parts")
        labels = []
        for i, ls in enumerate(_list(d, "labels", "")):
            where = f"labels[{i}]"
            classes = tuple(_str({"c": c}, "c", f"{where}.classes") for c in _list(ls, "classes", where))
            try:
                emb = np.asarray(_list(ls, "embeddings", where), dtype=np.float32)
            except (TypeError, ValueError):
                raise _bad(where, "embeddings", "a matrix of numbers", "...") from None
            if emb.shape != (len(classes), embed_dim) or not np.isfinite(emb).all():
                raise ManifestError(f"manifest: {where} ({ls.get('name')}) embeddings have shape "
                                    f"{emb.shape}, expected {(len(classes), embed_dim)} finite numbers")
            labels.append(LabelEmbeddings(_str(ls, "name", where), classes, _str(ls, "template", where), emb))
        goldens = _items(d, "goldens", "", Golden.from_dict, default=[])
        for i, g in enumerate(goldens):
            if g.reference.shape[-1:] != (embed_dim,) or g.reference.dtype != "float32":
                raise ManifestError(f"manifest: goldens[{i}].reference must be float32 [k, {embed_dim}]")
        return cls(version, ModelInfo.from_dict(_obj(d, "model", "")), embed_dim,
                   LogitScales.from_dict(_obj(d, "logit_scales", "")), image, audio, text, encoders, tuple(labels),
                   _items(d, "parity", "", ParityEntry.from_dict, default=[]), _str(d, "vocab_sha256", "", default=""),
                   goldens, _audio_span(d, encoders))
