"""Shared machinery of the benchmark suite: the full-size bundle, the PyTorch baseline,
inputs, synthetic libraries, the query subprocess, and the report hook.

Run it with ``pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json``.
Plain ``pytest`` never gets here (``testpaths = ["tests"]``), and nothing in ``tests/``
imports this file.

Everything is measured at full model size with 2 threads (``torch.set_num_threads(2)``,
ORT ``intra_op_num_threads=2``), because the targets are ratios on that footing. The
bundle comes from ``export.build_bundle`` applied to the parity recipe's weights (no
download) and is cached under ``.cache/benchmarks/`` keyed by a hash of the export code,
the model code and the recipe, so only the first run pays the minutes an export takes.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest benchmarks/x.py` from elsewhere still finds runtime/, training/
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".cache" / "benchmarks"
RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
SPINNING = False  # ORT's spin-waiting: off, as the runtime's defaults for apps
RECIPE_SEED = 1
LAYOUT_JSON = ROOT / "tests" / "golden" / "parity" / "state_dict_layout.json"
LIBRARY_SIZES = (1_000, 100_000, 1_000_000)
# Bump when the synthetic library or page recipe changes, so cached ones are rebuilt.
DATA_VERSION = "6"  # 2: segmented library format (issue 13); 3: centre + index-time ANN; 4: pq-refine
# ANN; 5, 6: its k_factor (the recall recorded at index time depends on it)
ANN_LIBRARY_FROM = 100_000


# -- options ---------------------------------------------------------------------------------
def pytest_addoption(parser):
    g = parser.getgroup("manga-music benchmarks")
    g.addoption("--mm-size", choices=("full", "tiny"), default="full",
                help="model size to benchmark; 'tiny' only checks the suite's plumbing in seconds "
                     "(its numbers mean nothing). Default: full.")
    g.addoption("--mm-bundle", default=None, metavar="DIR",
                help="benchmark this bundle folder instead of exporting (and caching) one")
    g.addoption("--mm-max-tracks", type=int, default=max(LIBRARY_SIZES), metavar="N",
                help="skip end-to-end libraries larger than N tracks (default: all)")
    g.addoption("--mm-faiss-max-tracks", type=int, default=100_000, metavar="N",
                help="build FAISS indexes (when faiss imports) only up to N tracks: an HNSW build "
                     "over 1M x 1024 takes far longer than the rest of the suite on 2 cores")
    g.addoption("--mm-no-report", action="store_true",
                help="do not write benchmarks/results/*.md at the end of the run")


def pytest_sessionstart(session):
    # Load averages go in the report: on a shared machine they say how much to trust it.
    session.config._mm_load_start = _loadavg()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- optional dependencies -----------------------------------------------------------------
def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_cuda() -> bool:
    torch = torch_or_none()
    return bool(torch is not None and torch.cuda.is_available())


def ort_cuda() -> bool:
    from runtime.sessions import cuda_available

    return cuda_available()


def export_api():
    """``export.build_bundle`` or the reason it cannot be used."""
    if torch_or_none() is None:
        return None, "torch is not installed (pip install 'manga-music[export]')"
    try:
        from export import build_bundle
    except Exception as exc:  # noqa: BLE001 - ImportError, or an export module still being written
        return None, f"export.build_bundle is not importable ({type(exc).__name__}: {exc})"
    return build_bundle, ""


# -- timing ------------------------------------------------------------------------------------
def measure(benchmark, fn: Callable[[], Any], *, budget_s: float = 2.0, min_rounds: int = 1,
            max_rounds: int = 15, warmup: bool = True, **extra) -> Any:
    """Time ``fn`` with ``benchmark.pedantic``, choosing the number of rounds from one
    warm-up call so that slow cases (batch 8 of 30 s audio: tens of seconds on 2 cores)
    get one round and fast ones get enough for a stable median, within ``budget_s``.

    The warm-up call is not counted: ORT plans memory and torch allocates on the first
    call of a shape, which is cold-start cost, measured on its own elsewhere.
    """
    first = None
    if warmup:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    rounds = max_rounds if first is None else int(budget_s // max(first, 1e-9))
    rounds = max(min_rounds, min(max_rounds, rounds))
    benchmark.extra_info.update(extra)
    benchmark.extra_info["warmup_s"] = first
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def median_seconds(fn: Callable[[], Any], n: int = 5) -> float:
    """Median wall seconds of ``n`` calls of ``fn`` (a step timed beside a benchmark)."""
    import statistics

    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# -- the bundle --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchBundle:
    """The bundle under test and the PyTorch model that computes the same function."""

    path: Path
    size: str  # "full" | "tiny" | "custom"
    source: str  # how it was made, for the report
    model_config: dict | None  # AudioCLIPConfig.to_dict() of the matching model; None: no match
    fingerprint: str = ""
    info: dict = field(default_factory=dict)


def _code_hash(size: str, precisions: tuple[str, ...]) -> str:
    """What the exported bundle depends on: the export, model and recipe code, the parity
    layout and the settings. Any edit to them exports again."""
    h = hashlib.sha256(f"size={size};seed={RECIPE_SEED};precisions={','.join(precisions)};".encode())
    files = sorted(ROOT.glob("export/**/*.py")) + sorted(ROOT.glob("training/model/*.py")) + [
        ROOT / "training" / "parity_weights.py", ROOT / "runtime" / "manifest.py", LAYOUT_JSON]
    for f in files:
        if f.is_file():
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def recipe_model(size: str, config: dict | None = None):
    """The PyTorch AudioCLIP with the parity recipe's weights, in eval mode."""
    from training.model import AudioCLIP, AudioCLIPConfig
    from training.parity_weights import layout_of, parity_model, recipe_state_dict

    cfg = AudioCLIPConfig.from_dict(config) if config else (
        AudioCLIPConfig.full() if size == "full" else AudioCLIPConfig.tiny())
    if cfg == AudioCLIPConfig.full():
        # The fixture's layout order reproduces the parity fixture's weights exactly; the
        # exported bundle and the baseline must both use it to compute the same function.
        return parity_model(str(LAYOUT_JSON) if LAYOUT_JSON.is_file() else None, seed=RECIPE_SEED)
    model = AudioCLIP(cfg)
    model.load_state_dict(recipe_state_dict(layout_of(model.state_dict()), seed=RECIPE_SEED), strict=True)
    return model.eval()


