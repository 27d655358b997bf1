"""The music library (runtime/library/, runtime/index.py) and search (runtime/search.py):
format, contents, tags, incremental updates, failures, bundle checks, validation of every
library file, and the search indexes. Segments, readers and resuming are in
test_runtime_library_segments.py; hostile inputs in test_runtime_library_bad_inputs.py;
hubs and the approximate index in test_runtime_library_hubs.py."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime_fixtures as rf
from runtime_fixtures import enc, music, world  # noqa: F401  (fixtures)

from runtime.bundle import Bundle
from runtime.encoders import Encoders, l2_normalise
from runtime.errors import InputError, LibraryError
from runtime.library import Library, build_library, softmax
from runtime.library.schema import RECORD_COLUMNS, GenerationManifest
from runtime.retrieval import Retriever
from runtime.search import ExactIndex, FaissIndex, make_index, top_k


def gens(lib_dir):
    return sorted(p.name for p in lib_dir.iterdir() if p.name.startswith("gen-"))


def state(lib_dir):
    with Library.open(lib_dir) as lib:
        return {i.relpath: i.sha256 for i in lib.all_tracks()}, np.array(lib.tracks)


def manifest_of(lib_dir) -> dict:
    return json.loads((lib_dir / (lib_dir / "CURRENT").read_text().strip()).read_text())


# -- format and contents ------------------------------------------------------------------------
def test_library_holds_every_track_with_windows_pooled_and_moods(world, enc):  # noqa: F811
    lib = Library.open(world.library, bundle=enc.bundle)
    infos = list(lib.all_tracks())
    assert sorted(i.relpath for i in infos) == sorted(
        ["a/sine_stereo.wav", "a/noise.flac", "b/chirp.ogg", "b/deep/square.mp3", "short.wav"])  # no .hidden, no .txt
    assert [i.row for i in infos] == list(range(len(lib)))
    assert lib.meta.kind == "music" and lib.meta.bundle_fingerprint == enc.bundle.fingerprint
    assert lib.meta.precision == "int8" and lib.meta.embed_dim == rf.EMBED_DIM
    assert lib.tracks.dtype == np.float32 and lib.tracks.shape == (5, rf.EMBED_DIM)
    moods = enc.bundle.manifest.label_set("moods")
    scale = enc.bundle.manifest.logit_scales.audio_text
    for info in infos:
        te = enc.embed_track(info.path)
        assert info.window_count == len(te.starts)
        np.testing.assert_allclose(lib.tracks[info.row], te.pooled, atol=1e-5)
        np.testing.assert_allclose(lib.pooled(info.row), te.pooled, atol=1e-5)
        win, starts = lib.windows_of(info.row)
        assert win.dtype == np.float32 and win.shape == te.windows.shape
        np.testing.assert_allclose(win, te.windows, atol=2e-3)  # float16 storage
        np.testing.assert_allclose(starts, te.starts)
        assert info.duration == pytest.approx(te.duration, abs=1e-3)
        expected = softmax(scale * (moods.embeddings @ te.pooled))
        got = dict(info.moods)
        assert list(got) == list(moods.classes)
        np.testing.assert_allclose([got[c] for c in moods.classes], expected, atol=1e-5)
        assert info.top_mood == moods.classes[int(np.argmax(expected))]
        assert 0 < max(expected) < 1  # a real distribution, not a one-hot
    lib.close()


def test_files_on_disk_are_what_the_docs_say(world):  # noqa: F811
    cur = (world.library / "CURRENT").read_text().strip()
    assert cur == "gen-000001.json"
    d = manifest_of(world.library)
    m = GenerationManifest.from_dict(d, cur)  # the writer produces what the reader accepts
    assert d["format"] == "manga-music-library" and d["schema_version"] == 2 and d["window_dtype"] == "float16"
    assert m.kind == "music" and m.loudness_floor_dbfs == -60.0 and m.hub is not None and m.hub.method == "track-centring"
    assert m.root.absolute == str(world.music.resolve()) and m.root.relative == "../music"
    seg_dir = world.library / "segments"
    for ref in m.segments:
        for f in ref.all_files():
            assert (seg_dir / f.name).stat().st_size == f.bytes
        db = sqlite3.connect(seg_dir / ref.file("db").name)
        assert tuple(r[1] for r in db.execute("PRAGMA table_info(records)")) == RECORD_COLUMNS
        assert json.loads(db.execute("SELECT moods FROM records WHERE status = 'ok' LIMIT 1").fetchone()[0])
        db.close()
        assert np.load(seg_dir / ref.file("pooled").name).dtype == np.float32
        assert np.load(seg_dir / ref.file("windows").name).dtype == np.float16
    with Library.open(world.library) as lib:
        assert lib.verify() == []


def test_pages_index_has_genres_and_moods(world, enc):  # noqa: F811
    idx = Library.open(world.pages_index, bundle=enc.bundle)
    assert idx.kind == "pages" and len(idx) == len(world.pages) and idx.manifest.hub is None
    info = idx.find(world.pages["tall"])
    assert info is not None and info.window_count == 1 and info.duration is None
    assert len(info.genres) == 12 and sum(p for _, p in info.genres) == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(idx.tracks[info.row], enc.embed_images([world.pages["tall"]])[0], atol=1e-5)
    idx.close()


# -- where paths start ---------------------------------------------------------------------------------
def test_library_moved_with_its_music_still_resolves(world, tmp_path, enc):  # noqa: F811
    music = shutil.copytree(world.music, tmp_path / "m1")
    build_library(music, music / ".lib", enc, progress=False)
    moved = music.rename(tmp_path / "m2")
    with Library.open(moved / ".lib") as lib:
        assert lib.meta.root == moved.resolve()
        assert all(i.path.is_file() for i in lib.all_tracks())


def test_a_root_named_with_a_pipe_resolves(world, tmp_path, enc):  # noqa: F811
    """The old "REL|ABS" root encoding split 'my|music' in two; the root is JSON now."""
    music = shutil.copytree(world.music, tmp_path / "my|music")
    build_library(music, tmp_path / "lib", enc, progress=False)
    with Library.open(tmp_path / "lib") as lib:
        assert lib.meta.root == music.resolve()
        assert all(i.path.is_file() for i in lib.all_tracks()) and len(lib) == 5
    with Retriever(bundle=world.bundle, library=tmp_path / "lib", device="cpu", threads=1) as r:
        assert all(os.path.isfile(t.path) for t in r.query(world.pages["tall"], top_k=5).tracks)


def test_root_across_windows_drives_is_stored_absolute(world, tmp_path, enc, monkeypatch):  # noqa: F811
    """os.path.relpath raises ValueError across Windows drives: the root is then stored
    absolute only, decided before any embedding (it used to fail after all the work)."""
    music = shutil.copytree(world.music, tmp_path / "C" / "music")
    real = os.path.relpath

    def relpath(path, start=os.curdir):
        drive = lambda p: Path(p).resolve().relative_to(tmp_path.resolve()).parts[0]  # noqa: E731
        if drive(path) != drive(start):
            raise ValueError("path is on mount 'C:', start on mount 'D:'")
        return real(path, start)
    monkeypatch.setattr("runtime.library.builder.os.path.relpath", relpath)
    report = build_library(music, tmp_path / "D" / "lib", enc, progress=False)
    assert report.tracks == 5
    root = manifest_of(tmp_path / "D" / "lib")["root"]
    assert root == {"relative": None, "absolute": str(music.resolve())}
    with Library.open(tmp_path / "D" / "lib") as lib:
        assert lib.meta.root == music.resolve() and all(i.path.is_file() for i in lib.all_tracks())


# -- incremental -------------------------------------------------------------------------------
def test_incremental_updates(music, tmp_path, enc):
    out = tmp_path / "lib"
    r1 = build_library(music, out, enc, progress=False)
    assert (r1.tracks, r1.new, r1.unchanged, r1.generation, r1.published) == (5, 5, 0, 1, True)
    paths1, tracks1 = state(out)

    embedded = []
    r2 = build_library(music, out, enc, progress=False, on_file=embedded.append)
    assert embedded == [] and (r2.unchanged, r2.new, r2.changed) == (5, 0, 0)
    assert (r2.published, r2.generation, r2.bytes_written) == (False, 1, 0)  # a no-op writes nothing
    paths2, tracks2 = state(out)
    assert paths2 == paths1 and np.array_equal(tracks1, tracks2)

    rf.write_extra_track(music / "a" / "sine_stereo.wav", seconds=3.0, freq=220)  # changed content
    (music / "a" / "noise.flac").unlink()  # deleted
    rf.write_extra_track(music / "new.wav")  # added
    (music / "b" / "chirp.ogg").rename(music / "b" / "chirp_renamed.ogg")  # moved: same bytes
    embedded.clear()
    r3 = build_library(music, out, enc, progress=False, on_file=embedded.append)
    assert sorted(p.name for p in embedded) == ["new.wav", "sine_stereo.wav"]  # the move is not re-embedded
    assert (r3.new, r3.changed, r3.moved, r3.removed, r3.unchanged, r3.tracks) == (1, 1, 1, 1, 2, 5)
    assert r3.published and r3.generation == 2
    paths3, _ = state(out)
    assert "a/noise.flac" not in paths3 and "b/chirp_renamed.ogg" in paths3
    assert paths3["b/chirp_renamed.ogg"] == paths1["b/chirp.ogg"]
    assert paths3["a/sine_stereo.wav"] != paths1["a/sine_stereo.wav"]
    assert gens(out) == ["gen-000002.json"]  # the old generation is collected (no reader holds it)
    # a touched file (same bytes, new mtime) reuses its embeddings
    os.utime(music / "new.wav", ns=(1, 1))
    embedded.clear()
    r4 = build_library(music, out, enc, progress=False, on_file=embedded.append)
    assert embedded == [] and r4.unchanged == 5 and r4.published  # its record's mtime changed
    # --rebuild embeds every file again (nothing reused), and publishes a new generation
    embedded.clear()
    r5 = build_library(music, out, enc, progress=False, on_file=embedded.append, rebuild=True)
    assert len(embedded) == 5 and r5.published and r5.tracks == 5 and r5.generation == r4.generation + 1
    assert state(out)[0].keys() == paths3.keys()


def test_unreadable_and_silent_files_are_recorded_and_skipped(music, tmp_path, world, enc):  # noqa: F811
    for key in ("text_as_mp3", "silent_audio", "empty_audio"):
        shutil.copy(world.bad[key], music / world.bad[key].name)
    out = tmp_path / "lib"
    report = build_library(music, out, enc, progress=False)
    assert report.tracks == 5
    reasons = {f.path.rsplit("/", 1)[-1]: f.reason for f in report.failures}
    assert set(reasons) == {"lyrics.mp3", "empty.wav"}
    assert "no samples" in reasons["empty.wav"] and all("\n" not in r for r in reasons.values())
    assert [s.path.rsplit("/", 1)[-1] for s in report.silent] == ["silent.wav"]
    assert "silent" in report.silent[0].reason
    with Library.open(out) as lib:
        assert {f.path.rsplit("/", 1)[-1] for f in lib.failures()} == set(reasons)
        assert [s.path for s in lib.silent()] == [s.path for s in report.silent]
        assert lib.find(music / "silent.wav") is None  # listed, never ranked
    tried = []
    again = build_library(music, out, enc, progress=False, on_file=tried.append)
    assert tried == [] and len(again.failures) == 2 and len(again.silent) == 1  # not retried until they change
    assert not again.published


def test_nothing_indexable_is_an_input_error_and_leaves_library_alone(world, tmp_path, enc):  # noqa: F811
    lib = shutil.copytree(world.library, tmp_path / "lib")
    before = state(lib)
    with pytest.raises(InputError, match="no audio files found"):
        build_library(world.bad["no_audio_dir"], lib, enc, progress=False)
    bad = tmp_path / "only_bad"
    bad.mkdir()
    shutil.copy(world.bad["text_as_mp3"], bad)
    with pytest.raises(InputError, match="none of the 1 files could be indexed .*lyrics.mp3"):
        build_library(bad, lib, enc, progress=False, rebuild=True)
    after = state(lib)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    assert gens(lib) == ["gen-000001.json"]


def test_refuses_to_write_into_a_foreign_folder(music, tmp_path, enc):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a manga-music library"):
        build_library(music, foreign, enc, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_an_old_format_library_is_refused_for_reading_and_rebuilt_by_the_indexer(music, tmp_path, enc):
    out = tmp_path / "lib"
    (out / "gen-000003").mkdir(parents=True)  # format 1: a folder per generation
    (out / "gen-000003" / "library.sqlite").write_bytes(b"old")
    (out / "CURRENT").write_text("gen-000003\n")
    with pytest.raises(LibraryError, match="older version .* re-run `python -m runtime.index"):
        Library.open(out)
    report = build_library(music, out, enc, progress=False)
    assert report.tracks == 5 and report.generation == 4
    assert not (out / "gen-000003").exists() and gens(out) == ["gen-000004.json"]


# -- bundles -------------------------------------------------------------------------------------
def test_library_from_another_bundle_is_refused(world, tmp_path, music):  # noqa: F811
    other_dir = rf.write_tiny_bundle(tmp_path / "other", seed=5)
    other = Bundle.load(other_dir)
    with pytest.raises(LibraryError, match="built with another bundle"):
        Library.open(world.library, bundle=other)
    out = shutil.copytree(world.library, tmp_path / "lib")
    other_enc = Encoders(other, device="cpu", threads=1)
    with pytest.raises(LibraryError, match="pass --rebuild"):
        build_library(music, out, other_enc, progress=False)
    build_library(music, out, other_enc, progress=False, rebuild=True)
    Library.open(out, bundle=other).close()


# -- validation: damaged and tampered libraries ------------------------------------------------------
def _edit_manifest(lib, change):
    path = lib / (lib / "CURRENT").read_text().strip()
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("damage, message", [
    (lambda lib: (lib / "CURRENT").unlink(), "not a manga-music library"),
    (lambda lib: (lib / "CURRENT").write_text("../../etc/passwd"), "not a generation manifest"),
    (lambda lib: (lib / "CURRENT").write_bytes(b"\xff\xfe" * 9), "cannot read CURRENT"),
    (lambda lib: (lib / "gen-000001.json").unlink(), "generation manifest is missing"),
    (lambda lib: (lib / "gen-000001.json").write_text("{\"format\": "), "not valid JSON"),
    (lambda lib: (lib / "gen-000001.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda lib: _edit_manifest(lib, lambda d: d.update(embed_dim="16")), r"embed_dim' must be an integer"),
    (lambda lib: _edit_manifest(lib, lambda d: d.pop("segments")), r"missing field '\S*segments'"),
    (lambda lib: _edit_manifest(lib, lambda d: d.update(schema_version=99)), "library format 99"),
    (lambda lib: _edit_manifest(lib, lambda d: d.update(generation=7)), "not the one its file name says"),
    (lambda lib: _edit_manifest(lib, lambda d: d["hub"].update(min_norm=float("nan"))), "hub.min_norm"),
    (lambda lib: _edit_manifest(lib, lambda d: d["hub"].update(method="magic")), "hub.method"),
    (lambda lib: _edit_manifest(lib, lambda d: d["hub"]["centre"].update(name="/etc/passwd")), "hub.centre.name"),
    (lambda lib: _edit_manifest(lib, lambda d: d["segments"][0]["files"]["db"].update(name="../../x.db")),
     r"files.db.name' must be a string matching"),
    (lambda lib: _edit_manifest(lib, lambda d: d["segments"][0].update(records=-1)), "records' must be an integer >= 1"),
    (lambda lib: _edit_manifest(lib, lambda d: d["segments"][0].update(vectors=10 ** 6)), "inconsistent counts"),
    (lambda lib: _edit_manifest(lib, lambda d: d["root"].update(absolute=None)), "root.absolute"),
])
def test_damaged_manifests_give_one_line_library_errors(world, tmp_path, damage, message):  # noqa: F811
    lib = shutil.copytree(world.library, tmp_path / "lib")
    damage(lib)
    with pytest.raises(LibraryError, match=message) as e:
        Library.open(lib)
    assert "\n" not in str(e.value)


def _two_segment_library(music, tmp_path, enc):
    """A library whose tracks sit in several segments (one commit per two files)."""
    out = tmp_path / "lib"
    build_library(music, out, enc, progress=False, commit_every=2)
    m = GenerationManifest.from_dict(manifest_of(out), "m")
    assert len(m.segments) == 3
    return out, m


@pytest.mark.parametrize("tamper", ["delete db", "truncate pooled", "pooled header", "schema", "swap segment"])
def test_a_damaged_segment_is_left_out_and_the_rest_still_answers(music, tmp_path, enc, world, tamper):  # noqa: F811
    out, m = _two_segment_library(music, tmp_path, enc)
    seg_dir = out / "segments"
    victim = m.segments[1]
    if tamper == "delete db":
        (seg_dir / victim.file("db").name).unlink()
    elif tamper == "truncate pooled":
        p = seg_dir / victim.file("pooled").name
        p.write_bytes(p.read_bytes()[:-8])
    elif tamper == "pooled header":  # same size, another shape
        p = seg_dir / victim.file("pooled").name
        data = p.read_bytes()
        p.write_bytes(data.replace(b"(2, 16)", b"(1, 32)"))
    elif tamper == "schema":
        db = sqlite3.connect(seg_dir / victim.file("db").name)
        db.execute("CREATE TABLE extra (x)")
        db.commit()
        db.close()
        # keep the size the manifest expects, so only the schema check can tell
        _edit_manifest(out, lambda d: d["segments"][1]["files"]["db"].update(
            bytes=(seg_dir / victim.file("db").name).stat().st_size))
    else:
        shutil.copy(seg_dir / m.segments[0].file("db").name, seg_dir / victim.file("db").name)
    with Library.open(out) as lib:
        assert len(lib.damaged) == 1 and f"segment {victim.id}" in lib.damaged[0]
        assert len(lib) == 3  # 5 tracks, 2 of them in the damaged segment
        assert lib.verify()  # the full check names it too
    with Retriever(bundle=world.bundle, library=out, device="cpu", threads=1) as r:
        assert len(r.query(world.pages["tall"], top_k=10).tracks) == 3
    # the next build embeds the lost tracks again and the library is whole
    report = build_library(music, out, enc, progress=False)
    assert report.tracks == 5 and report.new == 2
    with Library.open(out) as lib:
        assert lib.damaged == () and lib.verify() == []


def test_tampered_records_and_vectors_never_escape_or_poison_results(music, tmp_path, enc, world):  # noqa: F811
    out, m = _two_segment_library(music, tmp_path, enc)
    seg_dir = out / "segments"
    db_path = seg_dir / m.segments[0].file("db").name
    size = db_path.stat().st_size
    db = sqlite3.connect(db_path)
    db.execute("UPDATE records SET path = '../../../etc/passwd' WHERE vec = 0")
    db.execute("UPDATE records SET moods = 'not json' WHERE vec = 1")
    db.commit()
    db.close()
    assert db_path.stat().st_size == size  # an edit in place, invisible to the size check
    pooled = seg_dir / m.segments[2].file("pooled").name
    data = bytearray(pooled.read_bytes())
    data[-16:] = np.full(4, np.nan, np.float32).tobytes()  # NaN into the last vector
    pooled.write_bytes(bytes(data))
    with Library.open(out) as lib:
        assert lib.damaged == ()  # sizes and schemas still match ...
        assert len(lib.verify()) == 2  # ... but the hashes do not
        good = list(lib.all_tracks())  # the two bad records are skipped, with a warning
        assert len(good) == 3 and all(str(t.path).startswith(str(music.resolve())) for t in good)
        with pytest.raises(LibraryError, match="not a plain path under the library's root"):
            lib.track(0)
        hits = lib.index.search(world_page_embedding(world, enc), 5)
        assert np.all(np.isfinite(hits.scores[hits.ids >= 0]))
    with Retriever(bundle=world.bundle, library=out, device="cpu", threads=1) as r:
        tracks = r.query(world.pages["tall"], top_k=10).tracks
    # the NaN vector never ranks; the two unusable records are dropped from the answer
    assert len(tracks) == 2 and all(str(music.resolve()) in t.path for t in tracks)


def test_a_tampered_vector_is_embedded_again_not_copied(music, tmp_path, enc):
    """A NaN written into a stored vector: a move of that file embeds it again rather than
    copy it, and compacting its segment drops it instead of failing."""
    out = tmp_path / "lib"
    build_library(music, out, enc, progress=False)
    m = GenerationManifest.from_dict(manifest_of(out), "m")
    with Library.open(out) as lib:
        row = lib.find(music / "b" / "chirp.ogg").row
    pooled = out / "segments" / m.segments[0].file("pooled").name
    data = bytearray(pooled.read_bytes())
    start = len(data) - 5 * 64 + row * 64  # 5 rows of 16 float32
    data[start:start + 64] = np.full(16, np.nan, np.float32).tobytes()
    pooled.write_bytes(bytes(data))
    (music / "b" / "chirp.ogg").rename(music / "b" / "moved.ogg")
    for rel in ("a/noise.flac", "b/deep/square.mp3"):
        (music / rel).unlink()  # 3 of 5 records gone: the segment is compacted
    embedded = []
    report = build_library(music, out, enc, progress=False, on_file=embedded.append)
    assert [p.name for p in embedded] == ["moved.ogg"] and report.tracks == 3
    with Library.open(out) as lib:
        assert lib.verify() == [] and np.all(np.isfinite(lib.tracks))


def world_page_embedding(world, enc):  # noqa: F811
    return enc.embed_images([world.pages["tall"]])


# -- search --------------------------------------------------------------------------------------
def test_exact_index_matches_a_full_sort(monkeypatch):
    rng = np.random.default_rng(0)
    m = l2_normalise(rng.standard_normal((1000, 16)))
    q = l2_normalise(rng.standard_normal((3, 16)))
    hits = ExactIndex(m).search(q, 10)
    full = q @ m.T
    expect = np.argsort(-full, axis=1)[:, :10]
    assert np.array_equal(hits.ids, expect)
    np.testing.assert_allclose(hits.scores, np.take_along_axis(full, expect, 1), atol=1e-6)
    # the chunked path (large memmaps) gives the same answer
    from runtime import search
    monkeypatch.setattr(search, "_CHUNK_ROWS", 64)
    chunked = ExactIndex(m).search(q, 10)
    assert np.array_equal(chunked.ids, hits.ids)
    # k past the end, and k = 0
    assert ExactIndex(m[:4]).search(q[0], 10).ids.shape == (1, 4)
    assert top_k(full, 0)[1].shape == (3, 0)


def test_segmented_index_equals_exact_search_over_the_live_rows(monkeypatch):
    """Several segments, deleted rows, a centre: the same answer as one matrix product over
    the live rows with the centred, renormalised tracks, in library row numbers."""
    from runtime.library import hubs
    from runtime.library import search_index as si

    rng = np.random.default_rng(3)
    mats = [l2_normalise(rng.standard_normal((n, 8)) + 2.0) for n in (50, 7, 120)]  # a cone, like real tracks
    deleted = [np.array([0, 3, 49]), np.array([], np.int64), np.arange(0, 120, 2)]
    live = [np.setdiff1d(np.arange(len(m)), d) for m, d in zip(mats, deleted)]
    flat = np.concatenate([m[lv] for m, lv in zip(mats, live)])
    centre, count = hubs.centre_of(m[lv] for m, lv in zip(mats, live))
    assert count == len(flat) and np.allclose(centre, flat.mean(0), atol=1e-6)
    parts, base = [], 0
    for m, d in zip(mats, deleted):
        parts.append(si.IndexPart(m, hubs.inverse_norms(m, centre), d.astype(np.int64), base))
        base += len(m) - len(d)
    q = l2_normalise(rng.standard_normal((4, 8)))
    monkeypatch.setattr(si, "_CHUNK_ROWS", 32)  # chunk borders inside segments
    centred = hubs.centred_rows(flat, centre)
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1.0, atol=1e-5)
    index = si.SegmentedIndex(parts, 8, centre)
    for correct, expect_scores in ((True, q @ centred.T), (False, q @ flat.T)):
        hits = index.search(q, 9, correct=correct)
        expect = np.argsort(-expect_scores, axis=1)[:, :9]
        assert np.array_equal(hits.ids, expect)
        np.testing.assert_allclose(hits.scores, np.take_along_axis(expect_scores, expect, 1), atol=1e-5)
        np.testing.assert_allclose(index.scores(q, correct=correct), expect_scores, atol=1e-5)
        # some rows only: any order, repeats, across segments and around deleted vectors
        some = np.array([len(flat) - 1, 0, 46, 47, 53, 47, 3, 52])
        np.testing.assert_allclose(index.scores(q, correct=correct, rows=some), expect_scores[:, some], atol=1e-5)
        assert index.scores(q, correct=correct, rows=[]).shape == (4, 0)
    for bad in (-1, len(flat)):
        with pytest.raises(LibraryError, match=f"no track at row {bad}"):
            index.scores(q, rows=[0, bad])
    assert len(index) == len(flat)
    assert index.search(q, 1000).ids.shape == (4, len(flat))


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def test_compact_index_finds_the_top10_of_random_rows_where_a_graph_does_not():
    """pq-refine scans a compact copy of every row, so rows with no structure (random unit
    vectors, queries far from all of them) do not defeat it; HNSW's graph is lost there.
    The library rescores 100 candidates per top-10 in float32, as here."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    rows = l2_normalise(rng.standard_normal((20_000, 64))).astype(np.float32)
    q = l2_normalise(rng.standard_normal((40, 64))).astype(np.float32)
    exact = ExactIndex(rows).search(q, 10).ids

    def rescored(index):
        cand = index.search(q, 100).ids
        return np.stack([c[np.argsort(-(rows[c] @ qq))[:10]] for c, qq in zip(cand, q)])

    compact = FaissIndex.build(rows)
    graph = FaissIndex.build(rows, kind="hnsw", m=16, ef_search=64)
    r_compact, r_graph = _recall(rescored(compact), exact), _recall(rescored(graph), exact)
    print(f"recall@10, 20,000 random 64-d rows: pq-refine {r_compact:.3f}, hnsw {r_graph:.3f}")
    assert compact.kind == "pq-refine" and graph.kind == "hnsw"
    assert r_compact >= 0.95 and r_compact > r_graph


