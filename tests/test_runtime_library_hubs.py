"""Hubs and the approximate index (runtime/library/hubs.py, search_index.py): the centring
correction on a synthetic hub and in a built library, FAISS indexes built and saved at
index time (never at query time), kept across updates, with recall@10 recorded; and the
hub figures on real music (Debian's Wesnoth soundtrack; skipped where apt cannot fetch it)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime_fixtures as rf
from runtime_fixtures import enc, music, world  # noqa: F401  (fixtures)

from runtime.bundle import Bundle
from runtime.library import Library, build_library
from runtime.library.schema import GenerationManifest, RootRef, generation_name
from runtime.library.segments import NewRecord, write_segment
from runtime.library.storage import write_json_atomic


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def library_of(out, bundle_dir, pooled: np.ndarray, centre: bool = True):
    """A library holding exactly these pooled vectors (one window each), written through
    the segment writer and, with ``centre``, the indexer's own centring step."""
    from runtime.library.publishing import BuildRun, centre_entry

    b = Bundle.load(bundle_dir)
    seg_dir = out / "segments"
    seg_dir.mkdir(parents=True)
    recs = [NewRecord(f"t{i:03d}.wav", 0, 0, f"{i:064x}", "ok", duration=5.0, windows=v[None, :],
                      starts=np.zeros(1), pooled=v) for i, v in enumerate(pooled.astype(np.float16).astype(np.float32))]
    for r in recs:
        r.pooled = r.windows[0] = unit(r.windows[0])
    m = b.manifest
    ref = write_segment(seg_dir, 0, recs, kind="music", dim=b.embed_dim, bundle_fingerprint=b.fingerprint,
                        labels=m.label_set("moods"), genres=None, scale=m.logit_scales.audio_text)
    run = BuildRun(out, seg_dir, "music", b.embed_dim, b.fingerprint, b, centre, [], 1, "")
    spec, _ = centre_entry(run, [ref])
    run.close()
    gm = GenerationManifest(1, "music", b.fingerprint, m.model.name, b.embed_dim, "int8", RootRef(None, "/x"),
                            "t", "t", -60.0, 900.0, (ref,), 1, spec)
    write_json_atomic(out / generation_name(1), gm.to_dict())
    (out / "CURRENT").write_text(generation_name(1) + "\n")
    return out


def first_shares(scores: np.ndarray) -> np.ndarray:
    return np.bincount(np.argmax(scores, axis=1), minlength=scores.shape[1]) / len(scores)


# -- the correction ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centring_dethrones_an_off_cone_hub(world, tmp_path, seed):  # noqa: F811
    """Forty tracks in a narrow cone (mean pairwise cosine ~0.9, like real tracks in our
    audio tower) and one track off it; 300 diverse queries. By plain cosine the off-cone
    track comes first for several times its fair share; centred, no track does."""
    rng = np.random.default_rng(seed)
    d = rf.EMBED_DIM
    c0 = unit(rng.standard_normal(d))
    tracks = unit(c0 + 0.35 * rng.standard_normal((40, d)) / np.sqrt(d))  # deviations of norm ~0.35
    tracks[0] = unit(c0 + 1.2 * unit(rng.standard_normal(d)))  # the hub: off the cone
    queries = unit(rng.standard_normal((300, d))).astype(np.float32)
    with Library.open(library_of(tmp_path / "lib", world.bundle, tracks)) as lib:
        assert lib.centre is not None and np.allclose(lib.centre, lib.tracks.mean(0), atol=1e-6)
        plain = first_shares(lib.scores(queries, correct=False))
        centred = first_shares(lib.scores(queries))
        hits = lib.index.search(queries, 1)  # the index ranks by the same centred score
        assert np.array_equal(hits.ids[:, 0], np.argmax(lib.scores(queries), axis=1))
    fair = 1 / 40
    assert plain[0] == plain.max() and plain[0] > 4 * fair  # the hub
    assert centred[0] < 2 * fair and centred.max() < 3 * fair  # dethroned, and no new hub


