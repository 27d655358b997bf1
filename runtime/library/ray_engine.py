"""Indexing on a Ray cluster: ``build_library`` as it is, with the embedding done by Ray Data.

``build_library_ray`` runs the library's own build (scan, plan, commits to the resume
journal, segments, one generation published at the end: nothing of the format is forked)
and hands it an ``embed_file`` that is served by a Ray Data pipeline instead of a local
ONNX session::

    driver: plan -> the files to embed -----> Ray Data: from_items(paths)
                                                 .map_batches(_EmbedWorker, actor pool)
    driver: embed(path) <- results, in plan order <-'   one ORT session per worker

Each worker is an actor that opens ONE session for the library's modality and embeds the
files of each batch exactly as the local engine does (``default_embedder``: decode, mix,
resample, windows, loudness floor, the same window batch), so a Ray-built library holds the
same embeddings as a local one. A worker reserves ``threads`` CPUs and its session runs that
many intra-op threads, so workers x threads never oversubscribe a node. One Ray batch is one
block of ``files_per_batch`` files: what a worker that dies loses; Ray restarts the actor and
runs that batch again (``MAX_BATCH_RETRIES`` times: a file that crashes its decoder every time
must not stall the build forever; its batch's files are then recorded as failed, with why).

The driver keeps what it did before: it stats and hashes every file (so moved files are still
copied, not embedded), writes segments and commits progress every ``commit_every`` files, so
a killed driver loses at most that much and a rerun resumes from the journal. Ray is imported
only here, only when this engine is asked for (``pip install 'manga-music[ray]'``).

Music and page files must be readable by every worker at the same path (a shared or
identically mounted file system), and the bundle too; every node needs this package installed.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..encoders import TrackEmbedding
from ..errors import InputError, MangaMusicError, SilentAudioError, one_line
from .builder import COMMIT_EVERY, COMMIT_SECONDS, ProgressFn, build_library, default_embedder
from .records import BuildReport

log = logging.getLogger("manga_music")

FILES_PER_BATCH = 4  # per Ray batch (one block, one task): a dead worker loses at most this many files' work
MAX_BATCH_RETRIES = 3  # runs of a batch after its worker died, before its files are recorded as failed
# Batches Ray may give up on (each after MAX_BATCH_RETRIES deaths) before the whole build stops:
# a few poisoned files are theirs to fail; more looks like a sick cluster, and then the files
# should be retried by the next run rather than recorded as failed.
MAX_LOST_BATCHES = 8


class ClusterError(MangaMusicError):
    """The Ray cluster could not be reached or stopped serving (progress so far is kept)."""


class _EngineStopped(BaseException):
    """Raised through ``build_library`` (which catches only ``Exception`` per file) so that
    a cluster failure stops the build with its progress committed, instead of becoming
    every remaining file's failure record."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to open the same session the driver would (pickled to workers)."""

    bundle_dir: str
    kind: str
    mode: str | None
    device: str
    precision: str
    threads: int
    selfcheck: bool
    cache_dir: str | None
    on_batch: Callable[[list[str]], None] | None = None  # called in the worker with each batch's paths (tests)


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _outcome(embed, path: str) -> tuple:
    """One file in the worker -> a picklable outcome (never raises for the file's own problem)."""
    before = _stat(path)
    try:
        te = embed(Path(path))
    except SilentAudioError as exc:
        return ("silent", str(exc))
    except Exception as exc:  # noqa: BLE001 - the file's problem: the driver records it
        # Rebuilt on the driver as an InputError whose text is what the local engine would
        # record (type name first unless it is an input or OS error): the same failure lists.
        plain = isinstance(exc, (InputError, OSError)) or type(exc).__name__ == "EmbeddingCheckError"
        text = " ".join(str(exc).split()) or type(exc).__name__
        return ("failed", text if plain else f"{type(exc).__name__}: {text}")
    return ("ok", np.asarray(te.windows, np.float32), np.asarray(te.starts, np.float64),
            np.asarray(te.pooled, np.float32), float(te.duration), before)


