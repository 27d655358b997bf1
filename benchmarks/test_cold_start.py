"""Cold start: a fresh Python process loads the bundle and answers its first query.

Timed from outside (process start to exit), the way an app or ``python -m runtime.query``
pays it: interpreter start, ``import runtime``, ``Bundle.load``, the image graph's sha256
and session creation, the first page (decode, encode, search 100,000 tracks) and a second
page. The child reports its own phases, which the report shows beside the total. The OS
page cache is warm after the first round (the bundle was just read), as it is for an app
started twice; a truly cold disk adds the time to read the int8 image graph once.

The runtime's cache folder starts empty (a fresh one for this test): the first start hashes
the graph, optimises it, runs its self-check and remembers all three; the rounds after it
are the starts an app makes every day. Both are reported.
"""
from __future__ import annotations

import statistics

from benchmarks.conftest import measure, run_query_child

LIBRARY_TRACKS = 100_000


def test_cold_start(benchmark, bench_bundle, libraries, page_path, tmp_path):
    lib = libraries.path(LIBRARY_TRACKS)
    phases = []

    def start_and_query():
        phases.append(run_query_child(bench_bundle.path, lib, page_path, cache=tmp_path / "cache"))

    benchmark.group = "cold start: new process, load bundle, first query"
    measure(benchmark, start_and_query, budget_s=10.0, min_rounds=3, max_rounds=5, kind="cold_start",
            tracks=LIBRARY_TRACKS, precision="int8", bundle_size=bench_bundle.size)
    timed = phases[1:]  # the first child was the warm-up
    for key in ("import_s", "bundle_load_s", "first_query_s", "second_query_s", "total_s"):
        benchmark.extra_info[key] = statistics.median(p[key] for p in timed)
    benchmark.extra_info["empty_cache_total_s"] = phases[0]["total_s"]
    benchmark.extra_info["empty_cache_first_query_s"] = phases[0]["first_query_s"]
    assert not any(p["torch_imported"] for p in phases), "the query process imported torch"
