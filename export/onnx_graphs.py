"""PyTorch towers -> one checked ONNX graph per encoder (fp32), with the bundle's IO contract.

Each tower is wrapped so the graph takes exactly what the runtime feeds it:

- image: ``pixels`` float32 [batch, 3, S, S] (normalised) -> ``embedding`` [batch, D]
- text:  ``tokens`` int64 [batch, tokens <= 77]          -> ``embedding`` [batch, D]; the
  tower reads its output at the end token under a causal mask, so every position after the
  batch's last end token can be cut off without changing the result (the runtime does)
- audio: ``waveform`` float32 [batch, samples] in [-1, 1] -> ``embedding`` [batch, D];
  the graph multiplies by 32768 itself (``AudioPreprocess.int16_scale``); the window is a
  constant inside it, and the FBSP filterbank is computed in it from its parameters (or,
  with ``fbsp="constant"``, stored as a constant; see ``FBSP_MODES``).

Outputs are not normalised. Export tries the dynamo exporter first (``dynamo=True`` with
``dynamic_shapes``) and falls back to the TorchScript exporter; whichever produced it, the
graph is then checked (``onnx.checker`` full check, strict shape inference) and *verified*:
run in ONNX Runtime at two batch sizes (and two audio lengths) against PyTorch, because an
exporter that silently baked a size into the graph must not reach a bundle.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from runtime.errors import one_line
from runtime.manifest import TensorSpec
from runtime.selfcheck import row_cosines as cosines
from training.model import AudioCLIP
from training.model.fbsp import fbsp_grid, fbsp_weights

from .graph_io import INPUT_NAMES, OUTPUT_NAME, OUTPUT_NAMES

MODALITIES = ("image", "text", "audio")
# The audio tower split at its last feature map: ``audio_trunk`` (waveform -> features,
# local in time) runs once over a whole track, ``audio_head`` (features -> embedding)
# pools each window's slice of it. The manifest lists them as audio graphs with a part.
SPAN_PARTS = ("audio_trunk", "audio_head")
GRAPH_KINDS = MODALITIES + SPAN_PARTS
# A [-1, 1] waveform times 2**15 is the int16 value range the audio tower was trained on;
# a power of two, so the multiplication is exact in float32 and costs no parity.
INT16_SCALE = 32768.0
OPSET = 18
# Largest audio length the exported program is declared for (torch.export needs a bound);
# the ONNX graph itself computes every size from the input, so this is only the guard range.
MAX_SAMPLES = 44100 * 600
# How the audio graph gets its FBSP filterbank: "computed" from the 3 x 1025 learned
# parameters by ops in the graph (ONNX Runtime folds them into a constant when the session
# loads, so a call costs the same), or "constant": the 2 x 1025 x 2048 computed weights
# stored in the file (17 MB of fp32, which int8 does not shrink: the front end stays fp32).
FBSP_MODES = ("computed", "constant")

log = logging.getLogger("manga_music.export")


class ExportError(RuntimeError):
    """An encoder could not be exported to a valid ONNX graph that matches PyTorch."""


@dataclass(frozen=True)
class ExportedGraph:
    """One fp32 graph on disk and how it was made."""

    modality: str
    path: Path
    exporter: str  # "dynamo" | "torchscript"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    note: str = ""  # why the fallback was used, when it was


# -- export-friendly replacements -----------------------------------------------------------
def adaptive_max_pool_axis(x: torch.Tensor, dim: int, out: int, max_bin: int) -> torch.Tensor:
    """``adaptive_max_pool`` along one axis, spelled with gather + max so that it exports
    with a symbolic input length (ONNX has no adaptive max pool, and the exporters only
    handle sizes that divide evenly, which a free audio length does not).

    Bin i covers [floor(i*n/out), ceil((i+1)*n/out)), as PyTorch defines it. ``max_bin`` is
    a static bound on a bin's length; indices past a bin's end are clamped to its last
    element, which leaves the maximum unchanged.
    """
    n = x.shape[dim]
    i = torch.arange(out, device=x.device, dtype=torch.int64)
    # Everything is non-negative, so truncating division is floor division; it exports as
    # an integer Div, where "floor" exports through float32 (inexact past 2**24, and wrong
    # after an fp16 conversion).
    start = torch.div(i * n, out, rounding_mode="trunc")
    end = torch.div((i + 1) * n + out - 1, out, rounding_mode="trunc")
    k = torch.arange(max_bin, device=x.device, dtype=torch.int64)
    idx = torch.minimum(start[:, None] + k[None, :], end[:, None] - 1).reshape(-1)
    picked = x.index_select(dim, idx)
    shape = list(picked.shape)
    shape[dim: dim + 1] = [out, max_bin]
    return picked.reshape(shape).amax(dim=dim + 1)


def adaptive_max_pool2d_export(x: torch.Tensor, size: tuple[int, int], max_ratio: int) -> torch.Tensor:
    """2-D adaptive max pool as two 1-D passes (a max over a rectangle is separable).

    ``max_ratio`` bounds input/output size on either axis (the stage stride): a bin then
    spans at most ``max_ratio + 1`` elements whatever the length.
    """
    h, w = size
    if isinstance(h, int) and isinstance(w, int) and h == 1 and w == 1:
        return x.amax(dim=(-2, -1), keepdim=True)
    for dim, out in ((-2, h), (-1, w)):
        if x.shape[dim] == out:  # stride-1 stage: the pool is the identity
            continue
        x = adaptive_max_pool_axis(x, x.ndim + dim, out, 1 if max_ratio == 1 else max_ratio + 1)
    return x


class _ExportGate(nn.Module):
    """The audio tower's attention gate with its adaptive max pool made exportable.

    Same parameters (the original gate is a submodule) and the same arithmetic as
    ``AttentionGate.forward``; a test compares the two in eager mode.
    """

    def __init__(self, gate: nn.Module, max_ratio: int):
        super().__init__()
        self.gate = gate
        self.max_ratio = max_ratio

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        g = self.gate
        x = adaptive_max_pool2d_export(x, tuple(size), self.max_ratio)
        return torch.sigmoid(g.bn(g.conv_point(g.conv_depth(x))))


class _ConstFBSP(nn.Module):
    """Stands in for ``LinearFBSP``: its (re, im) weights computed once, kept as constants."""

    def __init__(self, re: torch.Tensor, im: torch.Tensor):
        super().__init__()
        self.register_buffer("re", re)
        self.register_buffer("im", im)

    def weights(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.re, self.im


class _GraphFBSP(nn.Module):
    """Stands in for ``LinearFBSP``: the graph computes the weights from the same three
    parameter vectors, with the time grid stored as a constant (see ``fbsp_grid``)."""

    def __init__(self, fbsp: nn.Module, n_fft: int):
        super().__init__()
        self.fbsp = fbsp
        with torch.no_grad():
            self.register_buffer("t", fbsp_grid(n_fft, fbsp.m.dtype, fbsp.m.device))

    def weights(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.fbsp
        return fbsp_weights(f.m, f.fb, f.fc, self.t, f.eps)


def _export_audio_tower(audio: nn.Module, fbsp: str = "computed") -> nn.Module:
    """A shallow copy of the audio tower for export: same parameters (no copy of the
    weights, and the caller's model is not modified), with the FBSP weights either computed
    in the graph (``fbsp="computed"``) or frozen into constants (``"constant"``), and the
    gates' pooling made exportable. Its ``spectrogram`` and ``forward`` are the model's own
    code, so the op order of the front end is the reference's."""
    if fbsp not in FBSP_MODES:
        raise ValueError(f"fbsp must be one of {FBSP_MODES}, not {fbsp!r}")
    tower = copy.copy(audio)
    tower._modules = OrderedDict(audio._modules)
    if fbsp == "constant":
        with torch.no_grad():
            re, im = audio.fbsp.weights(audio.cfg.n_fft)
        tower._modules["fbsp"] = _ConstFBSP(re.detach().clone(), im.detach().clone())
    else:
        tower._modules["fbsp"] = _GraphFBSP(audio.fbsp, audio.cfg.n_fft)
    for i in range(1, 5):
        stride = _stage_stride(getattr(audio, f"layer{i}"))
        tower._modules[f"att{i}"] = _ExportGate(getattr(audio, f"att{i}"), stride)
    # att5 pools to the (1, 1) of the global average pool: a global max, any length.
    tower._modules["att5"] = _ExportGate(audio.att5, 1)
    return tower


def _stage_stride(layer: nn.Sequential) -> int:
    conv = layer[0].conv2
    return int(max(conv.stride))


class ImageGraph(nn.Module):
    def __init__(self, model: AudioCLIP):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


class TextGraph(nn.Module):
    def __init__(self, model: AudioCLIP):
        super().__init__()
        self.text = model.text

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)


