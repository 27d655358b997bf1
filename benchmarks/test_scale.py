"""Past one machine (issue 16): indexing on a local Ray cluster with 1 and 2 workers, and
one query against a library served locally vs from Qdrant's embedded local mode.

Ray: ``build_library_ray`` indexes ``RAY_TRACKS`` generated 30 s clips from scratch each
round (a new library folder each time) on a local Ray started with ``THREADS`` CPUs (2), workers of one
intra-op thread each, one file per batch. Each round includes starting the Ray Data
pipeline and the workers' sessions (what every indexing run pays, reported as "startup"),
not Ray itself. The report gives audio seconds per wall second for each worker count, with
and without the startup, and their ratios: 2 workers
on 2 cores can at best double it, less what the driver (hashing, writing segments) and
Ray's own processes take from the same two cores.

Query: ``Retriever.search_tracks`` (search plus each hit's record and best window, what an
app pays after embedding its page) for one random unit query, top-10, against synthetic
libraries with the hub correction's centre (``STORE_SIZES`` tracks, 8 windows each), first
as the local library (exact search over the memory-mapped rows), then published to Qdrant's
embedded local mode (which is exact too: brute force in numpy, inside the process). A Qdrant
server adds a network round trip and searches with HNSW; that is not measured here. Recall@10
of the collection against the library's exact search is what ``publish_library`` measured.
"""
from __future__ import annotations

import logging
import os
import statistics
import time

import numpy as np
import pytest

from benchmarks.conftest import THREADS, measure, median_seconds, synthetic_music_dir

RAY_TRACKS = 32
RAY_SECONDS = 30.0
STORE_SIZES = (1_000, 10_000)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray.data", reason="pip install 'manga-music[ray]'")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=THREADS, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_index_throughput(benchmark, ray_cluster, bench_bundle, bench_bundle_manifest, tmp_path, workers):
    from runtime.encoders import Encoders
    from runtime.library.ray_engine import build_library_ray

    music = synthetic_music_dir(RAY_TRACKS, RAY_SECONDS, bench_bundle_manifest.audio.sample_rate)
    enc = Encoders(bench_bundle.path, device="cpu", precision="int8", threads=1)
    reports, startups = [], []
    first_batch = _FirstBatch(tmp_path / "batches.log")

    def build():
        # A new folder each round: on an existing library, rebuild=True re-embeds nothing
        # (the builder still matches unchanged files), and a round would time a no-op.
        out = tmp_path / f"library-{len(reports)}"
        t0 = time.time()
        reports.append(build_library_ray(music, out, enc, progress=False, workers=workers, files_per_batch=1,
                                         on_batch=first_batch))
        startups.append(first_batch.take() - t0)

    benchmark.group = "ray index throughput"
    measure(benchmark, build, budget_s=20.0, min_rounds=2, max_rounds=2, kind="ray_index", workers=workers,
            threads_per_worker=1, cluster_cpus=THREADS, tracks=RAY_TRACKS, track_seconds=RAY_SECONDS,
            precision="int8", bundle_size=bench_bundle.size)
    last = reports[-1]
    assert last.tracks == RAY_TRACKS and not last.failures
    benchmark.extra_info["audio_seconds"] = last.seconds_embedded
    # Until the first batch starts: the pipeline, the workers and their sessions (and the
    # driver's scan); the rest of a round is embedding and writing.
    benchmark.extra_info["startup_s"] = statistics.median(startups[1:])  # the warm-up round is not counted


class _FirstBatch:
    """An ``on_batch`` hook that appends the wall time each batch starts (any worker) to a file."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, paths) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.time()}\n")

    def take(self) -> float:
        """The earliest start since the last call."""
        with open(self.path) as f:
            first = min(float(x) for x in f.read().split())
        os.remove(self.path)
        return first


class Stores:
    """Per size: a synthetic library with a centre, and the same published to Qdrant's
    embedded mode (built once per module, in a temporary folder)."""

    def __init__(self, bundle, root):
        self.bundle, self.root, self._made = bundle, root, {}

    def get(self, n: int) -> tuple:
        if n not in self._made:
            from runtime.library.qdrant_publish import publish_library
            from tests.runtime_fixtures import synthetic_library

            lib = synthetic_library(self.root / f"lib-{n}", self.bundle.path, n, windows_per_track=8, seed=n,
                                    centre=True)
            url = f"qdrant+local://{self.root}/store-{n}/tracks"
            report = publish_library(lib, url, batch_points=256, recall_queries=200)
            self._made[n] = (lib, url, report)
        return self._made[n]


@pytest.fixture(scope="module")
def stores(bench_bundle, tmp_path_factory):
    pytest.importorskip("qdrant_client", reason="pip install 'manga-music[qdrant]'")
    return Stores(bench_bundle, tmp_path_factory.mktemp("stores"))


@pytest.mark.parametrize("backend", ["local", "qdrant-local"])
@pytest.mark.parametrize("n", STORE_SIZES)
def test_query_local_vs_qdrant(benchmark, stores, bench_bundle, n, backend):
    from runtime.retrieval import Retriever

    lib, url, report = stores.get(n)
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, bench_bundle.info["embed_dim"])).astype(np.float32)
    q /= np.linalg.norm(q)
    with Retriever(bundle=bench_bundle.path, library=lib if backend == "local" else url, device="cpu") as r:
        first = r.search_tracks(q, 10)[0]  # opens the library (maps rows / loads the collection): not timed
        benchmark.group = "query: search + hits, local vs Qdrant embedded"
        hits = measure(benchmark, lambda: r.search_tracks(q, 10)[0], budget_s=3.0, min_rounds=5, max_rounds=200,
                       kind="store_query", tracks=n, backend=backend, windows_per_track=8,
                       recall_at_10=None if backend == "local" else report.recall_at_10,
                       publish_s=None if backend == "local" else report.seconds, bundle_size=bench_bundle.size)
        index = r.library.index
        benchmark.extra_info["search_only_s"] = median_seconds(lambda: index.search(q, 10), 20)
    assert [h.path for h in hits] == [h.path for h in first] and len(hits) == 10
