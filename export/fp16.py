"""fp32 graph -> fp16 graph for the CUDA provider, with the fragile parts kept in fp32.

Kept in fp32:
- LayerNormalization, Softmax, Log/Exp/Pow/Sqrt and every reduction (ReduceMean, ReduceMax,
  ...): their sums and exponentials overflow or lose the small differences that matter;
- the audio front end, i.e. every node the first Conv depends on (int16 scaling, framing,
  window, the two FBSP MatMuls, power, the 1e-18 floor, the dB log): the scaled waveform
  reaches 32768 * 2, power ~1e9, and the floor is 1e-18, all outside fp16's range;
- Constant / ConstantOfShape / Cast nodes (they feed shape and index arithmetic too).

Graph inputs and outputs stay float32 so the runtime feeds the same arrays at any
precision. Written here rather than with ``onnxruntime.transformers.float16``: that
converter turns *every* float edge to fp16 and wraps blocked nodes in Casts, so a value
passing between two fp32 nodes still goes through fp16 and overflows (the front end's
``waveform * 32768`` becomes inf). Here each value keeps the precision of the node that
makes it, and a Cast is inserted only where a consumer needs the other one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .quantize import frontend_nodes

FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", "Log", "Exp", "Pow", "Sqrt", "Reciprocal", "Erf",
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "GlobalMaxPool", "GlobalAveragePool",
    "Range", "CumSum", "Cast", "Constant", "ConstantOfShape", "RandomNormal", "RandomUniform",
})
# Ops that only read their input's shape: no Cast is worth inserting in front of them.
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_FP16_MAX = 65504.0
_FP16_TINY = 5.96e-08  # smallest positive fp16 (subnormal); smaller magnitudes are lifted to it


class Fp16Error(RuntimeError):
    """The fp16 conversion produced a graph that fails the checks."""


def _to_fp16(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    tiny = (a != 0) & (np.abs(a) < _FP16_TINY)
    a = np.where(tiny, np.sign(a) * _FP16_TINY, a)
    return np.clip(a, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _float_values(model: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor in the graph (from strict shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    vals = set()
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            vals.add(v.name)
    vals.update(t.name for t in g.initializer if t.data_type == TensorProto.FLOAT)
    return vals


def _topological_sort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise Fp16Error(f"fp16 graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    graph.ClearField("node")
    graph.node.extend(ordered)


def to_fp16(model: onnx.ModelProto, keep_nodes: set[str] = frozenset()) -> tuple[onnx.ModelProto, int]:
    """Convert ``model`` in place; returns (model, number of nodes kept fp32)."""
    g = model.graph
    if any(n.op_type in ("If", "Loop", "Scan") for n in g.node):
        raise Fp16Error("graphs with control flow (If/Loop/Scan) are not supported by the fp16 converter")
    floats = _float_values(model)
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}

    def is_fp32_node(node: onnx.NodeProto) -> bool:
        return node.op_type in FP32_OPS or node.name in keep_nodes

    # Precision of each float value after conversion: the producer's. Graph inputs stay fp32.
    precision: dict[str, str] = {name: "fp32" for name in graph_inputs if name in floats}
    for node in g.node:
        for out in node.output:
            if out in floats:
                precision[out] = "fp32" if is_fp32_node(node) else "fp16"

    # Graph outputs made in fp16: the producer writes "<name>__fp16", a final Cast restores fp32.
    final_casts = []
    for out in g.output:
        if precision.get(out.name) == "fp16":
            inner = out.name + "__fp16"
            for node in g.node:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            precision[inner] = "fp16"
            final_casts.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                                name=f"{out.name}_to_fp32"))

    casts: dict[tuple[str, str], str] = {}
    new_nodes, new_inits = [], {}
    fp32_init_users: set[str] = set()
    kept = 0
    for node in g.node:
        fp32 = is_fp32_node(node)
        kept += fp32 and node.op_type not in ("Cast", "Constant", "ConstantOfShape")
        want = "fp32" if fp32 else "fp16"
        if node.op_type in _SHAPE_ONLY:
            continue
        for k, name in enumerate(node.input):
            if name not in floats and name not in precision:
                continue
            if name in inits:
                if want == "fp16":
                    half = name + "__fp16"
                    if half not in new_inits:
                        new_inits[half] = numpy_helper.from_array(_to_fp16(numpy_helper.to_array(inits[name])), half)
                    node.input[k] = half
                else:
                    fp32_init_users.add(name)
                continue
            have = precision.get(name)
            if have is None or have == want:
                continue
            key = (name, want)
            if key not in casts:
                casts[key] = f"{name}__to_{want}"
                new_nodes.append(helper.make_node(
                    "Cast", [name], [casts[key]], name=f"{name}__cast_{want}",
                    to=TensorProto.FLOAT if want == "fp32" else TensorProto.FLOAT16))
            node.input[k] = casts[key]

    # Float initializers now read only through their fp16 copies are dropped.
    keep_inits = [t for t in g.initializer if t.data_type != TensorProto.FLOAT or t.name in fp32_init_users
                  or t.name in graph_inputs]
    g.ClearField("initializer")
    g.initializer.extend(keep_inits + list(new_inits.values()))
    g.node.extend(new_nodes + final_casts)
    # Every value_info entry is stale now; strict inference rebuilds them.
    g.ClearField("value_info")
    _topological_sort(g)
    return model, kept


def convert_fp16(fp32_path: str | Path, out_path: str | Path, modality: str) -> tuple[Path, int]:
    """Write the fp16 graph of one encoder; returns (path, number of compute nodes kept fp32)."""
    from .onnx_graphs import check_graph, tidy

    model = onnx.load(str(fp32_path))
    for i, node in enumerate(model.graph.node):  # keep-lists address nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = set(frontend_nodes(model)) if modality == "audio" else set()
    half, kept = to_fp16(model, keep)
    try:
        half = check_graph(tidy(half))
    except Exception as exc:  # noqa: BLE001
        raise Fp16Error(f"{modality} fp16 graph fails onnx checks: {exc}") from None
    out_path = Path(out_path)
    onnx.save_model(half, str(out_path))
    return out_path, kept
