"""Index throughput: seconds of music embedded per second of wall time (target: 60x).

``runtime.library.build_library`` indexes a folder of generated 30 s tracks (44.1 kHz
16-bit WAV) with the int8 audio encoder on 2 threads, from scratch each round
(``rebuild=True``): decoding, windowing (5 s windows, 2.5 s hop), embedding, tagging and
the atomic write of the library, i.e. everything ``python -m runtime.index`` does.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from benchmarks.conftest import CACHE, DATA_VERSION, measure, synthetic_music

N_TRACKS = 4
TRACK_SECONDS = 30.0


@pytest.fixture(scope="module")
def music_dir(bench_bundle_manifest):
    import soundfile as sf

    sr = bench_bundle_manifest.audio.sample_rate
    folder = CACHE / f"music-{N_TRACKS}x{TRACK_SECONDS:g}s-{sr}-v{DATA_VERSION}"
    if not folder.is_dir():
        tmp = CACHE / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i in range(N_TRACKS):
            x = synthetic_music(np.random.default_rng(100 + i), TRACK_SECONDS, sr)
            sf.write(str(tmp / f"track{i}.wav"), x, sr, subtype="PCM_16")
        os.replace(tmp, folder)
    return folder


def test_index_throughput(benchmark, tmp_path, music_dir, encoders, bench_bundle):
    from runtime.library import build_library

    enc = encoders.get("int8")
    out = tmp_path / "library"
    reports = []

    def build():
        reports.append(build_library(music_dir, out, enc, rebuild=True, progress=False))

    benchmark.group = "index throughput"
    measure(benchmark, build, budget_s=12.0, min_rounds=2, max_rounds=5, kind="index", tracks=N_TRACKS,
            track_seconds=TRACK_SECONDS, precision="int8", bundle_size=bench_bundle.size)
    last = reports[-1]
    assert last.tracks == N_TRACKS and not last.failures
    # What the report divides by the median wall time.
    benchmark.extra_info["audio_seconds"] = last.seconds_embedded
    benchmark.extra_info["windows"] = last.windows