def test_the_indexer_stores_the_centre_and_moves_it_without_rewriting_segments(world, tmp_path, enc):  # noqa: F811
    music = shutil.copytree(world.music, tmp_path / "music")
    out = tmp_path / "lib"
    build_library(music, out, enc, progress=False)
    with Library.open(out) as lib:
        c1 = lib.centre
        assert np.allclose(c1, np.mean(lib.tracks, axis=0), atol=1e-6) and lib.meta.hub_correction
        seg_files = [f for s in lib.manifest.segments for f in s.files]
    rf.write_extra_track(music / "new.wav", freq=150)
    build_library(music, out, enc, progress=False)
    with Library.open(out) as lib:
        assert not np.allclose(lib.centre, c1) and np.allclose(lib.centre, np.mean(lib.tracks, axis=0), atol=1e-6)
        assert lib.manifest.segments[0].files == tuple(seg_files)  # nothing per track was rewritten
        assert lib.manifest.hub.count == 6
    plain = tmp_path / "plain"
    build_library(music, plain, enc, progress=False, hub_correction=False)
    with Library.open(plain) as lib:
        q = enc.embed_images([world.pages["tall"]])
        assert lib.centre is None and lib.manifest.hub is None
        np.testing.assert_allclose(lib.scores(q), q @ lib.tracks.T, atol=1e-6)


def test_no_centre_for_fewer_than_three_tracks(world, tmp_path, enc):  # noqa: F811
    music = tmp_path / "two"
    music.mkdir()
    for name in ("short.wav", "a/noise.flac"):
        shutil.copy(world.music / name, music / name.split("/")[-1])
    build_library(music, tmp_path / "lib", enc, progress=False)
    with Library.open(tmp_path / "lib") as lib:
        assert lib.centre is None and len(lib) == 2


def test_a_damaged_centre_falls_back_to_plain_cosine(world, tmp_path, enc):  # noqa: F811
    lib_dir = shutil.copytree(world.library, tmp_path / "lib")
    d = json.loads((lib_dir / "gen-000001.json").read_text())
    (lib_dir / "segments" / d["hub"]["centre"]["name"]).write_bytes(b"garbage")
    with Library.open(lib_dir) as lib:
        q = enc.embed_images([world.pages["tall"]])
        assert lib.centre is None  # with a warning
        np.testing.assert_allclose(lib.scores(q), q @ lib.tracks.T, atol=1e-6)
        assert lib.verify()


# -- the approximate index ------------------------------------------------------------------------
@pytest.fixture()
def small_ann(monkeypatch):
    """Thresholds scaled down so a library of a few thousand rows gets (and uses) FAISS."""
    pytest.importorskip("faiss")
    from runtime.library import search_index

    monkeypatch.setattr(search_index, "ANN_BUILD_FROM", 1000)
    monkeypatch.setattr(search_index, "ANN_MIN_SEGMENT_ROWS", 500)
    monkeypatch.setattr(search_index, "FAISS_THRESHOLD", 1000)


