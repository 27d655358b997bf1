"""fp32 graph -> int8 graph, per encoder, through optimum's presets or onnxruntime directly.

The number format (every recipe, every tool): uint8 activations x int8 weights, weights
symmetric and per channel, quantised to 7 bits (ORT's ``reduce_range``: [-64, 64]). That
is what makes a graph compute the same numbers on every CPU: ONNX Runtime's int8 kernels
without VNNI (x86 AVX2 / AVX-512 / SSE4.1) add pairs of u8 x s8 products in saturating
16-bit lanes, and 2 * 255 * 64 = 32640 fits where 2 * 255 * 127 does not; its ARM kernel
without dot product adds pairs of shifted products the same way (2 * 128 * 64 fits). VNNI,
AMX, dot-product and i8mm kernels sum in 32 bits and were exact anyway. Measured: with
8-bit weights the demo bundle's image graph agrees with itself across an AVX-512 VNNI and
an (emulated) AVX2 CPU only to cosine 0.16-0.99; with 7-bit weights the full-size graph's
outputs are bit-identical (README, "int8 on every CPU"). ``export.int8_format`` reads the
bound off the finished graph and the manifest records it.

What each encoder gets (``plan_for``; the parity report is the judge, see README):

- image (CLIP RN50) and audio (ESResNeXt-50): static quantisation, QDQ format, uint8
  activations with ranges calibrated on pages / clips; the first conv in fp32 (its input,
  normalised pixels or the dB spectrogram, is the costliest tensor to round), and, for the
  image tower, as many of its last stages in fp32 as its parity target needs, tried in
  order from none (``plan_for``). The audio tower quantises only its Conv / Gemm / MatMul
  nodes: its attention blocks gate every stage with sigmoid(x) * features, and rounding
  those Muls to uint8 cost more than all the convs together (measured on two draws of the
  parity weights: 0.985 -> 0.9966 and 0.9931 -> 0.9961 mean cosine, for 10 % more time);
- text (CLIP transformer): dynamic quantisation (weights int8 per channel, activations
  quantised on the fly per batch): no calibration set to mismatch, and the transformer's
  activation outliers make static ranges lossy.

The audio front end (int16 scaling, framing, window, the two FBSP MatMuls, power, the
1e-18 floor and the dB log) is never quantised: the dB spectrogram is only as good as
those MatMuls are exact, and the trunk amplifies small errors in it. Every node upstream
of the first Conv is excluded by name, found from the graph itself.

Two tools produce the same kind of graph: Hugging Face optimum's ``ORTQuantizer`` with an
``AutoQuantizationConfig`` preset (avx2, avx512, avx512_vnni, arm64), or
``onnxruntime.quantization`` called directly with the equivalent settings. optimum is
used when it imports and a preset is asked for (or ``tool="optimum"``); both run ORT's
quantiser underneath, so the choice changes who picks the settings, not the numbers, and
the 7-bit weights are kept whatever the preset (a preset for a VNNI CPU would otherwise
write a graph that is wrong on the others).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from runtime.errors import one_line
from runtime.manifest import Int8Format

from .calibration import InputSet
from .int8_format import analyse

# Kept free of torch at import time (the CLI's --help and argument errors must be instant);
# the graph helpers come from .onnx_graphs inside the functions that need them.

# The audio tower's int8 node types (plan_for).
AUDIO_INT8_OPS = ("Conv", "Gemm", "MatMul")
PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64")
PERCENTILE = 99.999
TOOLS = ("auto", "optimum", "onnxruntime")

log = logging.getLogger("manga_music.export")


class QuantizeError(RuntimeError):
    """A graph could not be quantised (tool failure, bad calibration data)."""


@dataclass(frozen=True)
class QuantChoice:
    """How one encoder is quantised."""

    mode: str  # "static" (QDQ, calibrated) | "dynamic"
    per_channel: bool = True
    # 7-bit weights: the format that is exact on every CPU (module docstring). Only tests
    # and measurements of the alternative switch it off.
    reduce_range: bool = True
    # Op types quantised; () = the tool's default set for the mode.
    op_types: tuple[str, ...] = ()
    # Op types kept fp32 even though quantisable (e.g. the attention-pool MatMuls).
    keep_fp32_ops: tuple[str, ...] = ()
    # Keep the first Conv of a tower in fp32: for audio its input is the dB spectrogram
    # (about -180 to +100 dB), which uint8 would cut into ~1 dB steps.
    keep_first_conv: bool = False
    # Keep the last N Convs and every node after them in fp32 (a tower's last stages and
    # its pooling head), where measurement put most of the int8 error (README).
    keep_tail_convs: int = 0
    # What those N convs are, in words, for the manifest ("layer4 + attention pool").
    tail_name: str = ""
    # Activation ranges: "minmax" (the full observed range) or "percentile" (99.999th
    # percentile of a histogram: rare outliers no longer stretch the uint8 grid).
    calibration: str = "minmax"
    # Integer types of activations and weights: "uint8" or "int8" each.
    activations: str = "uint8"
    weights: str = "int8"

    def describe(self) -> str:
        parts = [self.mode] + ([self.calibration] if self.mode == "static" else []) + self.scope()
        if not self.reduce_range:
            parts.append("8-bit weights")
        return ", ".join(parts)

    def scope(self) -> list[str]:
        """Which nodes are int8 and which stay fp32, in words (the recipe in the notes and
        the method in the manifest both say it this way)."""
        parts = []
        if self.op_types and self.mode == "static":
            parts.append("only " + "/".join(self.op_types))
        if self.keep_first_conv:
            parts.append("first conv fp32")
        if self.keep_tail_convs:
            parts.append(f"{self.tail_name or f'last {self.keep_tail_convs} convs'} + head fp32")
        return parts


def image_tails(layers) -> tuple[tuple[int, str], ...]:
    """(convs, name) for keeping the image tower's last stages in fp32, smallest first.

    Each ResNet stage of CLIP's RN50 has 3 convs per bottleneck block plus one downsample
    conv (in its first block). The steps are: nothing, layer4, layer4 and the second half
    of layer3, layer3 and layer4, layers 2-4.
    """
    _l1, l2, l3, l4 = layers
    stage = lambda n: 3 * n + 1  # noqa: E731
    steps = [(0, ""), (stage(l4), "layer4")]
    if l3 // 2:
        steps.append((stage(l4) + 3 * (l3 // 2), f"layer4 + last {l3 // 2} blocks of layer3"))
    steps += [(stage(l4) + stage(l3), "layers 3-4"), (stage(l4) + stage(l3) + stage(l2), "layers 2-4")]
    return tuple(steps)


def plan_for(config) -> dict[str, tuple[QuantChoice, ...]]:
    """int8 recipes per encoder, in order of preference (smallest and fastest first).

    The export quantises with the first, measures parity, and moves to the next only if a
    target is missed (keeping the best by min cosine if none meets it), so the image graph
    keeps only as many fp32 stages as its parity target needs. Text: dynamic, the
    token-embedding Gather included (255 -> 65 MB, no measurable parity cost). Audio:
    static with the first conv fp32 (its input is the dB spectrogram), and only the
    Conv / Gemm / MatMul nodes quantised: the attention gates' Mul and Sigmoid and the
    residual Adds stay fp32 (module docstring: the gates were the error).
    """
    image = tuple(QuantChoice("static", calibration="percentile", keep_first_conv=True, keep_tail_convs=n,
                              tail_name=name) for n, name in image_tails(config.image.layers))
    return {
        "image": image,
        "text": (QuantChoice("dynamic", op_types=("MatMul", "Gather")),),
        "audio": (QuantChoice("static", keep_first_conv=True, op_types=AUDIO_INT8_OPS),),
    }


@dataclass(frozen=True)
class QuantResult:
    modality: str
    path: Path
    tool: str  # "optimum" | "onnxruntime"
    method: str  # what the manifest records, e.g. "static-qdq per-channel u8s8 (optimum:avx2)"
    excluded_nodes: int
    notes: tuple[str, ...] = ()
    format: Int8Format | None = None  # measured from the written graph


def optimum_available() -> bool:
    try:
        import optimum.onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken transformers install
        return False
    return True


def detect_preset() -> str:
    """The optimum preset for the CPU this runs on (x86 flags from /proc/cpuinfo, else arm64).

    A bundle may run on other CPUs; the export keeps the 7-bit weights whatever the preset,
    so the presets differ only in activation symmetry, and the parity report measures what
    the chosen one gives.
    """
    import platform

    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


# -- graph analysis ---------------------------------------------------------------------------
def frontend_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of every node the first Conv depends on: for the audio tower, the whole
    waveform -> dB spectrogram front end. Empty when the graph has no Conv."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    first_conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if first_conv is None:
        return []
    seen: dict[str, onnx.NodeProto] = {}
    stack = [first_conv.input[0]]
    while stack:
        value = stack.pop()
        node = producer.get(value)
        if node is None or node.name in seen:
            continue
        seen[node.name] = node
        stack.extend(node.input)
    return list(seen)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Quantisers address nodes by name; give every unnamed node a unique one."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _tail_nodes(model: onnx.ModelProto, n_convs: int) -> list[str]:
    """Every node from the n-th last Conv on (the prepared graph is topologically sorted)."""
    nodes = list(model.graph.node)
    conv_at = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    if not conv_at:
        return []
    start = conv_at[-min(n_convs, len(conv_at))]
    return [node.name for node in nodes[start:]]


def _nodes_of_type(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in op_types]


# -- calibration reader -----------------------------------------------------------------------
class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an InputSet (fresh per pass)."""

    def __init__(self, inputs: InputSet, modality: str, batch_size: int = 4):
        from .graph_io import INPUT_NAMES

        self._name = INPUT_NAMES[modality]
        self._batches = list(inputs.batches(modality, batch_size))
        self._it = iter(self._batches)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self._name: batch}

    def rewind(self):
        self._it = iter(self._batches)

    def samples(self):
        """One dict per input, unbatched (optimum's reader adds the batch axis)."""
        return [{self._name: row} for batch in self._batches for row in batch]


