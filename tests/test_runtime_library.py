"""The music library (runtime/library.py, runtime/index.py) and search (runtime/search.py):
format, tags, incremental updates, failures, atomicity under crashes, bundle checks."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import runtime_fixtures as rf
from runtime_fixtures import world  # noqa: F401  (session fixture)

from runtime.bundle import Bundle
from runtime.encoders import Encoders, l2_normalise
from runtime.errors import InputError, LibraryError
from runtime.library import Library, build_library, softmax
from runtime.search import ExactIndex, FaissIndex, make_index, top_k


@pytest.fixture(scope="module")
def enc(world):  # noqa: F811
    return Encoders(world.bundle, device="cpu", threads=1)


@pytest.fixture()
def music(world, tmp_path):  # noqa: F811
    """A private, modifiable copy of the generated music folder."""
    return shutil.copytree(world.music, tmp_path / "music")


def _gens(lib_dir):
    return sorted(p.name for p in lib_dir.iterdir() if p.name.startswith("gen-"))


def _state(lib_dir):
    lib = Library.open(lib_dir)
    try:
        return {i.relpath: i.sha256 for i in lib.all_tracks()}, np.array(lib.tracks)
    finally:
        lib.close()


# -- format and contents ------------------------------------------------------------------------
def test_library_holds_every_track_with_windows_pooled_and_moods(world, enc):  # noqa: F811
    lib = Library.open(world.library, bundle=enc.bundle)
    infos = list(lib.all_tracks())
    assert sorted(i.relpath for i in infos) == sorted(
        ["a/sine_stereo.wav", "a/noise.flac", "b/chirp.ogg", "b/deep/square.mp3", "short.wav"])  # no .hidden, no .txt
    assert lib.meta.kind == "music" and lib.meta.bundle_fingerprint == enc.bundle.fingerprint
    assert lib.meta.precision == "int8" and lib.meta.embed_dim == rf.EMBED_DIM
    assert lib.tracks.dtype == np.float32 and isinstance(lib.tracks, np.memmap)
    assert lib.windows.dtype == np.float16 and lib.windows.shape[0] == sum(i.window_count for i in infos)
    moods = enc.bundle.manifest.label_set("moods")
    scale = enc.bundle.manifest.logit_scales.audio_text
    for info in infos:
        te = enc.embed_track(info.path)
        assert info.window_count == len(te.starts)
        np.testing.assert_allclose(lib.tracks[info.row], te.pooled, atol=1e-5)
        win = np.asarray(lib.windows[info.window_offset:info.window_offset + info.window_count], np.float32)
        np.testing.assert_allclose(win, te.windows, atol=2e-3)  # float16 storage
        np.testing.assert_allclose(lib.starts[info.window_offset:info.window_offset + info.window_count], te.starts)
        assert info.duration == pytest.approx(te.duration, abs=1e-3)
        expected = softmax(scale * (moods.embeddings @ te.pooled))
        got = dict(info.moods)
        assert list(got) == list(moods.classes)
        np.testing.assert_allclose([got[c] for c in moods.classes], expected, atol=1e-5)
        assert info.top_mood == moods.classes[int(np.argmax(expected))]
        assert 0 < max(expected) < 1  # a real distribution, not a one-hot
    lib.close()


def test_sqlite_schema_is_what_the_docs_say(world):  # noqa: F811
    gen = (world.library / (world.library / "CURRENT").read_text().strip())
    db = sqlite3.connect(gen / "library.sqlite")
    cols = [r[1] for r in db.execute("PRAGMA table_info(tracks)")]
    assert cols == ["row", "path", "size", "mtime_ns", "content_sha256", "duration", "window_offset",
                    "window_count", "moods", "top_mood", "genres", "status"]
    meta = dict(db.execute("SELECT key, value FROM meta"))
    assert {"schema_version", "kind", "bundle_fingerprint", "embed_dim", "root", "created"} <= set(meta)
    assert json.loads(db.execute("SELECT moods FROM tracks LIMIT 1").fetchone()[0]).keys()
    db.close()


def test_pages_index_has_genres_and_moods(world, enc):  # noqa: F811
    idx = Library.open(world.pages_index, bundle=enc.bundle)
    assert idx.kind == "pages" and len(idx) == len(world.pages)
    info = idx.find(world.pages["tall"])
    assert info is not None and info.window_count == 1 and info.duration is None
    assert len(info.genres) == 12 and sum(p for _, p in info.genres) == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(idx.tracks[info.row], enc.embed_images([world.pages["tall"]])[0], atol=1e-5)
    idx.close()


def test_library_moved_with_its_music_still_resolves(world, tmp_path):  # noqa: F811
    music = shutil.copytree(world.music, tmp_path / "m1")
    enc = Encoders(world.bundle, device="cpu", threads=1)
    build_library(music, music / ".lib", enc, progress=False)
    moved = music.rename(tmp_path / "m2")
    lib = Library.open(moved / ".lib")
    assert lib.meta.root == moved.resolve()
    assert all(i.path.is_file() for i in lib.all_tracks())
    lib.close()


# -- incremental -------------------------------------------------------------------------------
def test_incremental_updates(music, tmp_path, enc):
    out = tmp_path / "lib"
    r1 = build_library(music, out, enc, progress=False)
    assert (r1.tracks, r1.new, r1.unchanged) == (5, 5, 0)
    paths1, tracks1 = _state(out)

    embedded = []
    r2 = build_library(music, out, enc, progress=False, on_file=embedded.append)
    assert embedded == [] and (r2.unchanged, r2.new, r2.changed) == (5, 0, 0)
    paths2, tracks2 = _state(out)
    assert paths2 == paths1 and np.array_equal(tracks1, tracks2)

    rf.write_extra_track(music / "a" / "sine_stereo.wav", seconds=3.0, freq=220)  # changed content
    (music / "a" / "noise.flac").unlink()  # deleted
    rf.write_extra_track(music / "new.wav")  # added
    (music / "b" / "chirp.ogg").rename(music / "b" / "chirp_renamed.ogg")  # moved: same bytes
    embedded.clear()
    r3 = build_library(music, out, enc, progress=False, on_file=embedded.append)
    assert sorted(p.name for p in embedded) == ["new.wav", "sine_stereo.wav"]  # the move is not re-embedded
    assert (r3.new, r3.changed, r3.moved, r3.removed, r3.unchanged, r3.tracks) == (1, 1, 1, 1, 2, 5)
    paths3, _ = _state(out)
    assert "a/noise.flac" not in paths3 and "b/chirp_renamed.ogg" in paths3
    assert paths3["b/chirp_renamed.ogg"] == paths1["b/chirp.ogg"]
    assert paths3["a/sine_stereo.wav"] != paths1["a/sine_stereo.wav"]
    assert _gens(out) == ["gen-000003"]  # old generations are cleaned up


def test_unreadable_files_are_recorded_and_skipped(music, tmp_path, world, enc):  # noqa: F811
    for key in ("text_as_mp3", "silent_audio", "empty_audio"):
        shutil.copy(world.bad[key], music / world.bad[key].name)
    out = tmp_path / "lib"
    report = build_library(music, out, enc, progress=False)
    assert report.tracks == 5
    reasons = {f.path.rsplit("/", 1)[-1]: f.reason for f in report.failures}
    assert set(reasons) == {"lyrics.mp3", "silent.wav", "empty.wav"}
    assert "silent" in reasons["silent.wav"] and "no samples" in reasons["empty.wav"]
    lib = Library.open(out)
    assert {f.path.rsplit("/", 1)[-1] for f in lib.failures()} == set(reasons)
    lib.close()
    tried = []
    again = build_library(music, out, enc, progress=False, on_file=tried.append)
    assert tried == [] and len(again.failures) == 3  # unchanged failures are not retried


def test_nothing_indexable_is_an_input_error_and_leaves_library_alone(world, tmp_path, enc):  # noqa: F811
    lib = shutil.copytree(world.library, tmp_path / "lib")
    before = _state(lib)
    with pytest.raises(InputError, match="no audio files found"):
        build_library(world.bad["no_audio_dir"], lib, enc, progress=False)
    bad = tmp_path / "only_bad"
    bad.mkdir()
    shutil.copy(world.bad["text_as_mp3"], bad)
    with pytest.raises(InputError, match="none of the 1 files could be indexed"):
        build_library(bad, lib, enc, progress=False, rebuild=True)
    after = _state(lib)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    assert len(_gens(lib)) == 1


def test_refuses_to_write_into_a_foreign_folder(music, tmp_path, enc):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a manga-music library"):
        build_library(music, foreign, enc, progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"


# -- atomicity ---------------------------------------------------------------------------------
def test_failure_mid_build_leaves_previous_library(music, tmp_path, enc):
    out = tmp_path / "lib"
    build_library(music, out, enc, progress=False)
    before = _state(out)
    rf.write_extra_track(music / "x.wav")
    rf.write_extra_track(music / "y.wav", freq=330)

    def boom(path):
        if path.name == "y.wav":
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_library(music, out, enc, progress=False, on_file=boom)
    after = _state(out)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    assert _gens(out) == ["gen-000001"]  # the half-built generation was removed


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{root!r}]
    from runtime import library
    from runtime.encoders import Encoders
    phase = {phase!r}
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    on_file = None
    if phase == "embedding":
        seen = []
        def on_file(p):
            seen.append(p)
            if len(seen) == 2:
                die()
    elif phase == "writing":
        library._write_db = die
    elif phase == "commit":
        real_replace = os.replace
        def replace(a, b):
            if str(b).endswith("CURRENT"):
                die()
            real_replace(a, b)
        library.os.replace = replace
    elif phase == "cleanup":
        calls = []
        real_clean = library._remove_stale_generations
        def clean(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                die()
            real_clean(*a, **k)
        library._remove_stale_generations = clean
    enc = Encoders({bundle!r}, device="cpu", threads=1)
    library.build_library({music!r}, {out!r}, enc, progress=False, on_file=on_file)
""")