def test_faiss_is_built_at_index_time_kept_across_updates_and_never_built_at_query_time(
        world, tmp_path, enc, small_ann, monkeypatch):  # noqa: F811
    from runtime.search import FaissIndex

    n = 3000
    music = rf.synthetic_music_files(tmp_path / "music", n)
    lib_dir = rf.synthetic_library(tmp_path / "lib", world.bundle, n, windows_per_track=2, music_root=music,
                                   centre=True, ann=True)
    with Library.open(lib_dir) as lib:
        (seg,) = lib.manifest.segments
        assert seg.ann is not None and (lib_dir / "segments" / seg.ann.name).is_file()
        first_ann, first_recall = seg.ann, lib.meta.ann_recall_at_10
    assert first_recall is not None and first_recall >= 0.9

    # the query path loads the saved index and never builds one
    monkeypatch.setattr(FaissIndex, "build", classmethod(lambda *a, **k: pytest.fail("built at query time")))
    q = unit(np.random.default_rng(5).standard_normal((50, rf.EMBED_DIM))).astype(np.float32)
    with Library.open(lib_dir) as lib:
        index = lib.index
        assert index.use_ann and index.parts[0].ann is not None
        approx = index.search(q, 10).ids
        exact = np.argsort(-lib.scores(q), axis=1)[:, :10]
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
        assert recall >= 0.9
        ann_scores = index.search(q, 10).scores  # candidates are rescored exactly
        np.testing.assert_allclose(ann_scores, np.take_along_axis(lib.scores(q), approx, 1), atol=1e-5)
    monkeypatch.undo()

    # an update: the big segment keeps its index (no rebuild); recall is measured again
    from runtime.library import search_index

    monkeypatch.setattr(search_index, "ANN_BUILD_FROM", 1000)
    monkeypatch.setattr(search_index, "ANN_MIN_SEGMENT_ROWS", 500)
    monkeypatch.setattr(search_index, "FAISS_THRESHOLD", 1000)
    built = []
    real_build = search_index.build_ann
    monkeypatch.setattr("runtime.library.publishing.build_ann", lambda *a: (built.append(a), real_build(*a)))
    rf.write_extra_track(music / "zz.wav")
    report = build_library(music, lib_dir, enc, progress=False)
    assert built == [] and report.ann_recall_at_10 is not None
    with Library.open(lib_dir) as lib:
        assert lib.manifest.segments[0].ann == first_ann and len(lib.manifest.segments) == 2
        assert lib.manifest.ann.recall_at_10 == report.ann_recall_at_10

    # an index whose recorded recall is too low is not used: exact search, and a warning
    monkeypatch.setattr(search_index, "MIN_ANN_RECALL", 1.01)
    with Library.open(lib_dir) as lib:
        assert not lib.index.use_ann
        assert np.array_equal(lib.index.search(q, 10).ids, np.argsort(-lib.scores(q), axis=1)[:, :10])
    monkeypatch.setattr(search_index, "MIN_ANN_RECALL", 0.9)

    # without faiss at query time: exact search, same answers
    monkeypatch.setitem(sys.modules, "faiss", None)
    with Library.open(lib_dir) as lib:
        assert not lib.index.use_ann
        assert np.array_equal(lib.index.search(q, 10).ids, np.argsort(-lib.scores(q), axis=1)[:, :10])


def test_a_library_indexed_with_another_kind_is_searched_and_upgraded_at_its_next_update(
        world, tmp_path, enc, small_ann, monkeypatch):  # noqa: F811
    """Libraries from before pq-refine carry HNSW indexes: they still load and answer, and the
    next update replaces them with the current kind (the kind is part of the index key)."""
    from runtime.library import search_index

    n = 3000
    music = rf.synthetic_music_files(tmp_path / "music", n)
    monkeypatch.setattr(search_index, "ANN_KIND", "hnsw")
    lib_dir = rf.synthetic_library(tmp_path / "lib", world.bundle, n, windows_per_track=1, music_root=music,
                                   centre=True, ann=True)
    monkeypatch.setattr(search_index, "ANN_KIND", "pq-refine")
    q = unit(np.random.default_rng(7).standard_normal((20, rf.EMBED_DIM))).astype(np.float32)
    with Library.open(lib_dir) as lib:
        assert lib.manifest.ann.kind == "hnsw" and lib.index.parts[0].ann.kind == "hnsw"
        old_name = lib.manifest.segments[0].ann.name
        exact = np.argsort(-lib.scores(q), axis=1)[:, :10]
        if lib.index.use_ann:  # an HNSW over 3,000 rows may or may not record 0.95
            got = lib.index.search(q, 10).ids
            assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(got, exact)]) >= 0.9
    rf.write_extra_track(music / "zz.wav")
    report = build_library(music, lib_dir, enc, progress=False)
    with Library.open(lib_dir) as lib:
        big = max(lib.manifest.segments, key=lambda s: s.vectors)
        assert lib.manifest.ann.kind == "pq-refine" and big.ann.name != old_name
        assert big.ann_key.startswith("pq-refine-") and big.ann.name.endswith(".faiss")
        assert lib.index.use_ann and lib.index.parts[0].ann.kind == "pq-refine"
        assert report.ann_recall_at_10 >= 0.95