def _bundle_precisions() -> tuple[str, ...]:
    # fp16 graphs only serve the CUDA provider; on a CPU-only machine they would be exported for nothing.
    return ("fp32", "int8", "fp16") if ort_cuda() else ("fp32", "int8")


def _publish(tmp: Path, final: Path, stale_glob: str) -> None:
    """Move a finished build into place; a concurrent run that won the race keeps its copy."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in final.parent.glob(stale_glob):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _export_bundle(size: str) -> tuple[Path, str, dict | None]:
    from runtime.bundle import Bundle
    from runtime.errors import BundleError

    precisions = _bundle_precisions()
    key = _code_hash(size, precisions)[:16]
    final = CACHE / f"bundle-{size}-{key}"
    build_bundle, why = export_api()
    if build_bundle is None:
        if size == "tiny":
            return _tiny_fixture_bundle(), f"tests/runtime_fixtures tiny bundle ({why})", None
        pytest.skip(f"no full-size bundle: {why}; pass --mm-bundle DIR to benchmark an exported one")
    if (final / "manifest.json").is_file():
        try:
            b = Bundle.load(final)
            return final, f"export.build_bundle (cached {final.relative_to(ROOT)})", b.manifest.model.config or None
        except BundleError:
            shutil.rmtree(final, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".tmp-bundle-{size}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = recipe_model(size)
    t0 = time.perf_counter()
    build_bundle(model, tmp, precisions=precisions, progress=True)
    took = time.perf_counter() - t0
    _publish(tmp, final, f"bundle-{size}-*")
    config = model.config.to_dict()
    del model
    return final, f"export.build_bundle (built in {took:.0f} s, cached {final.relative_to(ROOT)})", config


def _tiny_fixture_bundle() -> Path:
    from tests.runtime_fixtures import write_tiny_bundle

    final = CACHE / f"bundle-tinyfixture-v{DATA_VERSION}"
    if not (final / "manifest.json").is_file():
        tmp = CACHE / f".tmp-tinyfixture-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_tiny_bundle(tmp)
        _publish(tmp, final, "bundle-tinyfixture-*")
    return final


def _bundle_info(bundle) -> dict:
    m = bundle.manifest
    return {
        "path": str(bundle.dir),
        "fingerprint": bundle.fingerprint,
        "model": m.model.name,
        "demo": m.model.demo,
        "embed_dim": m.embed_dim,
        "encoders": [{"modality": e.modality, "part": e.part, "precision": e.precision, "bytes": e.bytes,
                      "method": e.method} for e in m.encoders],
        "parity": [asdict(p) for p in m.parity],
        "audio_span": None if m.audio_span is None else asdict(m.audio_span),
    }


@pytest.fixture(scope="session")
def bench_bundle(request) -> BenchBundle:
    from runtime.bundle import Bundle

    given = request.config.getoption("--mm-bundle")
    size = request.config.getoption("--mm-size")
    if given:
        path, source, config = Path(given), f"given with --mm-bundle {given}", None
    else:
        path, source, config = _export_bundle(size)
    b = Bundle.load(path)
    config = config or (b.manifest.model.config or None)
    if given:
        size = "full" if (b.embed_dim == 1024 and b.manifest.image.size == 224) else "custom"
    bb = BenchBundle(b.dir, size, source, config, b.fingerprint, _bundle_info(b))
    request.config._mm_bundle = {"size": bb.size, "source": bb.source, "matching_torch_model": config is not None,
                                 **bb.info}
    return bb


@pytest.fixture(scope="session")
def bench_bundle_manifest(bench_bundle):
    from runtime.bundle import Bundle

    return Bundle.load(bench_bundle.path).manifest


@pytest.fixture(scope="session")
def torch_threads():
    """torch with the suite's thread count, or a clean skip without torch."""
    torch = torch_or_none()
    if torch is None:
        pytest.skip("torch is not installed: no PyTorch baseline")
    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(1)  # one op at a time, like the ORT sessions (inter_op = 1)
    except RuntimeError:
        pass  # already fixed by earlier parallel work in this process
    return torch