@pytest.mark.parametrize("phase, survives", [("embedding", "old"), ("writing", "old"), ("commit", "old"),
                                             ("cleanup", "new")])
def test_killed_indexer_leaves_a_loadable_library(music, tmp_path, world, phase, survives):  # noqa: F811
    out = tmp_path / "lib"
    enc = Encoders(world.bundle, device="cpu", threads=1)
    build_library(music, out, enc, progress=False)
    old = _state(out)
    for i in range(3):
        rf.write_extra_track(music / f"extra{i}.wav", freq=300 + 50 * i)
    script = _KILL_SCRIPT.format(root=str(rf.ROOT), phase=phase, bundle=str(world.bundle), music=str(music),
                                 out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr  # it really died by SIGKILL
    paths, _ = _state(out)  # loads, whatever the moment of death
    if survives == "old":
        assert paths == old[0]
    else:
        assert len(paths) == 8
    assert len(_gens(out)) >= 1
    # The next run completes and leaves exactly one generation behind.
    report = build_library(music, out, enc, progress=False)
    assert report.tracks == 8 and len(_gens(out)) == 1


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


@pytest.mark.parametrize("damage, message", [
    (lambda lib: (lib / "CURRENT").unlink(), "not a manga-music library"),
    (lambda lib: (lib / "CURRENT").write_text("../../etc"), "not a generation folder"),
    (lambda lib: next(lib.glob("gen-*/tracks.npy")).unlink(), "arrays are missing"),
    (lambda lib: next(lib.glob("gen-*/library.sqlite")).write_bytes(b"junk" * 100), "not a readable library"),
])
def test_damaged_libraries_give_a_library_error(world, tmp_path, damage, message):  # noqa: F811
    lib = shutil.copytree(world.library, tmp_path / "lib")
    damage(lib)
    with pytest.raises(LibraryError, match=message):
        Library.open(lib)


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


def test_faiss_is_optional_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    m = l2_normalise(np.random.default_rng(1).standard_normal((10, 8)))
    assert isinstance(make_index(m), ExactIndex)  # auto: exact below the threshold / without faiss
    with pytest.raises(LibraryError, match="pip install 'manga-music\\[ann\\]'"):
        make_index(m, kind="faiss")
    with pytest.raises(LibraryError, match="faiss"):
        FaissIndex.build(m)


def test_faiss_index_wiring_with_a_stand_in_module(monkeypatch):
    """FaissIndex speaks faiss's API; a brute-force stand-in checks the wiring without faiss."""
    class FakeHNSW:
        def __init__(self, d, m, metric):
            self.d, self.rows, self.hnsw = d, [], type("H", (), {})()

        def add(self, x):
            self.rows.append(np.array(x))

        @property
        def ntotal(self):
            return sum(len(r) for r in self.rows)

        def search(self, q, k):
            return top_k(q @ np.concatenate(self.rows).T, k)

    fake = type(sys)("faiss")
    fake.IndexHNSWFlat, fake.METRIC_INNER_PRODUCT = FakeHNSW, 0
    monkeypatch.setitem(sys.modules, "faiss", fake)
    m = l2_normalise(np.random.default_rng(2).standard_normal((50, 8)))
    idx = make_index(m, kind="faiss")
    assert isinstance(idx, FaissIndex) and len(idx) == 50
    assert np.array_equal(idx.search(m[:2], 5).ids, ExactIndex(m).search(m[:2], 5).ids)
    monkeypatch.setattr("runtime.search.FAISS_THRESHOLD", 10)
    assert isinstance(make_index(m), FaissIndex)  # auto switches above the threshold when available