def test_deleted_tracks_never_come_back_through_the_approximate_index(world, tmp_path, enc, small_ann):  # noqa: F811
    """A third of the tracks deleted (a sidecar, the index kept): the index still proposes
    their rows, the search must drop them and still find the exact top-10 of the rest."""
    n = 3000
    music = rf.synthetic_music_files(tmp_path / "music", n)
    lib_dir = rf.synthetic_library(tmp_path / "lib", world.bundle, n, windows_per_track=1, music_root=music,
                                   centre=True, ann=True)
    for i in range(0, n, 3):
        (music / rf.synthetic_track_name(i)).unlink()
    build_library(music, lib_dir, enc, progress=False)
    q = unit(np.random.default_rng(6).standard_normal((30, rf.EMBED_DIM))).astype(np.float32)
    with Library.open(lib_dir) as lib:
        (seg,) = lib.manifest.segments
        assert seg.ann is not None and seg.deleted is not None and len(lib) == n - len(range(0, n, 3))
        index = lib.index
        assert index.use_ann and len(index.parts[0].deleted) == len(range(0, n, 3))
        got = index.search(q, 10)
        exact = np.argsort(-lib.scores(q), axis=1)[:, :10]
        paths = {lib.track(int(r)).path for r in got.ids.ravel()}
    assert all(int(Path(p).stem[5:]) % 3 for p in paths)  # no deleted track
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(got.ids, exact)]) >= 0.95


def test_a_merge_extends_the_largest_members_index_instead_of_rebuilding(world, tmp_path, enc, small_ann,  # noqa: F811
                                                                       monkeypatch):
    """Ten indexed segments of 300 tracks are one tier: adding a track merges them, and the
    merged segment's approximate index is the first member's, extended with the other rows."""
    from runtime.library import search_index

    monkeypatch.setattr(search_index, "ANN_MIN_SEGMENT_ROWS", 250)
    music = rf.synthetic_music_files(tmp_path / "music", 3000)
    lib_dir = rf.synthetic_library(tmp_path / "lib", world.bundle, 3000, windows_per_track=1, music_root=music,
                                   segment_tracks=300, centre=True, ann=True)
    with Library.open(lib_dir) as lib:
        assert len(lib.manifest.segments) == 10 and all(s.ann is not None for s in lib.manifest.segments)
    built = []
    monkeypatch.setattr("runtime.library.publishing.build_ann", lambda *a: built.append(a))
    rf.write_extra_track(music / "zz.wav")
    report = build_library(music, lib_dir, enc, progress=False)
    assert built == []  # no graph built from scratch
    with Library.open(lib_dir) as lib:
        merged = max(lib.manifest.segments, key=lambda s: s.vectors)
        assert merged.vectors == 3000 and merged.ann is not None and len(lib.manifest.segments) == 2
        assert lib.index.parts[0].ann is not None and len(lib.index.parts[0].ann) == 3000
    assert report.ann_recall_at_10 >= 0.9


# -- real music -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_hubs_on_real_music():
    """Debian's wesnoth-1.16-music indexed with the demo bundle (minutes the first time,
    then cached outside the repository): silence.ogg is listed silent, and centring never
    raises the largest first-place share, lowers it somewhere, and spreads first places
    over more tracks on every query set. (With the demo model of issue 13 it lowered the
    share on every set; the retrained demo's hubs are milder on pages, 25 % before and
    after, and centring halves the texts' 25 %: README, "Hubs".) Skipped where apt cannot
    fetch."""
    from benchmarks import hubness

    music = hubness.fetch_wesnoth()
    if music is None:
        pytest.skip("apt-get cannot fetch wesnoth-1.16-music here")
    out = hubness.measure(music)
    print("\n" + hubness.markdown(out))
    assert out["silent"] == ["silence.ogg"]
    lower = 0
    for qset, rows in out["table"].items():
        plain = rows["loudness floor, plain cosine"]
        centred = rows["loudness floor, centred (as indexed)"]
        assert centred["top_share"] <= plain["top_share"], qset
        lower += centred["top_share"] < plain["top_share"]
        assert centred["distinct_first"] > plain["distinct_first"], qset
    assert lower >= 1