@contextlib.contextmanager
def _quiet_tools():
    """optimum and ORT's quantiser log and warn freely; the CLI shows its own progress."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("optimum", "onnxruntime", "root", "transformers")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# -- preprocessing ----------------------------------------------------------------------------
def prepare(fp32_path: Path, out_path: Path, fold_constants: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """ORT's recommended pre-quantisation pass (BatchNorm folded into Conv, constant folding,
    shape inference), then node names. Returns the model and notes.

    ``fold_constants=False`` keeps subgraphs that depend only on constants as they are: the
    audio graph computes its FBSP filterbank from 3 x 1025 parameters, and folding would
    store the 2 x 1025 x 2048 result in the file instead (the session folds it at load
    time anyway). The other basic fusions (Conv + BatchNorm/Mul/Add) still run.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes = []
    src = Path(fp32_path)
    with _quiet_tools(), tempfile.TemporaryDirectory(prefix="prep-", dir=Path(out_path).parent) as tmp:
        if not fold_constants:
            src = _optimise_without_folding(src, Path(tmp) / src.name)
        skip = dict(skip_optimization=not fold_constants)
        # Absolute paths, and the work done inside the temporary folder: when ORT's symbolic
        # shape inference gives up it saves its partial model (and a weights file) into the
        # current directory, which would otherwise litter the user's.
        src, dst = Path(src).absolute(), Path(out_path).absolute()
        with _working_dir(tmp):
            try:
                quant_pre_process(str(src), str(dst), **skip)
            except Exception as exc:  # noqa: BLE001 - symbolic shape inference can fail on dynamic graphs
                # Harmless: ONNX's own shape inference still runs; only ORT's symbolic pass is skipped.
                log.info("symbolic shape inference skipped for %s (%s)", Path(fp32_path).name, type(exc).__name__)
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **skip)
    model = onnx.load(str(out_path))
    _name_nodes(model)
    onnx.save_model(model, str(out_path))
    return model, notes


