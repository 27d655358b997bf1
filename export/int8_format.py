"""Read an int8 graph's number format off the graph itself, and decide whether it is exact on
every CPU ONNX Runtime runs on.

Why a graph can differ between CPUs (measured, README "How the int8 graphs are made"):
ONNX Runtime's x86 kernels without VNNI (AVX2, AVX-512F/BW, SSE4.1) multiply u8
activations by s8 weights with VPMADDUBSW, which adds each adjacent pair of products in a
*saturating* 16-bit lane; its ARM kernel without the dot-product extension subtracts 128
from the activations and adds pairs of s8 x s8 products in 16 bits too. VNNI, AMX,
ARM dot-product and i8mm kernels accumulate in 32 bits and never saturate. So a graph is
exact everywhere when, for every integer matrix product, each pair sum fits in int16:

    x86:            2 * 255 * max|w| <= 32767   ->  max|w| <= 64
    ARM (no dot):   2 * 128 * max|w| <= 32767   ->  max|w| <= 127

with w the weight minus its zero point. Symmetric s8 weights quantised to 7 bits
(``reduce_range``: [-64, 64]) satisfy both; full-range s8 weights ([-127, 127]) break the
x86 bound, and asymmetric u8 weights ("u8u8") break the ARM one. ``analyse`` measures
``max|w|`` from the initializers, so the claim recorded in the manifest is a fact about the
file, not about the settings that were asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

# Ops whose second input is a weight matrix multiplied by (quantised) activations.
_WEIGHT_CONSUMERS = {"Conv": 1, "MatMul": 1, "Gemm": 1, "ConvTranspose": 1}
_INTEGER_OPS = {"MatMulInteger": (1, 3), "ConvInteger": (1, 3), "QLinearConv": (3, 5), "QLinearMatMul": (3, 5),
                "DynamicQuantizeMatMul": (1, 3)}
INT16_MAX = 32767
X86_ACTIVATION_MAX = 255  # u8 activations on x86
ARM_ACTIVATION_MAX = 128  # u8 activations shifted to s8 by ARM's no-dot-product kernel


@dataclass(frozen=True)
class GraphInt8Facts:
    activations: str  # "uint8" | "int8" | "none"
    weights: str  # "int8" | "uint8"
    max_abs_weight: int
    integer_products: int  # matrix products with integer weights
    float_nodes: int  # nodes outside any Q/DQ pair that compute in float (for the manifest's note)

    @property
    def pair_sum_bound(self) -> int:
        return 2 * X86_ACTIVATION_MAX * self.max_abs_weight

    @property
    def saturation_free(self) -> bool:
        # u8 weights are shifted to s8 on ARM without dot product: |w - 128| reaches 128.
        if self.weights != "int8":
            return False
        return (self.pair_sum_bound <= INT16_MAX
                and 2 * ARM_ACTIVATION_MAX * self.max_abs_weight <= INT16_MAX)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _centred(w: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    w = w.astype(np.int32)
    if zp is None:
        return w
    zp = zp.astype(np.int32)
    if zp.ndim == 1 and zp.size > 1:  # per-channel zero points along the quantisation axis
        shape = [1] * w.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    return w - zp


def analyse(model: onnx.ModelProto) -> GraphInt8Facts:
    """The integer format of ``model``'s matrix products, measured from its weights."""
    inits = _initializers(model)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    max_abs, n_products = 0, 0
    weight_types, act_types = set(), set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            w = inits[node.input[0]]
            # A weight: the DQ output is the weight input of a matrix product (biases and
            # Gather tables are dequantised too, but never multiplied by activations).
            uses = consumers.get(node.output[0], [])
            if not any(_WEIGHT_CONSUMERS.get(c.op_type) == i for c, i in uses) or w.dtype not in (np.int8, np.uint8):
                continue
            zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            max_abs = max(max_abs, int(np.abs(_centred(w, zp, axis)).max(initial=0)))
            weight_types.add(w.dtype.name)
            n_products += 1
        elif node.op_type == "QuantizeLinear":
            zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            act_types.add("uint8" if zp is None else zp.dtype.name)
        elif node.op_type in _INTEGER_OPS:
            wi, zi = _INTEGER_OPS[node.op_type]
            if len(node.input) > wi and node.input[wi] in inits:
                w = inits[node.input[wi]]
                zp = inits.get(node.input[zi]) if len(node.input) > zi and node.input[zi] else None
                axis = 0 if node.op_type in ("ConvInteger", "QLinearConv") else 1
                max_abs = max(max_abs, int(np.abs(_centred(w, zp, axis)).max(initial=0)))
                weight_types.add(w.dtype.name)
                n_products += 1
        elif node.op_type == "DynamicQuantizeLinear":
            act_types.add("uint8")  # ONNX defines it as u8 only
    weights = "uint8" if "uint8" in weight_types else "int8"
    acts = "none" if not act_types else ("int8" if act_types == {"int8"} else "uint8")
    quantised = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", *_INTEGER_OPS}
    floats = sum(1 for n in model.graph.node if n.op_type not in quantised)
    return GraphInt8Facts(acts, weights, max_abs, n_products, floats)


__all__ = ["GraphInt8Facts", "analyse", "INT16_MAX"]
