"""Peak resident memory of a query process, per library size.

The same fresh child as the cold-start benchmark (runtime only, int8, 2 threads, two
pages against the library) reports its peak RSS (``VmHWM``, or ``ru_maxrss``) and, at
exit, how much of its RSS is anonymous memory (model weights, ORT arenas, Python) and how
much is the library's memory-mapped file pages. Those file pages count in RSS but belong
to the page cache and are dropped under pressure, so both are reported: at 1M tracks the
exact search touches all 4 GB of rows. The benchmark's time is the child's run time.
"""
from __future__ import annotations

import pytest

from benchmarks.conftest import LIBRARY_SIZES, measure, run_query_child


@pytest.mark.parametrize("n", LIBRARY_SIZES, ids=[str(n) for n in LIBRARY_SIZES])
def test_query_process_memory(benchmark, bench_bundle, libraries, page_path, n):
    lib = libraries.path(n)
    seen = []
    benchmark.group = "query process memory"
    # One round: the peak is a property of the run, not a noisy timing to average.
    measure(benchmark, lambda: seen.append(run_query_child(bench_bundle.path, lib, page_path)), warmup=False,
            min_rounds=1, max_rounds=1, kind="memory", tracks=n, precision="int8", bundle_size=bench_bundle.size)
    child = seen[-1]
    benchmark.extra_info.update({k: child[k] for k in ("peak_rss", "rss_end", "rss_anon_end", "rss_file_end")})
    assert child["peak_rss"] > 0 and not child["torch_imported"]