@contextlib.contextmanager
def _working_dir(path):
    """``contextlib.chdir`` for Python 3.10 too (the export runs on one thread)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _optimise_without_folding(src: Path, dst: Path) -> Path:
    """The optimisation step of ``quant_pre_process`` (ORT basic level, saved to a file),
    with ORT's ConstantFolding transformer switched off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"], disabled_optimizers=["ConstantFolding"])
    return dst


# -- the two tools ----------------------------------------------------------------------------
def _ort_quantize(src: Path, dst: Path, modality: str, choice: QuantChoice, calib: InputSet | None,
                  exclude: list[str], ranges_cache: Path | None = None) -> str:
    import inspect

    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    op_types = list(choice.op_types) or None
    if choice.mode == "dynamic":
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types, per_channel=choice.per_channel,
                         reduce_range=choice.reduce_range, weight_type=qtype[choice.weights], nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
        return "dynamic"
    percentile = choice.calibration == "percentile"
    reader = _Reader(calib, modality, _calib_batch(choice))
    cache = {}
    if ranges_cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        # The recipes of one encoder differ only in which nodes stay fp32; the activation
        # ranges (of every tensor, excluded or not) are the same, so calibrate once.
        cache["calibration_cache_path"] = str(ranges_cache)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    per_channel=choice.per_channel, reduce_range=choice.reduce_range,
                    activation_type=qtype[choice.activations], weight_type=qtype[choice.weights],
                    nodes_to_exclude=exclude,
                    calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
                    # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 reaching that count
                    # *discards* the batches collected so far instead of merging their ranges.
                    # Memory is no reason for it either: the MinMax calibrator keeps only a
                    # min and a max per tensor and batch.
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": choice.weights == "int8",
                                   **({"CalibPercentile": PERCENTILE} if percentile else {})}, **cache)
    return "static-qdq"