class _EmbedWorker:
    """The Ray Data actor: one session, opened when the actor starts, for all its batches."""

    def __init__(self, spec: WorkerSpec):
        from ..encoders import Encoders

        self.spec = spec
        self.encoders = Encoders(spec.bundle_dir, device=spec.device, precision=spec.precision,
                                 threads=spec.threads, selfcheck=spec.selfcheck, cache_dir=spec.cache_dir)
        # Opened (sha256, IO check, self-check) now: a worker that cannot run the bundle fails
        # at start, once, rather than as every file's failure.
        self.encoders.encoder("audio" if spec.kind == "music" else "image")
        self.embed = default_embedder(self.encoders, spec.kind, spec.mode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        if self.spec.on_batch is not None:
            self.spec.on_batch(paths)
        results = np.empty(len(paths), dtype=object)
        results[:] = [pickle.dumps(_outcome(self.embed, p), protocol=5) for p in paths]
        return {"path": np.array(paths, dtype=object), "result": results}


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is the part we need
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'manga-music[ray]' (or 'ray[data]')") from None
    return ray


class RayEmbedder:
    """An ``embed_file`` for ``build_library`` whose work runs on Ray.

    ``plan(paths)`` (called by the builder with every file it may embed, in order) starts the
    pipeline; ``embed(path)`` then returns each file's result as Ray delivers it, in the same
    order. Results for planned files the builder did not ask for (copied by content, or
    refused by its own checks) are dropped.
    """

    def __init__(self, spec: WorkerSpec, files_per_batch: int, local_embed: Callable, *, address: str | None = None,
                 workers: int | None = None, num_cpus: int | None = None, quiet: bool = True):
        self.spec, self.files_per_batch = spec, files_per_batch
        self.address, self.workers, self.num_cpus, self.quiet = address, workers, num_cpus, quiet
        self._local_embed = local_embed  # the driver's own session: only for a file changed after its worker read it
        self._pos: dict[str, int] = {}
        self._rows = None
        self._buffer: dict[str, bytes] = {}
        self._ray = None  # set when this embedder started Ray (and so shuts it down)

    def plan(self, paths: Sequence[Path]) -> None:
        keys = [str(p) for p in paths]
        self._pos = {k: i for i, k in enumerate(keys)}
        if not keys:
            return  # nothing to embed (a rerun with nothing new): Ray is not even started
        ray, started = connect(self.address, self.num_cpus)
        self._ray = ray if started else None
        if self.quiet:
            _quiet_ray_logs()
        n_blocks = math.ceil(len(keys) / self.files_per_batch)
        workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.spec.threads)
        workers = min(workers, n_blocks)  # an actor with no batch to run would only take a session's memory
        ds = ray.data.from_items([{"path": k} for k in keys], override_num_blocks=n_blocks)
        with warnings.catch_warnings():
            # Ray 2.5x deprecates passing remote options as keywords but names no other way to
            # bound the retries of an actor's task (without a bound, a file that crashes its
            # decoder every time would stall the build forever).
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(_EmbedWorker, fn_constructor_args=(self.spec,), batch_size=self.files_per_batch,
                                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=self.spec.threads,
                                max_restarts=-1, max_task_retries=MAX_BATCH_RETRIES)
        ctx = ds.context  # this dataset's own copy: the caller's other pipelines keep their settings
        ctx.execution_options.preserve_order = True  # results in plan order: nothing piles up on the driver
        ctx.enable_progress_bars = False  # the indexer draws its own
        ctx.max_errored_blocks = MAX_LOST_BATCHES
        self._rows = self._iter_rows(ds)

    @staticmethod
    def _iter_rows(ds):
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield from zip(batch["path"], batch["result"])

    def _pull(self) -> tuple[str, bytes] | None:
        try:
            return next(self._rows)
        except StopIteration:
            return None
        except Exception as exc:  # noqa: BLE001 - Ray's own errors: the cluster, not a file
            raise _EngineStopped(_root_cause(exc)) from exc

    def __call__(self, path: Path) -> TrackEmbedding:
        key = str(path)
        pos = self._pos.get(key)
        if pos is None or self._rows is None:
            raise _EngineStopped(f"{key} was not planned for the Ray engine (a bug)")
        while key not in self._buffer:
            row = self._pull()
            if row is None:
                break
            got = self._pos.get(str(row[0]), -1)
            if got < pos:
                continue  # a planned file the builder did not ask for (copied, or refused): dropped
            self._buffer[str(row[0])] = row[1]
            if got > pos:
                break  # Ray went past this file: its batch was given up
        data = self._buffer.pop(key, None)
        self._buffer = {k: v for k, v in self._buffer.items() if self._pos[k] > pos}
        if data is None:
            raise RuntimeError(f"the Ray worker embedding its batch died {MAX_BATCH_RETRIES + 1} times (a crash while "
                               f"decoding?); touch the file or pass --rebuild to try it again")
        return self._result(path, pickle.loads(data))

    def _result(self, path: Path, outcome: tuple) -> TrackEmbedding:
        kind = outcome[0]
        if kind == "silent":
            raise SilentAudioError(outcome[1])
        if kind == "failed":
            raise InputError(outcome[1])
        _, windows, starts, pooled, duration, stat_at_read = outcome
        if stat_at_read != _stat(str(path)):
            # Changed after its worker read it (the builder's own check sees only its own
            # reads): what the worker embedded may be another version. Embedded again here.
            return self._local_embed(path)
        return TrackEmbedding(windows, starts, pooled, duration)

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()
            self._rows = None
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _root_cause(exc: BaseException) -> str:
    """'Type: message' of the error that started it: Ray wraps a worker's exception (with
    its traceback and terminal colours) in its own, the cause is what a user can act on."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {one_line(RuntimeError(lines[0] if lines else ''))}"


def _quiet_ray_logs() -> None:
    # Ray logs progress, retries and lost batches on stderr (ray.data sets its loggers up when
    # imported, hence after the import); the indexer reports all of it itself: a lost batch
    # as its files' failure records, a dead cluster as one line.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def connect(address: str | None, num_cpus: int | None = None) -> tuple[Any, bool]:
    """(ray, True when this call started Ray and must shut it down). ``address``: None (use
    the Ray already initialised in this process, else start a local one), "auto" (the
    cluster running on this machine), or "ray://HOST:10001" (a remote cluster's client port)."""
    ray = _ray()
    if ray.is_initialized():
        return ray, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray Client warns, then raises: the error says it all
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    except Exception as exc:  # noqa: BLE001 - Ray's connection errors vary by version
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ClusterError(f"cannot start or reach {where}: {_root_cause(exc)}") from None
    return ray, True


def build_library_ray(source: str | Path, out: str | Path, encoders, kind: str = "music", mode: str | None = None,
                      rebuild: bool = False, progress: ProgressFn | bool | None = None, *, address: str | None = None,
                      workers: int | None = None, files_per_batch: int = FILES_PER_BATCH, num_cpus: int | None = None,
                      hub_correction: bool = True, commit_every: int = COMMIT_EVERY,
                      commit_seconds: float = COMMIT_SECONDS, on_batch: Callable[[list[str]], None] | None = None,
                      quiet: bool = True) -> BuildReport:
    """``build_library`` with the embedding on Ray workers; same arguments and report.

    ``encoders``: the driver's ``Encoders`` (its bundle, device, precision and ``threads``
    are what each worker opens; ``threads`` None means 1 per worker); ``workers``: actors
    (None: the cluster's CPUs // threads); ``address``: see ``connect``; ``num_cpus``: CPUs
    of a local Ray started here (None: all); ``on_batch``: called in the worker with each
    batch's paths before it is embedded (tests kill workers with it). Raises what
    ``build_library`` raises, and ``ClusterError`` when Ray fails (progress is kept: run
    again to resume).
    """
    if files_per_batch < 1:
        raise InputError(f"files per batch must be >= 1, got {files_per_batch}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    threads = int(encoders.threads or 1)
    spec = WorkerSpec(str(Path(encoders.bundle.dir).resolve()), kind, mode, encoders.device.requested,
                      encoders.requested_precision, threads, encoders.selfcheck,
                      None if encoders.cache_dir is None else str(encoders.cache_dir), on_batch)
    _ray()  # not installed: say so now, before any scanning
    embedder = RayEmbedder(spec, files_per_batch, default_embedder(encoders, kind, mode), address=address,
                           workers=workers, num_cpus=num_cpus, quiet=quiet)
    try:
        return build_library(source, out, encoders, kind=kind, mode=mode, rebuild=rebuild, progress=progress,
                             embed_file=embedder, hub_correction=hub_correction, commit_every=commit_every,
                             commit_seconds=commit_seconds)
    except _EngineStopped as exc:
        raise ClusterError(f"the Ray cluster stopped serving the build ({exc}); the files embedded so far are "
                           f"kept: run the same command again to resume") from None
    finally:
        embedder.close()
