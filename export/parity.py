"""The parity report: how close each exported graph is to PyTorch fp32, measured, not assumed.

For every encoder and precision the graph runs in ONNX Runtime (CPU provider unless told
otherwise) on a held-out set that calibration never saw, and each output row is compared
with the unmodified PyTorch model's by cosine similarity. min and mean go into the
manifest with the target and whether it was met:

    fp32: min >= 0.9999      int8: mean >= 0.99 and min >= 0.98      fp16: mean >= 0.999

Targets are fixed here, in one place; a miss is reported (loudly by the CLI), never
hidden by moving a threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import BundleError
from runtime.manifest import ParityEntry
from runtime.selfcheck import row_cosines as cosines  # noqa: F401  (re-exported: tests and callers use it)

from .calibration import InputSet
from .graph_io import INPUT_NAMES, OUTPUT_NAME

if TYPE_CHECKING:  # torch stays unimported until a reference is computed
    from training.model import AudioCLIP

MIN_PARITY_INPUTS = 32


@dataclass(frozen=True)
class Target:
    min_cosine: float | None = None
    mean_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.mean_cosine is not None:
            parts.append(f"mean >= {self.mean_cosine}")
        if self.min_cosine is not None:
            parts.append(f"min >= {self.min_cosine}")
        return " and ".join(parts)

    def met(self, min_cos: float, mean_cos: float) -> bool:
        return ((self.min_cosine is None or min_cos >= self.min_cosine)
                and (self.mean_cosine is None or mean_cos >= self.mean_cosine))

    def shortfall(self, min_cos: float, mean_cos: float) -> str:
        """How far a miss is from the target, e.g. 'min 0.97512 is 0.00488 below 0.98'."""
        out = []
        if self.mean_cosine is not None and mean_cos < self.mean_cosine:
            out.append(f"mean {mean_cos:.5f} is {self.mean_cosine - mean_cos:.5f} below {self.mean_cosine}")
        if self.min_cosine is not None and min_cos < self.min_cosine:
            out.append(f"min {min_cos:.5f} is {self.min_cosine - min_cos:.5f} below {self.min_cosine}")
        return "; ".join(out)


TARGETS: dict[str, Target] = {
    "fp32": Target(min_cosine=0.9999),
    "int8": Target(min_cosine=0.98, mean_cosine=0.99),
    "fp16": Target(mean_cosine=0.999),
}


def reference_embeddings(model: "AudioCLIP", inputs: InputSet, modality: str, batch_size: int = 4) -> np.ndarray:
    """PyTorch fp32 outputs of the unmodified tower, row for row with ``inputs``."""
    from .onnx_graphs import reference_forward

    rows = [reference_forward(model, modality, b) for b in inputs.batches(modality, batch_size)]
    return np.concatenate(rows) if rows else np.zeros((0, model.config.embed_dim), np.float32)


def parity_session(path: str | Path, threads: int | None = 2, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """The runtime's own session (``runtime.sessions.make_session``) on the providers named,
    so parity is measured the way the runtime will run the graph."""
    from runtime.sessions import SessionSettings, make_session

    try:
        return make_session(path, SessionSettings(threads=threads or None, providers=tuple(providers)))[0]
    except BundleError as exc:  # a graph this export just wrote: its failure, not bad input
        raise RuntimeError(str(exc)) from None


def onnx_embeddings(path: str | Path, inputs: InputSet, modality: str, batch_size: int = 4,
                    threads: int | None = 2, session=None) -> np.ndarray:
    sess = session or parity_session(path, threads)
    name = INPUT_NAMES[modality]
    rows = [sess.run([OUTPUT_NAME], {name: b})[0] for b in inputs.batches(modality, batch_size)]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def machine(provider: str = "CPUExecutionProvider") -> dict:
    """Where a parity number is measured: the ParityEntry fields naming CPU and library."""
    import onnxruntime as ort

    from runtime.cpu import cpu_info

    cpu = cpu_info()
    return dict(cpu=f"{cpu.model} ({cpu.int8_class})", cpu_features=cpu.features, onnxruntime=ort.__version__,
                provider=provider)


def topk_overlap(query: np.ndarray, library: np.ndarray, query_ref: np.ndarray, library_ref: np.ndarray,
                 k: int, same_set: bool = False) -> float:
    """Mean overlap (0-1) of each query's top-k library items ranked with the graph's
    embeddings and with PyTorch's. ``same_set``: query and library are the same items, so
    each item's own row is left out of its list."""
    def ranks(q, lib):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        lib = lib / np.linalg.norm(lib, axis=1, keepdims=True)
        s = q.astype(np.float64) @ lib.astype(np.float64).T
        if same_set:
            np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    a, b = ranks(query, library), ranks(query_ref, library_ref)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def compare(modality: str, precision: str, got: np.ndarray, ref: np.ndarray,
            provider: str = "CPUExecutionProvider", inputs: str = "built-in") -> ParityEntry:
    if got.shape != ref.shape:
        raise ValueError(f"{modality}.{precision}: graph output shape {got.shape} != PyTorch {ref.shape}")
    cos = cosines(got, ref)
    finite = np.isfinite(cos)
    # A NaN row (an overflow in fp16, say) is a failure, not something to average away.
    min_cos = float(cos.min()) if finite.all() else float("nan")
    mean_cos = float(cos.mean()) if finite.all() else float("nan")
    target = TARGETS[precision]
    passed = bool(finite.all() and target.met(min_cos, mean_cos))
    return ParityEntry(modality, precision, int(len(cos)), round(min_cos, 6), round(mean_cos, 6),
                       target.describe(), passed, **machine(provider), inputs=inputs)


def measure(path: str | Path, modality: str, precision: str, inputs: InputSet, reference: np.ndarray,
            threads: int | None = 2, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ParityEntry:
    """Run one graph on the held-out inputs and compare with the PyTorch ``reference``."""
    return measure_session(parity_session(path, threads, providers), modality, precision, inputs, reference)[0]


def measure_session(sess, modality: str, precision: str, inputs: InputSet,
                    reference: np.ndarray) -> tuple[ParityEntry, np.ndarray]:
    """``measure`` on an open session; also returns the graph's embeddings of ``inputs``."""
    got = onnx_embeddings(None, inputs, modality, session=sess)
    used = sess.get_providers()[0]
    return compare(modality, precision, got, reference, used, inputs.source_of(modality)), got


def describe(entry: ParityEntry) -> str:
    status = "ok" if entry.passed else "MISSED"
    line = (f"{entry.modality:5s} {entry.precision}: cosine min {entry.min_cosine:.6f} mean {entry.mean_cosine:.6f} "
            f"over {entry.n} held-out inputs (target {entry.target}): {status}")
    if entry.topk_overlap is not None:
        line += f"; top-{entry.topk} overlap with PyTorch {entry.topk_overlap:.3f}"
    if not entry.passed:
        short = TARGETS[entry.precision].shortfall(entry.min_cosine, entry.mean_cosine)
        line += f" ({short or 'non-finite output'})"
    return line