def _calib_batch(choice: QuantChoice) -> int:
    """Calibration batch size. The histogram (percentile) calibrator of onnxruntime 1.32
    stacks per-batch arrays, so a short last batch breaks it: feed it one input at a time."""
    return 1 if choice.calibration == "percentile" else 4


def _optimum_quantize(src: Path, dst: Path, modality: str, choice: QuantChoice, calib: InputSet | None,
                      exclude: list[str], preset: str, workdir: Path) -> str:
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, CalibrationConfig

    static = choice.mode == "static"
    kwargs = dict(is_static=static, per_channel=choice.per_channel, nodes_to_exclude=exclude,
                  operators_to_quantize=list(choice.op_types) or None)
    config = getattr(AutoQuantizationConfig, preset)(**kwargs)
    # Every preset gets the 7-bit weights, not only avx2/avx512: a bundle runs on CPUs other
    # than the one its preset names (module docstring).
    config.reduce_range = choice.reduce_range
    # ORTQuantizer wants a transformers config beside the model; ours has none and needs none.
    quantizer = ORTQuantizer(src, config=_NoConfig())
    ranges = None
    if static:
        reader = _Reader(calib, modality, _calib_batch(choice))
        samples = reader.samples()
        percentile = choice.calibration == "percentile"
        calibration = CalibrationConfig(dataset_name="manga-music calibration", dataset_config_name="default",
                                        dataset_split="calibration", dataset_num_samples=len(samples),
                                        method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
                                        num_bins=2048 if percentile else None,
                                        percentile=PERCENTILE if percentile else None)
        # optimum's reader takes any iterable of {input: sample} (a datasets.Dataset is one).
        ranges = quantizer.fit(samples, calibration, onnx_augmented_model_name=workdir / f"{modality}.augmented.onnx",
                               operators_to_quantize=config.operators_to_quantize,
                               batch_size=_calib_batch(choice))
    out_dir = workdir / f"{modality}.optimum"
    quantizer.quantize(config, out_dir, file_suffix="quantized", calibration_tensors_range=ranges)
    (made,) = out_dir.glob("*.onnx")  # optimum derives the name from the source's (Path.with_suffix rules)
    os.replace(made, dst)
    return ("static-qdq" if static else "dynamic") + f" (optimum:{preset})"


class _NoConfig:
    """Stands in for a transformers PretrainedConfig: optimum only saves it next to the model."""

    def save_pretrained(self, *_args, **_kwargs) -> None:
        return None


