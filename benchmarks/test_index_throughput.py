"""Index throughput: seconds of music embedded per second of wall time, today's indexer
against the per-window path it replaced, in the same run (issue 12: >= 4x, and >= 40x real
time on AVX2 / >= 80x on AVX-512 VNNI).

``runtime.library.build_library`` indexes a folder of generated 90 s tracks (44.1 kHz
16-bit WAV) with the int8 audio encoder on 2 threads, from scratch each round
(a new library folder): decoding, windowing (5 s windows, 2.5 s hop), embedding, tagging and
the atomic write of the library, i.e. everything ``python -m runtime.index`` does.

- ``one-pass + read-ahead`` (what ships): the audio trunk runs once per 60 s chunk of a
  track and the head pools each window's slice; two probe windows per track go through
  the per-window graph too; the next track is decoded in a background thread.
- ``per-window`` (the path before, kept as the baseline): every overlapping 5 s window
  through the whole audio graph, decoding in line.

``test_one_pass_agreement_on_real_music`` measures how close the two paths' embeddings are
on real music (Debian's wesnoth-1.16-music, fetched with apt when it can be), the number
the README quotes.
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import SPINNING, THREADS, measure, synthetic_music_dir

N_TRACKS = 4
TRACK_SECONDS = 90.0
PATHS = ("one-pass + read-ahead", "per-window")


@pytest.fixture(scope="module")
def music_dir(bench_bundle_manifest):
    return synthetic_music_dir(N_TRACKS, TRACK_SECONDS, bench_bundle_manifest.audio.sample_rate)


def _encoders(bench_bundle, span: bool):
    from runtime.encoders import Encoders

    return Encoders(bench_bundle.path, device="cpu", precision="int8", threads=THREADS, spinning=SPINNING, span=span)


@pytest.mark.parametrize("path", PATHS)
def test_index_throughput(benchmark, tmp_path, music_dir, bench_bundle, path):
    from runtime.library import build_library

    one_pass = path == PATHS[0]
    enc = _encoders(bench_bundle, span=one_pass)
    # The baseline also decodes in line: a plain embed_file, without the read-ahead.
    embed_file = None if one_pass else (lambda p: enc.embed_track(p))
    reports = []

    def build():
        out = tmp_path / f"library{len(reports)}"
        reports.append(build_library(music_dir, out, enc, progress=False, embed_file=embed_file))

    benchmark.group = "index throughput"
    measure(benchmark, build, budget_s=20.0, min_rounds=2, max_rounds=5, kind="index", path=path, tracks=N_TRACKS,
            track_seconds=TRACK_SECONDS, precision="int8", bundle_size=bench_bundle.size)
    last = reports[-1]
    assert last.tracks == N_TRACKS and not last.failures
    # What the report divides by the median wall time.
    benchmark.extra_info["audio_seconds"] = last.seconds_embedded
    benchmark.extra_info["windows"] = last.windows
    stats = enc.span_stats
    benchmark.extra_info["one_pass_tracks"] = stats["span"] // max(1, len(reports))
    if stats["cosines"]:
        benchmark.extra_info["probe_cosine_mean"] = float(np.mean(stats["cosines"]))
    if one_pass and bench_bundle.info.get("audio_span") is None:
        benchmark.extra_info["note"] = "the bundle has no audio trunk: both paths embed window by window"


def test_one_pass_agreement_on_real_music(benchmark, bench_bundle):
    """Cosine between one-pass and per-window window embeddings on the tracks of Debian's
    wesnoth-1.16-music (first 60 s of each), through the runtime's own two paths."""
    from benchmarks.hubness import fetch_wesnoth
    from runtime.audio_preprocess import load_audio

    from runtime.audio_preprocess import window_starts
    from runtime.audio_span import SpanGeometry, agreement, span_embeddings

    try:
        music = fetch_wesnoth()
    except Exception as exc:  # noqa: BLE001 - no apt, no network: the measurement is skipped, said why
        pytest.skip(f"real music not available ({type(exc).__name__}: {exc})")
    if music is None:
        pytest.skip("real music not available (apt-get download wesnoth-1.16-music failed)")
    files = sorted(music.rglob("*.ogg"))
    one, per = _encoders(bench_bundle, True), _encoders(bench_bundle, False)
    pair = one._span_pair()
    if pair is None:
        pytest.skip("the bundle has no audio trunk and head (the export left them out): nothing to compare")
    m = one.bundle.manifest
    sr, win = m.audio.sample_rate, int(round(m.audio.window_seconds * m.audio.sample_rate))
    geo = SpanGeometry(m.audio_span.samples_per_step, m.audio_span.window_steps, m.audio_span.min_cosine)
    cos = []

    def compare():
        # The two paths' raw embeddings of every window (no probe, no fallback).
        cos.clear()
        for f in files[:12]:
            wave = load_audio(f, sr)[: 60 * sr]
            starts = window_starts(wave.shape[0], m.audio)
            if len(starts) < 2:
                continue
            a = span_embeddings(pair[0].run, pair[1].run, wave, starts, win, sr, geo)
            b = np.concatenate([per.encoder("audio").run(np.stack([wave[s:s + win] for s in starts[k:k + 8]]))
                                for k in range(0, len(starts), 8)])
            cos.extend(agreement(a, b).tolist())

    benchmark.group = "one-pass vs per-window on real music"
    measure(benchmark, compare, budget_s=1.0, min_rounds=1, max_rounds=1, warmup=False, kind="span_agreement",
            tracks=min(12, len(files)), bundle_size=bench_bundle.size)
    benchmark.extra_info.update(windows=len(cos), mean=float(np.mean(cos)), min=float(np.min(cos)),
                                p5=float(np.percentile(cos, 5)))
