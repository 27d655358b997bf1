"""The bundle checks itself on the machine it runs on.

An int8 graph can compute different numbers on different CPUs (``runtime.cpu``), and a
file can be damaged in ways its sha256 was recomputed over. So every schema-2 manifest
holds, per modality, a small golden input and the embedding the exporting PyTorch model
gave for it (``Manifest.goldens``), and per graph a cosine floor. The first time a graph is
opened on a machine, its session embeds the golden input and the result is compared with
that embedding; a pass is remembered in the cache folder (``runtime.cache``), keyed by the
graph's sha256, the onnxruntime version, the execution provider and the CPU's model and
int8 features, so later starts skip it. A failure is never cached: it is re-measured.

What the caller does with a failure (``Encoders`` does this): say so in one line and use
the bundle's fp32 graph for that encoder, or, when there is none, stop with a
``BundleError`` (exit 2 from the CLIs).

Skip the check with ``selfcheck=False`` (``Encoders``, ``Retriever``), ``--no-selfcheck``
on the CLIs, or ``MANGA_MUSIC_SELFCHECK=0``; it costs one encoder call per graph and
machine.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .cache import read_entry, resolve_cache_dir, write_entry
from .cpu import cpu_info
from .manifest import EncoderFile, Golden, ImagePreprocess, Manifest

ENV_SELFCHECK = "MANGA_MUSIC_SELFCHECK"
CACHE_SUBDIR = "selfcheck"
_INT16_SCALE = 32768.0


def selfcheck_enabled(requested: bool | None = None) -> bool:
    """``requested`` when given, else on unless ``MANGA_MUSIC_SELFCHECK`` is 0/false/no/off."""
    if requested is not None:
        return bool(requested)
    return os.environ.get(ENV_SELFCHECK, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class SelfCheckResult:
    """The golden input through one graph on this machine."""

    file: str
    modality: str
    precision: str
    cosine: float  # the worst row's cosine with the exporting PyTorch model's embedding
    floor: float
    passed: bool
    cached: bool  # True: a pass remembered from an earlier run, nothing was computed now
    seconds: float = 0.0

    def describe(self) -> str:
        how = "cached pass" if self.cached else f"cosine {self.cosine:.5f} (floor {self.floor:.5f})"
        return f"{self.file}: self-check {'passed' if self.passed else 'FAILED'}, {how}"


def golden_batch(golden: Golden, image: ImagePreprocess) -> np.ndarray:
    """The golden input in the form the graph takes, made by the runtime's own
    preprocessing where there is one (so the check covers it too)."""
    raw = golden.input.array()
    if golden.modality == "image":
        from .image_preprocess import preprocess_image

        return np.stack([preprocess_image(np.ascontiguousarray(img, np.uint8), image, "center_crop") for img in raw])
    if golden.modality == "text":
        return raw.astype(np.int64)
    return (raw.astype(np.float32) / np.float32(_INT16_SCALE)).astype(np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-30)


def cache_key(enc: EncoderFile, provider: str) -> str:
    """What a cached verdict depends on: the exact graph, the kernels' library and where
    they run."""
    import onnxruntime as ort

    cpu = cpu_info()
    parts = (enc.sha256, ort.__version__, provider, cpu.machine, cpu.model, ",".join(cpu.features),
             f"{enc.selfcheck_min_cosine:.6f}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def check_graph(run: Callable[[np.ndarray], np.ndarray], manifest: Manifest, enc: EncoderFile, provider: str,
                cache_dir: str | os.PathLike | None = None) -> SelfCheckResult | None:
    """Run the golden input through ``run`` (the graph's session) unless a pass for this
    graph and machine is cached. None when the bundle has no golden input for the
    modality (schema 1)."""
    golden = manifest.golden(enc.modality)
    if golden is None or enc.selfcheck_min_cosine <= 0.0:
        return None
    entry_path = cache_path_for(enc, provider, cache_dir)
    cached = read_entry(entry_path)
    if cached is not None and cached.get("passed") is True and cached.get("sha256") == enc.sha256:
        return SelfCheckResult(enc.file, enc.modality, enc.precision, float(cached.get("cosine", 1.0)),
                               enc.selfcheck_min_cosine, True, True)
    t0 = time.perf_counter()
    got = run(golden_batch(golden, manifest.image))
    cos = row_cosines(got, golden.reference.array())
    worst = float(cos.min()) if cos.size and np.isfinite(cos).all() else float("nan")
    passed = bool(np.isfinite(worst) and worst >= enc.selfcheck_min_cosine)
    result = SelfCheckResult(enc.file, enc.modality, enc.precision, worst, enc.selfcheck_min_cosine, passed, False,
                             time.perf_counter() - t0)
    if passed:
        cpu = cpu_info()
        write_entry(entry_path, {"sha256": enc.sha256, "file": enc.file, "passed": True, "cosine": worst,
                                 "floor": enc.selfcheck_min_cosine, "provider": provider, "cpu": cpu.describe(),
                                 "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return result


def cache_path_for(enc: EncoderFile, provider: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``check_graph`` keeps this graph's verdict (for tests and ``--help`` texts)."""
    return resolve_cache_dir(cache_dir) / CACHE_SUBDIR / f"{cache_key(enc, provider)}.json"


__all__ = ["SelfCheckResult", "check_graph", "golden_batch", "selfcheck_enabled", "cache_key", "cache_path_for",
           "row_cosines", "ENV_SELFCHECK"]
