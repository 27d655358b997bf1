"""Index throughput: seconds of music embedded per second of wall time (target: 60x).

``runtime.library.build_library`` indexes a folder of generated 30 s tracks (44.1 kHz
16-bit WAV) with the int8 audio encoder on 2 threads, from scratch each round
(a new library folder): decoding, windowing (5 s windows, 2.5 s hop), embedding, tagging and
the atomic write of the library, i.e. everything ``python -m runtime.index`` does.
"""
from __future__ import annotations

import pytest

from benchmarks.conftest import measure, synthetic_music_dir

N_TRACKS = 4
TRACK_SECONDS = 30.0


@pytest.fixture(scope="module")
def music_dir(bench_bundle_manifest):
    return synthetic_music_dir(N_TRACKS, TRACK_SECONDS, bench_bundle_manifest.audio.sample_rate)


def test_index_throughput(benchmark, tmp_path, music_dir, encoders, bench_bundle):
    from runtime.library import build_library

    enc = encoders.get("int8")
    reports = []

    def build():
        # A new folder each round: on an existing library, rebuild=True re-embeds nothing (the
        # builder still matches unchanged files by path, size and mtime), so rounds after the
        # first would time a no-op.
        reports.append(build_library(music_dir, tmp_path / f"library-{len(reports)}", enc, progress=False))

    benchmark.group = "index throughput"
    measure(benchmark, build, budget_s=12.0, min_rounds=2, max_rounds=5, kind="index", tracks=N_TRACKS,
            track_seconds=TRACK_SECONDS, precision="int8", bundle_size=bench_bundle.size)
    last = reports[-1]
    assert last.tracks == N_TRACKS and not last.failures
    # What the report divides by the median wall time.
    benchmark.extra_info["audio_seconds"] = last.seconds_embedded
    benchmark.extra_info["windows"] = last.windows