class AudioGraph(nn.Module):
    """[-1, 1] waveform in; the int16 scaling, framing, window and FBSP are in the graph."""

    def __init__(self, model: AudioCLIP, fbsp: str = "computed"):
        super().__init__()
        self.audio = _export_audio_tower(model.audio, fbsp)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.audio(waveform * INT16_SCALE)


class AudioTrunkGraph(AudioGraph):
    """[-1, 1] waveform -> the tower's last gated feature map [batch, C, F, steps]."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        a = self.audio
        return a.features(a.spectrogram((waveform * INT16_SCALE).to(a.window.dtype)))


class AudioHeadGraph(nn.Module):
    """A feature map (or a window's slice of a track's) -> embedding."""

    def __init__(self, model: AudioCLIP, fbsp: str = "computed"):
        super().__init__()
        self.audio = _export_audio_tower(model.audio, fbsp)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.audio.pool(features)


def graph_module(model: AudioCLIP, modality: str, fbsp: str = "computed") -> nn.Module:
    """The nn.Module whose forward is exactly the exported graph (for tests and export)."""
    if modality in ("audio", *SPAN_PARTS):
        cls = {"audio": AudioGraph, "audio_trunk": AudioTrunkGraph, "audio_head": AudioHeadGraph}[modality]
        return cls(model, fbsp).eval()
    return {"image": ImageGraph, "text": TextGraph}[modality](model).eval()


def span_geometry(model: AudioCLIP) -> tuple[int, int]:
    """(channels, frequency steps) of the audio trunk's feature map, by running it once."""
    with torch.no_grad():
        f = AudioTrunkGraph(model).eval()(torch.zeros(1, model.config.audio.sample_rate))
    return int(f.shape[1]), int(f.shape[2])