# -- entry point ------------------------------------------------------------------------------
def quantize_encoder(fp32_path: str | Path, out_path: str | Path, modality: str, calib: InputSet | None,
                     choice: QuantChoice | None, tool: str = "auto", preset: str | None = None,
                     workdir: str | Path | None = None) -> QuantResult:
    """Quantise one fp32 graph to int8 at ``out_path``; check the result with onnx.checker.

    ``tool``: "auto" (optimum when it imports and ``preset`` is given or detected, else
    onnxruntime), "optimum", or "onnxruntime". ``preset``: one of ``PRESETS``; None picks
    the exporting CPU's (``detect_preset``) when optimum is used.
    """
    from .onnx_graphs import check_graph, tidy

    if tool not in TOOLS:
        raise ValueError(f"unknown quantisation tool {tool!r} (choose from {', '.join(TOOLS)})")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown optimum preset {preset!r} (choose from {', '.join(PRESETS)})")
    if choice is None:
        raise ValueError("quantize_encoder needs a QuantChoice (see plan_for)")
    if choice.mode == "static" and (calib is None or calib.count(modality) == 0):
        raise QuantizeError(f"static quantisation of the {modality} encoder needs calibration inputs")
    notes: list[str] = []
    use_optimum = tool == "optimum" or (tool == "auto" and optimum_available())
    if tool == "optimum" and not optimum_available():
        raise QuantizeError("optimum was asked for but does not import (pip install 'manga-music[optimum]')")
    if use_optimum:
        preset = preset or detect_preset()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mm-quant-")))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        pre = workdir / f"{fp32_path.stem}_pre.onnx"
        # audio: keep the FBSP filterbank computed (see prepare)
        model, pre_notes = prepare(fp32_path, pre, fold_constants=modality != "audio")
        notes += pre_notes
        exclude = frontend_nodes(model) if modality == "audio" else []
        if choice.keep_first_conv:
            exclude += _nodes_of_type(model, ("Conv",))[:1]
        if choice.keep_fp32_ops:
            exclude += _nodes_of_type(model, choice.keep_fp32_ops)
        if choice.keep_tail_convs:
            exclude += _tail_nodes(model, choice.keep_tail_convs)
        exclude = list(dict.fromkeys(exclude))
        tmp_out = workdir / f"{fp32_path.stem}.int8.onnx"
        try:
            with _quiet_tools():
                if use_optimum:
                    method = _optimum_quantize(pre, tmp_out, modality, choice, calib, exclude, preset, workdir)
                else:
                    method = _ort_quantize(pre, tmp_out, modality, choice, calib, exclude,
                                           workdir / f"{fp32_path.stem}.{choice.calibration}.ranges.json")
        except QuantizeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the tools raise anything from ValueError to ORT errors
            raise QuantizeError(f"quantising the {modality} encoder failed: {type(exc).__name__}: "
                                f"{one_line(exc)}") from None
        q = tidy(onnx.load(str(tmp_out)))
        check_graph(q)
        facts = analyse(q)
        onnx.save_model(q, str(out_path))
    detail = ["per-channel" if choice.per_channel else "per-tensor"]
    if choice.mode == "static":
        detail += ["u8s8", choice.calibration]
    detail.append("7-bit weights" if choice.reduce_range else "8-bit weights")
    detail += choice.scope()
    if modality == "audio":
        detail.append("front end fp32")
    if not use_optimum:
        method += " (onnxruntime)"
    fmt = Int8Format(activations=facts.activations, weights=facts.weights, weight_bits=7 if choice.reduce_range else 8,
                     per_channel=choice.per_channel, max_abs_weight=facts.max_abs_weight,
                     pair_sum_bound=facts.pair_sum_bound, saturation_free=facts.saturation_free,
                     fp32_nodes=len(exclude), recipe=choice.describe())
    return QuantResult(modality, out_path, "optimum" if use_optimum else "onnxruntime",
                       f"{method} {' '.join(detail)}", len(exclude), tuple(notes), fmt)


__all__ = ["QuantChoice", "QuantResult", "QuantizeError", "plan_for", "image_tails", "PRESETS", "TOOLS",
           "quantize_encoder",
           "frontend_nodes", "optimum_available", "detect_preset"]