def test_compact_index_leaves_out_excluded_rows_even_when_they_are_all_the_best():
    # Excluding the 1,500 rows nearest the query makes the first, over-fetched answer come
    # back short: the index must ask again rather than return fewer or excluded rows.
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    rows = l2_normalise(rng.standard_normal((3000, 16))).astype(np.float32)
    index = FaissIndex.build(rows)
    q = rows[:1]
    nearest = np.argsort(-(rows @ q[0]))
    excluded = np.sort(nearest[:1500])
    hits = index.search(q, 10, exclude=excluded)
    assert hits.ids.shape == (1, 10) and (hits.ids >= 0).all()
    assert not np.isin(hits.ids, excluded).any()
    assert np.isin(hits.ids, nearest[1500:1540]).all()  # the best of the rest (8-bit scores, not rescored)


def test_faiss_is_optional_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    m = l2_normalise(np.random.default_rng(1).standard_normal((10, 8)))
    assert isinstance(make_index(m), ExactIndex)  # auto: exact below the threshold / without faiss
    with pytest.raises(LibraryError, match="pip install 'manga-music\\[ann\\]'"):
        make_index(m, kind="faiss")
    with pytest.raises(LibraryError, match="faiss"):
        FaissIndex.build(m)


def test_make_index_never_builds_at_query_time(monkeypatch, tmp_path):
    """FaissIndex speaks faiss's API; a brute-force stand-in checks the wiring without faiss,
    and that make_index loads a saved index but never builds one."""
    class FakeHNSW:
        def __init__(self, d, m, metric):
            self.d, self.rows, self.hnsw = d, [], type("H", (), {"efSearch": 16})()

        def add(self, x):
            self.rows.append(np.array(x))

        @property
        def ntotal(self):
            return sum(len(r) for r in self.rows)

        def search(self, q, k):
            return top_k(q @ np.concatenate(self.rows).T, k)

    saved = {}
    fake = type(sys)("faiss")
    fake.IndexHNSWFlat, fake.METRIC_INNER_PRODUCT = FakeHNSW, 0

    def write_index(idx, path):  # the file carries a token; the object stays in memory
        saved[str(id(idx))] = idx
        with open(path, "w") as f:
            f.write(str(id(idx)))

    fake.write_index = write_index
    fake.read_index = lambda path: saved[open(path).read()]
    monkeypatch.setitem(sys.modules, "faiss", fake)
    m = l2_normalise(np.random.default_rng(2).standard_normal((50, 8)))
    built = FaissIndex.build(m, kind="hnsw")  # index time (the stand-in speaks HNSW)
    assert len(built) == 50
    assert np.array_equal(built.search(m[:2], 5).ids, ExactIndex(m).search(m[:2], 5).ids)
    monkeypatch.setattr("runtime.search.FAISS_THRESHOLD", 10)
    monkeypatch.setattr(FaissIndex, "build", classmethod(lambda *a, **k: pytest.fail("built at query time")))
    assert isinstance(make_index(m), ExactIndex)  # nothing saved: exact, not a build
    with pytest.raises(LibraryError, match="no saved approximate index"):
        make_index(m, kind="faiss")
    path = tmp_path / "x.hnsw"
    built.save(path)
    assert isinstance(make_index(m, path), FaissIndex)  # saved: loaded past the threshold
    assert isinstance(make_index(m[:5], path), ExactIndex)  # below it: exact
