"""int8 graphs compute the same numbers on every CPU (issue 11).

Three layers of evidence, cheapest first:
- the format, read off the graph (export/int8_format.py): 7-bit symmetric weights keep every
  pair sum of ONNX Runtime's 16-bit kernels in range, on x86 without VNNI and on ARM without
  dot product; the shipped bundle's graphs are checked from their files, not their manifest;
- the kernels themselves: one MatMulInteger with extreme values, exact by numpy, run on this
  CPU and on an emulated AVX2-only CPU (tests/cpu_emulation.py): full-range weights saturate
  there (the test has teeth), 7-bit weights do not;
- the shipped demo bundle, run through the runtime on an emulated AVX2-only CPU: the same
  embeddings as here, its self-check passes, and its example pages get the same genres.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cpu_emulation import check, need_qemu, run_emulated

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export.int8_format import INT16_MAX, analyse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "runtime" / "defaults"

# Builds two MatMulInteger graphs (u8 activations x s8 weights of |w| <= wmax) on extreme
# inputs, runs them, and prints how far each is from the exact integer product.
KERNEL_SCRIPT = r"""
import json, sys
import numpy as np
import onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
K = 64
a = np.full((4, K), 255, np.uint8)
a[1, ::3] = 0
out = {}
for wmax in (127, 64):
    w = np.full((K, 8), wmax, np.int8)
    w[:, 1::2] = -wmax
    w[::5, 2] = wmax // 3
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "sat",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, K])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 8])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run(None, {"a": a})[0].astype(np.int64)
    exact = a.astype(np.int64) @ w.astype(np.int64)
    out[wmax] = int(np.abs(got - exact).max())
print(json.dumps(out))
"""


def _static_graph(tmp_path, reduce_range: bool, weights: str = "int8"):
    """A small conv graph quantised by ORT's static QDQ quantiser with the given settings."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    src, dst = tmp_path / "f.onnx", tmp_path / f"q_{reduce_range}_{weights}.onnx"
    onnx.save(m, str(src))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[weights]
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=qtype,
                    extra_options={"WeightSymmetric": weights == "int8"})
    return onnx.load(str(dst))


@pytest.mark.parametrize("reduce_range, weights, max_w, free", [
    (True, "int8", 64, True),     # our format: 2 * 255 * 64 = 32640 fits in int16
    (False, "int8", 127, False),  # full-range s8: 64770 does not (x86 without VNNI saturates)
    (False, "uint8", 255, False),  # u8 weights: ARM without dot product shifts them to s8 and can overflow
])
def test_the_format_is_read_off_the_graph(tmp_path, reduce_range, weights, max_w, free):
    facts = analyse(_static_graph(tmp_path, reduce_range, weights))
    assert facts.activations == "uint8" and facts.weights == weights and facts.integer_products == 1
    assert facts.max_abs_weight <= max_w and (facts.max_abs_weight > 64) == (not reduce_range)
    assert facts.saturation_free is free
    assert (facts.pair_sum_bound <= INT16_MAX) == (facts.max_abs_weight <= 64)


def test_the_shipped_int8_graphs_are_saturation_free_by_their_files():
    from runtime.bundle import Bundle

    bundle = Bundle.load(DEFAULTS / "bundle")
    int8 = [e for e in bundle.manifest.encoders if e.precision == "int8"]
    assert {e.modality for e in int8} == {"image", "text", "audio"}
    for e in int8:
        facts = analyse(onnx.load(str(bundle.encoder_path(e))))
        print(f"\n{e.file}: max |w| {facts.max_abs_weight}, pair sums <= {facts.pair_sum_bound}, "
              f"{facts.integer_products} integer products, recipe: {e.int8_format.recipe}")
        assert facts.saturation_free, e.file
        assert e.int8_format is not None and e.int8_format.saturation_free
        assert e.int8_format.max_abs_weight == facts.max_abs_weight
        assert e.int8_format.weight_bits == 7
    # ... and the manifest says where its parity was measured.
    for p in bundle.manifest.parity:
        assert p.cpu and p.onnxruntime and p.provider == "CPUExecutionProvider", p


def test_emulated_avx2_saturates_full_range_weights_and_not_7_bit_ones():
    need_qemu()
    native = json.loads(check(run_emulated_native()))
    emulated = json.loads(check(run_emulated(KERNEL_SCRIPT)))
    print(f"\n|int8 MatMul - exact| by max |w|: native {native}, emulated AVX2 (EPYC-Milan) {emulated}")
    assert emulated["127"] > 0, "the emulated AVX2 CPU did not saturate: the emulation would prove nothing"
    assert emulated["64"] == 0 and native["64"] == 0


def run_emulated_native():
    """The same kernel script on this machine's own CPU (a plain subprocess)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", KERNEL_SCRIPT], capture_output=True, text=True, timeout=120)


# Embeds the shipped example pages and clips with the shipped bundle (self-check on, fresh
# cache), prints the embeddings and the self-check verdicts as JSON.
DEMO_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
from runtime.encoders import Encoders
d = Path("runtime/defaults")
enc = Encoders(d / "bundle", device="cpu", precision="int8", threads=1, selfcheck=True, cache_dir=sys.argv[1])
pages = sorted((d / "pages").glob("*.jpg"))
music = sorted((d / "music").glob("*.ogg"))[::4]  # 4 of the 14: emulation is ~50x slower
out = {"pages": enc.embed_images(pages).tolist(), "music": enc.embed_audio(music).tolist(),
       "text": enc.embed_texts(["Scary music", "a quiet rainy page"]).tolist(),
       "selfcheck": {m: [r.passed, r.cosine, enc.encoder(m).encoder.precision] for m, r in enc.selfchecks.items()}}
print(json.dumps(out))
"""


def test_the_shipped_demo_computes_the_same_on_an_emulated_avx2_cpu(tmp_path):
    need_qemu()
    import subprocess
    import sys

    native = json.loads(check(subprocess.run([sys.executable, "-c", DEMO_SCRIPT, str(tmp_path / "native")],
                                             capture_output=True, text=True, timeout=300, cwd=REPO)))
    emulated = json.loads(check(run_emulated(DEMO_SCRIPT, str(tmp_path / "emulated"))))
    report = []
    for key in ("pages", "music", "text"):
        a, b = np.asarray(native[key]), np.asarray(emulated[key])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        report.append(f"{key}: worst cosine native vs emulated AVX2 {cos.min():.7f}")
        assert cos.min() >= 0.9999, (key, cos)
    print("\n" + "; ".join(report) + f"; self-check under emulation: {emulated['selfcheck']}")
    assert set(emulated["selfcheck"]) == {"image", "audio", "text"}
    assert all(passed and precision == "int8" for passed, _cos, precision in emulated["selfcheck"].values())
    from runtime.bundle import Bundle

    genres = Bundle.load(DEFAULTS / "bundle").manifest.label_set("genres").embeddings
    top = lambda e: (np.asarray(e) @ genres.T).argmax(1).tolist()  # noqa: E731
    assert top(native["pages"]) == top(emulated["pages"])