def reference_forward(model: AudioCLIP, modality: str, x: np.ndarray) -> np.ndarray:
    """What the graph must compute, by the *unmodified* PyTorch model (fp32, eager).

    Audio takes the [-1, 1] waveform the graph takes and scales it as the graph does.
    """
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x))
        if modality == "image":
            out = model.visual(t)
        elif modality == "text":
            out = model.text(t)
        elif modality == "audio_trunk":
            out = model.audio.features(model.audio.spectrogram(t * INT16_SCALE))
        elif modality == "audio_head":
            out = model.audio.pool(t)
        else:
            out = model.audio(t * INT16_SCALE)
    return out.float().numpy()


# -- specs ----------------------------------------------------------------------------------
def io_specs(model: AudioCLIP, modality: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    cfg = model.config
    out = TensorSpec(OUTPUT_NAME, "float32", ("batch", cfg.embed_dim))
    if modality == "image":
        s = cfg.image.resolution
        inp = TensorSpec("pixels", "float32", ("batch", 3, s, s))
    elif modality == "text":
        inp = TensorSpec("tokens", "int64", ("batch", "tokens"))
    elif modality in SPAN_PARTS:
        c, f = span_geometry(model)
        features = ("batch", c, f, "steps")
        if modality == "audio_head":
            return (TensorSpec("features", "float32", features),), (out,)
        return ((TensorSpec("waveform", "float32", ("batch", "samples")),),
                (TensorSpec("features", "float32", features),))
    else:
        inp = TensorSpec("waveform", "float32", ("batch", "samples"))
    return (inp,), (out,)


def example_input(model: AudioCLIP, modality: str, batch: int = 2, seconds: float = 2.0,
                  seed: int = 0, tokens: int | None = None) -> np.ndarray:
    """A plausible input for tracing and the export's own verification (text: ``tokens``
    positions, the context length by default)."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    if modality == "image":
        s = cfg.image.resolution
        return rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    if modality == "text":
        length = cfg.text.context_length if tokens is None else tokens
        ids = np.zeros((batch, length), dtype=np.int64)
        vocab = cfg.text.vocab_size
        for b in range(batch):
            n = min(3 + b % 5, length - 1)
            ids[b, 0] = vocab - 2  # start token
            ids[b, 1:n] = rng.integers(1, vocab - 2, n - 1)
            ids[b, n] = vocab - 1  # end token: the largest id, where the tower reads out
        return ids
    if modality == "audio_head":
        # A trunk's output is gated (sigmoid) ReLU features: non-negative, of order 1.
        c, f = span_geometry(model)
        steps = max(2, int(round(seconds * 2.5)))
        return np.abs(rng.standard_normal((batch, c, f, steps))).astype(np.float32)
    samples = int(round(seconds * cfg.audio.sample_rate))
    t = np.arange(samples) / cfg.audio.sample_rate
    tone = np.sin(2 * np.pi * 220.0 * t)[None, :] * rng.uniform(0.1, 0.5, (batch, 1))
    return (tone + 0.05 * rng.standard_normal((batch, samples))).clip(-1, 1).astype(np.float32)


# -- export ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """The exporters print progress and emit many warnings on success; keep the CLI readable."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        yield buf


def _dynamo_export(module: nn.Module, modality: str, x: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch}
    if modality in ("audio", "audio_trunk"):
        # min 2: torch.export specialises sizes 0 and 1; the graph still handles any length
        # because frame_signal keeps its max() in the graph.
        dims[1] = torch.export.Dim("samples", min=2, max=MAX_SAMPLES)
    elif modality == "audio_head":
        dims[3] = torch.export.Dim("steps", min=2, max=MAX_SAMPLES // 512)
    elif modality == "text":
        # Up to the context length the positional table covers (min 2: start + end token).
        dims[1] = torch.export.Dim("tokens", min=2, max=module.text.positional_embedding.shape[0])
    name = INPUT_NAMES[modality]
    # No output_names here: the dynamo exporter names values after the aten op that made
    # them, so the text tower's token lookup is already called "embedding", and renaming the
    # output to it breaks SSA (torch 2.13). _name_output renames safely afterwards.
    prog = torch.onnx.export(module, (x,), dynamo=True, input_names=[name], dynamic_shapes={name: dims},
                             opset_version=OPSET, optimize=True, external_data=False, verbose=False)
    return _name_output(prog.model_proto, OUTPUT_NAMES.get(modality, OUTPUT_NAME))


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            if v.name == old:
                v.name = new


def _name_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Give the single graph output the contract's name, moving any internal value that
    already has that name out of the way first."""
    (out,) = proto.graph.output
    if out.name != name:
        taken = {v for n in proto.graph.node for v in n.output} | {i.name for i in proto.graph.initializer}
        if name in taken:
            k = 0
            while f"{name}_{k}" in taken:
                k += 1
            _rename_value(proto.graph, name, f"{name}_{k}")
        _rename_value(proto.graph, out.name, name)
    return proto


def _torchscript_export(module: nn.Module, modality: str, x: torch.Tensor) -> onnx.ModelProto:
    name, out = INPUT_NAMES[modality], OUTPUT_NAMES.get(modality, OUTPUT_NAME)
    axes = {name: {0: "batch"}, out: {0: "batch"}}
    if modality in ("audio", "audio_trunk", "text"):
        axes[name][1] = "tokens" if modality == "text" else "samples"
    if modality == "audio_trunk":
        axes[out][3] = "steps"
    if modality == "audio_head":
        axes[name][3] = "steps"
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, input_names=[name], output_names=[out],
                      dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _set_dim_names(proto: onnx.ModelProto, specs: tuple[TensorSpec, ...], values) -> None:
    """Name the dynamic axes as the manifest does (exporters invent names like s0, s77)."""
    by_name = {s.name: s for s in specs}
    for v in values:
        spec = by_name.get(v.name)
        if spec is None:
            continue
        dims = v.type.tensor_type.shape.dim
        for d, want in zip(dims, spec.shape):
            if isinstance(want, str):
                d.ClearField("dim_value")
                d.dim_param = want
            else:
                d.ClearField("dim_param")
                d.dim_value = want


# The oldest IR version that holds everything these graphs use (opset 18, no 4-bit types):
# onnxruntime 1.17 (the runtime's minimum, also common on Android) reads IR <= 9.
IR_VERSION = 9


def tidy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports no node uses (ORT's quantiser adds half a dozen), pin the IR
    version to what the runtime's oldest supported onnxruntime reads, and drop the
    per-node metadata the dynamo exporter writes: Python stack traces with the exporting
    machine's file paths and object addresses, which leak local paths into a bundle, make
    two exports of the same weights differ byte for byte, and fill ~20 % of a small graph."""
    for node in proto.graph.node:
        del node.metadata_props[:]
    used = {n.domain or "" for n in proto.graph.node}
    keep = [o for o in proto.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    if not proto.functions:
        proto.ir_version = min(proto.ir_version, IR_VERSION)
    return proto


def check_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker (full) and strict shape inference; returns the inferred model."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"graph fails onnx checks: {one_line(exc)}") from None


def verify_graph(model: AudioCLIP, modality: str, proto_or_path, min_cos: float = 0.9999) -> float:
    """Run the graph in ONNX Runtime at batch 1 and 3 (audio: two lengths too) and compare
    with PyTorch; return the worst cosine. Raises ExportError below ``min_cos`` or on a
    shape error (the sign of a size baked into the graph)."""
    import onnxruntime as ort

    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = INPUT_NAMES[modality]
    # Two batch sizes; two lengths (audio: samples, text: token positions, one of them cut
    # just after the batch's last end token as the runtime feeds it).
    cases = [example_input(model, modality, 1, 1.3, seed=11),
             example_input(model, modality, 3, 2.7, seed=12, tokens=8)]
    worst = 1.0
    for x in cases:
        try:
            got = sess.run([OUTPUT_NAMES.get(modality, OUTPUT_NAME)], {name: x})[0]
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ExportError(f"{modality} graph fails on input shape {list(x.shape)}: "
                              f"{one_line(exc, 200)}") from None
        ref = reference_forward(model, modality, x)
        if got.shape != ref.shape:
            raise ExportError(f"{modality} graph gives shape {got.shape} for input {list(x.shape)}, "
                              f"PyTorch gives {ref.shape}")
        worst = min(worst, float(cosines(got.reshape(len(got), -1), ref.reshape(len(ref), -1)).min()))
    if worst < min_cos:
        raise ExportError(f"{modality} graph disagrees with PyTorch (worst cosine {worst:.6f} < {min_cos})")
    return worst


def export_encoder(model: AudioCLIP, modality: str, path: str | Path, exporter: str = "auto",
                   verify_cos: float = 0.999, fbsp: str = "computed") -> ExportedGraph:
    """Export one tower to ``path`` (a single .onnx file, weights inside) and check it.

    ``exporter``: "auto" (dynamo, then TorchScript on failure), "dynamo" or "torchscript".
    ``verify_cos`` is the sanity bound of the export's own verification (the parity report
    with its real targets comes later, on a held-out set). ``fbsp`` (audio only): see
    ``FBSP_MODES``.
    """
    if modality not in GRAPH_KINDS:
        raise ValueError(f"unknown modality {modality!r}")
    path = Path(path)
    model = model.eval()
    module = graph_module(model, modality, fbsp)
    x = torch.from_numpy(example_input(model, modality, batch=2, seconds=2.0))
    inputs, outputs = io_specs(model, modality)
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures = []
    for name in order:
        try:
            with _quiet(), torch.no_grad():
                proto = (_dynamo_export if name == "dynamo" else _torchscript_export)(module, modality, x)
            _set_dim_names(proto, inputs, proto.graph.input)
            _set_dim_names(proto, outputs, proto.graph.output)
            proto = check_graph(tidy(proto))
            verify_graph(model, modality, proto, verify_cos)
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the next one
            failures.append(f"{name}: {type(exc).__name__}: {one_line(exc)}")
            log.info("%s exporter failed for %s: %s", name, modality, failures[-1])
            continue
        proto.producer_name = "manga-music export"
        onnx.save_model(proto, str(path))
        return ExportedGraph(modality, path, name, inputs, outputs,
                             note="; ".join(failures) if failures else "")
    raise ExportError(f"could not export the {modality} encoder: " + " | ".join(failures))


__all__ = ["ExportError", "ExportedGraph", "export_encoder", "graph_module", "reference_forward", "io_specs",
           "example_input", "check_graph", "tidy", "verify_graph", "cosines", "adaptive_max_pool2d_export",
           "MODALITIES", "SPAN_PARTS", "GRAPH_KINDS", "span_geometry", "INPUT_NAMES", "OUTPUT_NAME", "INT16_SCALE",
           "FBSP_MODES"]