@pytest.fixture(scope="session")
def torch_model(bench_bundle, torch_threads):
    """The PyTorch reference model matching the bundle (fp32, eval, CPU). A bundle that
    records no model config is taken to be the published size."""
    size = bench_bundle.size if bench_bundle.size in ("full", "tiny") else "full"
    return recipe_model(size, bench_bundle.model_config)


@pytest.fixture(scope="session")
def torch_model_cuda(torch_model):
    if not torch_cuda():
        pytest.skip("no CUDA device for PyTorch")
    import copy

    return copy.deepcopy(torch_model).to("cuda").eval()


class EncoderPool:
    """One ``Encoders`` per (precision, device), created on first use and kept for the
    session, so session creation is never inside a timing."""

    def __init__(self, bundle: BenchBundle):
        self.bundle = bundle
        self._pool: dict[tuple[str, str], Any] = {}

    def get(self, precision: str, device: str = "cpu"):
        from runtime.bundle import Bundle
        from runtime.encoders import Encoders

        key = (precision, device)
        if key not in self._pool:
            if device == "cuda" and not ort_cuda():
                pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
            b = Bundle.load(self.bundle.path)
            if precision not in {e.precision for e in b.manifest.encoders}:
                pytest.skip(f"the bundle has no {precision} graphs")
            # strict_device: a CUDA number must never be a silent CPU fallback. The session
            # settings are the app defaults, named here so the report can say what ran.
            self._pool[key] = Encoders(b, device=device, precision=precision, threads=THREADS, spinning=SPINNING,
                                       strict_device=(device == "cuda"))
        return self._pool[key]

    def release(self) -> None:
        """Drop every session: ORT keeps each session's arena at its peak (GBs after batch 8
        of 30 s audio) until the session goes, and later benchmarks need that memory."""
        import gc

        self._pool.clear()
        gc.collect()


@pytest.fixture(scope="session")
def encoders(bench_bundle) -> EncoderPool:
    return EncoderPool(bench_bundle)


# -- inputs --------------------------------------------------------------------------------------
PROMPTS = ("a manga page of a quiet, sad goodbye at a train station",
           "an action scene with speed lines and an explosion",
           "romantic comedy, two students blushing on the school roof",
           "horror: a dark corridor and a shadow behind the door",
           "fantasy battle music", "calm piano", "upbeat j-pop opening", "tense orchestral strings")


def synthetic_page(rng: np.random.Generator, height: int = 1600, width: int = 1100) -> np.ndarray:
    """A manga-like page (uint8 RGB): white paper, black-bordered panels, flat greys,
    screentone dots and ink strokes; only its size and texture matter for timing."""
    page = np.full((height, width), 250, np.uint8)
    rows = np.sort(rng.choice(np.arange(height // 6, height - height // 6), 2, replace=False))
    edges_y = [40, *rows, height - 40]
    for y0, y1 in zip(edges_y[:-1], edges_y[1:]):
        cut = int(rng.integers(width // 4, 3 * width // 4))
        for x0, x1 in ((40, cut), (cut, width - 40)):
            y0i, y1i, x0i, x1i = y0 + 6, y1 - 6, x0 + 6, x1 - 6
            panel = page[y0i:y1i, x0i:x1i]
            panel[:] = int(rng.integers(200, 255))
            yy, xx = np.mgrid[0:panel.shape[0], 0:panel.shape[1]]
            dots = ((yy % 6 < 2) & (xx % 6 < 2)) & (rng.random(panel.shape) < 0.7)
            panel[dots] = 90
            for _ in range(12):  # ink strokes (slices past the panel's edge are clipped)
                r, c = int(rng.integers(0, max(1, panel.shape[0]))), int(rng.integers(0, max(1, panel.shape[1])))
                panel[r:r + 3, c:c + int(rng.integers(10, 40))] = 10
            page[y0i:y0i + 4, x0i:x1i] = page[y1i - 4:y1i, x0i:x1i] = 0
            page[y0i:y1i, x0i:x0i + 4] = page[y0i:y1i, x1i - 4:x1i] = 0
    return np.repeat(page[:, :, None], 3, axis=2)


def synthetic_music(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """A mono clip in [-1, 1]: a chord progression with harmonics, a beat and a little noise."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    x = np.zeros(n)
    root = float(rng.uniform(110, 220))
    bar = 2.0
    for k, ratio in enumerate((1.0, 1.26, 1.5, 1.33)):
        mask = (np.floor(t / bar) % 4) == k
        for h in range(1, 5):
            x[mask] += np.sin(2 * np.pi * root * ratio * h * t[mask]) / h
    beat = np.exp(-30 * (t % 0.5)) * np.sin(2 * np.pi * 60 * t)
    x = 0.25 * x + 0.4 * beat + 0.02 * rng.standard_normal(n)
    return (0.8 * x / np.max(np.abs(x))).astype(np.float32)


def synthetic_music_dir(n_tracks: int, seconds: float, sample_rate: int) -> Path:
    """A folder of ``n_tracks`` generated clips (16-bit WAV), cached under .cache/benchmarks/."""
    import soundfile as sf

    folder = CACHE / f"music-{n_tracks}x{seconds:g}s-{sample_rate}-v{DATA_VERSION}"
    if not folder.is_dir():
        tmp = CACHE / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i in range(n_tracks):
            x = synthetic_music(np.random.default_rng(100 + i), seconds, sample_rate)
            sf.write(str(tmp / f"track{i}.wav"), x, sample_rate, subtype="PCM_16")
        os.replace(tmp, folder)
    return folder


class Inputs:
    """Model inputs by (modality, batch, seconds), made once and shared by every backend
    so PyTorch and ORT time the very same arrays."""

    def __init__(self, image_size: int, context_length: int, sample_rate: int, vocab_path: Path | None):
        self.image_size, self.context_length, self.sample_rate = image_size, context_length, sample_rate
        self.vocab_path = vocab_path  # None: the vocabulary shipped with the runtime
        self._cache: dict[tuple, np.ndarray] = {}

    def get(self, modality: str, batch: int, seconds: float | None = None) -> np.ndarray:
        key = (modality, batch, seconds)
        if key not in self._cache:
            rng = np.random.default_rng(zlib.crc32(repr(key).encode()))  # hash() varies per process
            if modality == "image":
                from runtime.image_preprocess import preprocess_image
                from runtime.manifest import ImagePreprocess

                cfg = ImagePreprocess(size=self.image_size)
                self._cache[key] = np.stack([preprocess_image(synthetic_page(rng, 560, 400), cfg)
                                             for _ in range(batch)]).astype(np.float32)
            elif modality == "text":
                from runtime.tokenizer import Tokenizer

                tok = Tokenizer(self.vocab_path, context_length=self.context_length)
                self._cache[key] = tok([PROMPTS[i % len(PROMPTS)] for i in range(batch)])
            else:
                self._cache[key] = np.stack([synthetic_music(rng, seconds, self.sample_rate) for _ in range(batch)])
        return self._cache[key]


@pytest.fixture(scope="session")
def bundle_inputs(bench_bundle) -> Inputs:
    from runtime.bundle import Bundle

    b = Bundle.load(bench_bundle.path)
    m = b.manifest
    return Inputs(m.image.size, m.text.context_length, m.audio.sample_rate, b.vocab_path)


@pytest.fixture(scope="session")
def torch_inputs(torch_model, bench_bundle, bundle_inputs) -> Inputs:
    """The bundle's inputs when the PyTorch model matches the bundle; otherwise (the tiny
    fixture bundle, plumbing only) inputs shaped for the PyTorch model."""
    cfg = torch_model.config
    if cfg.image.resolution == bundle_inputs.image_size and cfg.text.context_length == bundle_inputs.context_length:
        return bundle_inputs
    return Inputs(cfg.image.resolution, cfg.text.context_length, cfg.audio.sample_rate, None)


# -- pages, music, libraries ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def page_path() -> Path:
    """A 1100x1600 JPEG page: the size of a typical scan, so decoding and resizing cost what
    they cost in the product."""
    from PIL import Image

    path = CACHE / f"page-v{DATA_VERSION}.jpg"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.jpg")
        Image.fromarray(synthetic_page(np.random.default_rng(7))).save(tmp, quality=90)
        os.replace(tmp, path)
    return path


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def windows_per_track(n: int) -> int:
    # 8 windows per track where disk allows (the best-window lookup then reads as much as
    # for a 20 s clip); 1 at 1M tracks, where 8 would be 16 GB of float16 windows.
    return 8 if n <= 100_000 else 1


class LibraryPool:
    """Synthetic music libraries (random unit rows, the runtime's on-disk format) for the
    bundle under test, cached under .cache/benchmarks/ by size and bundle fingerprint."""

    def __init__(self, bundle: BenchBundle, max_tracks: int):
        self.bundle = bundle
        self.max_tracks = max_tracks

    def path(self, n: int) -> Path:
        from tests.runtime_fixtures import synthetic_library

        if n > self.max_tracks:
            pytest.skip(f"{n:,} tracks is over --mm-max-tracks {self.max_tracks:,}")
        d = self.bundle.info["embed_dim"]
        row_bytes = n * d * 4
        # One library per size and kind of bundle: a new full-size export replaces the
        # full-size libraries (GBs) but a tiny plumbing run does not evict them.
        final = CACHE / "libraries" / self.bundle.size / f"{self.bundle.fingerprint[:12]}-n{n}-v{DATA_VERSION}"
        if (final / "CURRENT").is_file():
            return final
        avail = _mem_available()
        # float32 rows (the runtime's format) must fit in the page cache with room to
        # spare, or the search measures the disk, not the product.
        need = row_bytes + max(row_bytes // 2, 512 << 20)
        if avail is not None and avail < need:
            pytest.skip(f"{n:,} x {d} float32 rows ({row_bytes / 2**30:.1f} GiB) need "
                        f"{need / 2**30:.1f} GiB of available memory; {avail / 2**30:.1f} GiB available")
        w = windows_per_track(n)
        need_disk = n * d * (4 + 2 * w) + n * 400
        free = shutil.disk_usage(CACHE.parent if CACHE.parent.exists() else ROOT).free
        if free < need_disk + (2 << 30):
            pytest.skip(f"a {n:,}-track library needs {need_disk / 2**30:.1f} GiB of disk; "
                        f"{free / 2**30:.1f} GiB free")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        # As the indexer stores a large library: its hub centre, and (faiss installed, and
        # large enough) the approximate index built at index time with its recall recorded.
        synthetic_library(tmp, self.bundle.path, n, windows_per_track=w, seed=n % 9973, centre=True,
                          ann=n >= ANN_LIBRARY_FROM)
        _publish(tmp, final, f"*-n{n}-v*")
        return final


@pytest.fixture(scope="session")
def libraries(request, bench_bundle) -> LibraryPool:
    return LibraryPool(bench_bundle, request.config.getoption("--mm-max-tracks"))


# -- a query process -------------------------------------------------------------------------------
# Runs in a fresh interpreter: what a reader app pays to start, and what it holds in memory.
# It imports only the runtime (never torch) and reports its own phases and memory as JSON.
# argv: bundle, library, page, threads, index ("exact", or "auto" for make_index's choice).
QUERY_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from runtime.bundle import Bundle
from runtime.retrieval import Retriever
t1 = time.perf_counter()
bundle_dir, library_dir, page, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
bundle = Bundle.load(bundle_dir)
t2 = time.perf_counter()
r = Retriever(bundle=bundle, library=library_dir, device="cpu", precision="int8", threads=threads)
if sys.argv[5] == "exact":
    # Pinned like test_search: exact search over the pooled rows whatever the library
    # holds (a synthetic library ships no approximate index; the query path never builds one).
    from runtime.search import ExactIndex
    r.library.__dict__["index"] = ExactIndex(r.library.tracks)
first = r.query(page, top_k=10)
t3 = time.perf_counter()
second = r.query(page, top_k=10)
t4 = time.perf_counter()
assert len(first.tracks) == 10 and [h.path for h in first.tracks] == [h.path for h in second.tracks]
status = {}
try:
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                status[k] = int(v.split()[0]) * 1024
except OSError:
    pass
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
print(json.dumps({"import_s": t1 - t0, "bundle_load_s": t2 - t1, "first_query_s": t3 - t2,
                  "second_query_s": t4 - t3, "total_s": t4 - t0, "peak_rss": status.get("VmHWM", peak),
                  "rss_end": status.get("VmRSS"), "rss_anon_end": status.get("RssAnon"),
                  "rss_file_end": status.get("RssFile"), "torch_imported": "torch" in sys.modules}))
"""


def run_query_child(bundle: Path, library: Path, page: Path, threads: int = THREADS, index: str = "exact",
                    cache: Path | None = None) -> dict:
    """``cache``: the runtime's cache folder for the child (None: the user's)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if cache is not None:
        env["MANGA_MUSIC_CACHE"] = str(cache)
    proc = subprocess.run([sys.executable, "-c", QUERY_CHILD, str(bundle), str(library), str(page), str(threads), index],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"query process failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the report -----------------------------------------------------------------------------------
def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("onnxruntime", "numpy", "onnx", "torch"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: the report says so
            out[name] = None
    try:
        import onnxruntime as ort

        out["ort_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                # The ones that decide int8 speed (VNNI, AMX) and fp32 width (AVX-512).
                return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                         "amx_bf16", "avx512_bf16", "avx512_fp16"})
    except OSError:
        pass
    return []


def machine_info(config) -> dict:
    physical, mem = None, None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        mem = psutil.virtual_memory().total
    except ImportError:
        if hasattr(os, "sysconf"):
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpu = None
    if torch_cuda():
        import torch

        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": mem,
        "gpu": gpu,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "threads": THREADS,
        "spinning": SPINNING,
        "load_start": getattr(config, "_mm_load_start", None),
        "load_end": _loadavg(),
        "versions": _versions(),
        "command": " ".join(["pytest", *sys.argv[1:]]),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["manga_music"] = {"machine": machine_info(config), "bundle": getattr(config, "_mm_bundle", None)}
    config._mm_output_json = output_json


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.getoption("--mm-no-report", default=True):
        return
    data = getattr(config, "_mm_output_json", None)
    if data is None:
        # Run without --benchmark-json: build the same document from the session itself.
        bs = getattr(config, "_benchmarksession", None)
        if bs is None or not bs.benchmarks:
            return
        data = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=bs.benchmarks,
                                                          include_data=False, machine_info=bs.get_machine_info(),
                                                          commit_info={})
        pytest_benchmark_update_json(config, bs.benchmarks, data)
    from benchmarks.report import render_markdown, write_report

    written = write_report(data)
    terminalreporter.write_sep("=", "manga-music benchmark report")
    terminalreporter.write_line(render_markdown(data))
    for p in written:
        terminalreporter.write_line(f"wrote {p}")
