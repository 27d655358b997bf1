"""Retrieval (runtime/retrieval.py) and the two CLIs (runtime/query.py, runtime/index.py):
results, every direction, output formats, and the bad-input contract (exit 2, one line)."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtime_fixtures as rf
from runtime_fixtures import run_cli, world  # noqa: F401  (session fixture)

from runtime.errors import BundleError, InputError, LibraryError
from runtime.library import Library, softmax
from runtime.retrieval import PageResult, Retriever


@pytest.fixture(scope="module")
def retriever(world):  # noqa: F811
    r = Retriever(bundle=world.bundle, library=world.library, device="cpu", threads=1)
    yield r
    r.close()


# -- Python API ---------------------------------------------------------------------------------
def test_query_only_loads_the_image_encoder(world):  # noqa: F811
    with Retriever(bundle=world.bundle, library=world.library, device="cpu", threads=1) as r:
        r.query(world.pages["tall"], top_k=3)
        assert r.encoders.loaded == ("image",)


def test_page_result_is_ranked_tagged_and_located(retriever, world):  # noqa: F811
    res = retriever.query(world.pages["tall"], top_k=3)
    assert isinstance(res, PageResult) and res.source == str(world.pages["tall"])
    m = retriever.bundle.manifest
    page = retriever.encoders.embed_images([world.pages["tall"]])[0]
    # genres: the top 3 of softmax(image_text * cos) over all 12, best first
    all_genres = softmax(m.logit_scales.image_text * (m.label_set("genres").embeddings @ page))
    order = np.argsort(-all_genres)[:3]
    assert [g for g, _ in res.genres] == [m.label_set("genres").classes[i] for i in order]
    np.testing.assert_allclose([p for _, p in res.genres], all_genres[order], atol=1e-5)
    # moods: all 7, same page embedding, same (image_text) scale, summing to 1
    assert len(res.moods) == 7 and sum(p for _, p in res.moods) == pytest.approx(1, abs=1e-5)
    assert [p for _, p in res.moods] == sorted((p for _, p in res.moods), reverse=True)
    # tracks: by cosine with each track's direction away from the library's mean track
    # (the hub correction); best start = the closest window
    lib = Library.open(world.library)
    cos = lib.tracks @ page
    centred = lib.tracks - lib.centre
    score = (centred @ page) / np.linalg.norm(centred, axis=1)
    assert np.allclose(lib.centre, np.mean(lib.tracks, axis=0), atol=1e-6)
    assert [t.path for t in res.tracks] == [str(lib.track(int(i)).path) for i in np.argsort(-score)[:3]]
    for t in res.tracks:
        info = lib.find(t.path)
        assert t.score == pytest.approx(float(score[info.row]), abs=1e-5)
        assert t.cosine == pytest.approx(float(cos[info.row]), abs=1e-5)
        win, starts = lib.windows_of(info.row)
        assert t.best_start_seconds == starts[int(np.argmax(win @ page))]
        assert t.top_mood == info.top_mood
    lib.close()


def test_query_many_equals_one_by_one(world):  # noqa: F811
    # fp32: dynamic int8 graphs quantise activations per batch, so their outputs move slightly
    # with the batch's other members; fp32 ones must not.
    with Retriever(bundle=world.bundle, library=world.library, device="cpu", precision="fp32") as r:
        pages = [world.pages["gray"], world.pages["spread"], world.pages["rgba"]]
        many = r.query_many(pages, top_k=2, batch_size=2)
        single = [r.query(p, top_k=2) for p in pages]
    for a, b in zip(many, single):
        assert [t.path for t in a.tracks] == [t.path for t in b.tracks]
        np.testing.assert_allclose([t.score for t in a.tracks], [t.score for t in b.tracks], atol=1e-5)
        assert [g for g, _ in a.genres] == [g for g, _ in b.genres]


def test_text_to_music(retriever):
    res = retriever.query_text("sad piano", top_k=4)
    assert res.text == "sad piano" and len(res.tracks) == 4
    assert [t.score for t in res.tracks] == sorted((t.score for t in res.tracks), reverse=True)
    # ranked by the corrected score; the plain cosine rides along
    with Library.open(retriever.library.dir) as lib:
        emb = retriever.encoders.embed_texts(["sad piano"])
        expect = lib.scores(emb)[0]
        np.testing.assert_allclose(lib.scores(emb, rows=[2, 0])[0], expect[[2, 0]], atol=1e-6)
        np.testing.assert_allclose(lib.scores(emb, correct=False, rows=[1])[0, 0], lib.pooled(1) @ emb[0], atol=1e-6)
        assert [t.path for t in res.tracks] == [str(lib.track(int(i)).path) for i in np.argsort(-expect)[:4]]
        assert all(t.cosine == pytest.approx(float(lib.pooled(lib.find(t.path).row) @ emb[0]), abs=1e-5)
                   for t in res.tracks)


def test_music_to_moods_and_pages(retriever, world):  # noqa: F811
    track = world.tracks["square"]
    stored = dict(retriever.moods_for_track(track))  # from the library: no audio session
    assert "audio" not in retriever.encoders.loaded
    fresh = Retriever(bundle=world.bundle, library=None, device="cpu", threads=1)
    computed = dict(fresh.moods_for_track(track))  # no library named: computed from the file
    assert "audio" in fresh.encoders.loaded
    assert stored.keys() == computed.keys()
    assert max(abs(stored[k] - computed[k]) for k in stored) < 1e-4
    pages = retriever.pages_for_track(track, world.pages_index, top_k=3)
    idx = Library.open(world.pages_index)
    emb = retriever.track_embedding(track)
    assert [p.path for p in pages] == [str(idx.track(int(i)).path) for i in np.argsort(-(idx.tracks @ emb))[:3]]
    idx.close()
    res = retriever.query_audio(track, pages_index=world.pages_index, top_k=2)
    assert len(res.pages) == 2 and len(res.moods) == 7
    with pytest.raises(LibraryError, match="not a pages index"):
        retriever.pages_for_track(track, world.library)


def test_library_and_bundle_must_match(world, tmp_path):  # noqa: F811
    other = rf.write_tiny_bundle(tmp_path / "other", seed=9)
    r = Retriever(bundle=other, library=world.library, device="cpu")
    with pytest.raises(LibraryError, match="built with another bundle"):
        r.query(world.pages["tall"])


def test_defaults_come_from_the_environment_or_the_package(world, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("MANGA_MUSIC_BUNDLE", str(world.bundle))
    monkeypatch.setenv("MANGA_MUSIC_LIBRARY", str(world.library))
    assert Retriever().query(world.pages["tall"], top_k=1).tracks
    monkeypatch.setenv("MANGA_MUSIC_BUNDLE", str(tmp_path / "nothing"))
    with pytest.raises(BundleError, match="python -m export AudioCLIP-Full-Training.pt --out my-bundle"):
        Retriever()


# -- query CLI ---------------------------------------------------------------------------------------
def _one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_query_cli_prints_genres_moods_and_tracks(world):  # noqa: F811
    p = run_cli("runtime.query", world.pages["tall"], world.pages["spread"], "--bundle", world.bundle,
                "--library", world.library, "--top-k", "2", "--device", "cpu", "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # not a demo bundle, no warnings
    blocks = [b for b in p.stdout.strip().split("\n\n")]
    assert len(blocks) == 2
    for block, page in zip(blocks, ("tall", "spread")):
        lines = block.splitlines()
        assert lines[0] == f"page: {world.pages[page]}"
        assert lines[1].startswith("  genres: ") and lines[1].count("%") == 3
        assert lines[2].startswith("  moods: ") and lines[2].count("%") == 7
        tracks = lines[3:]
        assert len(tracks) == 2
        for t in tracks:
            assert re.match(r"^\s+\d\. [+-]\d\.\d{3}  from \d\d:\d\d  \[\w+ music\]  /", t), t


def test_query_cli_json(world):  # noqa: F811
    p = run_cli("runtime.query", world.pages["gray"], "--text", "sad piano", "--audio", world.tracks["noise"],
                "--pages-index", world.pages_index, "--bundle", world.bundle, "--library", world.library,
                "--top-k", "3", "--json", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["type"] for r in out] == ["page", "text", "track"]
    page = out[0]
    assert len(page["genres"]) == 3 and len(page["moods"]) == 7 and len(page["tracks"]) == 3
    t = page["tracks"][0]
    assert set(t) >= {"path", "score", "best_start_seconds", "best_start", "top_mood", "moods"}
    assert re.fullmatch(r"\d\d:\d\d", t["best_start"])
    assert out[1]["text"] == "sad piano" and len(out[1]["tracks"]) == 3
    assert len(out[2]["moods"]) == 7 and len(out[2]["pages"]) == 3


def test_query_cli_modes_change_the_answer(world):  # noqa: F811
    common = ["--bundle", world.bundle, "--library", world.library, "--json", "--device", "cpu"]
    crop = json.loads(run_cli("runtime.query", world.pages["spread"], *common).stdout)[0]
    tiles = json.loads(run_cli("runtime.query", world.pages["spread"], "--mode", "tiles", *common).stdout)[0]
    assert crop["tracks"][0]["score"] != tiles["tracks"][0]["score"]


def test_demo_model_is_noted_once_after_the_output_never_beside_an_error(world, tmp_path, caplog):  # noqa: F811
    from runtime.defaults import DEMO_NOTE

    demo = rf.write_tiny_bundle(tmp_path / "demo", demo=True)
    lib = tmp_path / "lib"
    idx = run_cli("runtime.index", world.music, "--out", lib, "--bundle", demo)
    assert idx.returncode == 0, idx.stderr
    assert idx.stderr.strip().splitlines()[-1] == f"note: {DEMO_NOTE}"  # the indexer says so too
    p = run_cli("runtime.query", world.pages["tall"], "--text", "sad piano", "--bundle", demo, "--library", lib)
    assert p.returncode == 0 and p.stdout.startswith("page: ")
    assert p.stderr.splitlines() == [f"note: {DEMO_NOTE}"]  # once, for two queries
    assert len(DEMO_NOTE) < 120 and str(demo) not in DEMO_NOTE
    # An error stays the one line on stderr: no note beside it.
    bad = run_cli("runtime.query", world.bad["corrupt_image"], "--bundle", demo, "--library", lib)
    assert _one_error_line(bad).startswith("python -m runtime.query: error: ")
    # The Python API says it through logging, once per process and bundle.
    import runtime.defaults as defaults

    defaults._noted.clear()
    with caplog.at_level(logging.WARNING, logger="manga_music"):
        Retriever(bundle=demo, library=lib, device="cpu").close()
        Retriever(bundle=demo, library=lib, device="cpu").close()
    assert [r.getMessage() for r in caplog.records] == [DEMO_NOTE]


def test_a_bad_page_does_not_lose_the_good_ones(world, tmp_path):  # noqa: F811
    pages = [world.pages["tall"], world.bad["truncated_image"], tmp_path / "gone.png", world.pages["gray"]]
    common = ["--bundle", world.bundle, "--library", world.library, "--top-k", "2", "--device", "cpu"]
    p = run_cli("runtime.query", *pages, "--json", *common)
    assert p.returncode == 2
    out = json.loads(p.stdout)
    assert [r.get("source") for r in out] == [str(x) for x in pages]
    assert [("error" in r) for r in out] == [False, True, True, False]
    assert len(out[0]["tracks"]) == 2 and len(out[3]["tracks"]) == 2 and "tracks" not in out[1]
    assert "truncated.jpg: corrupt or truncated" in out[1]["error"] and "gone.png: no such file" in out[2]["error"]
    errors = p.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in p.stderr
    assert "truncated.jpg" in errors[0] and "gone.png" in errors[1]
    assert all(e.startswith("python -m runtime.query: error: ") for e in errors)
    text = run_cli("runtime.query", *pages, *common)
    assert text.returncode == 2 and len(text.stderr.strip().splitlines()) == 2
    assert [b.splitlines()[0] for b in text.stdout.strip().split("\n\n")] == [
        f"page: {world.pages['tall']}", f"page: {world.pages['gray']}"]
    # Bad audio among good items: the same rule.
    mixed = run_cli("runtime.query", "--audio", world.bad["text_as_mp3"], "--text", "sad piano", "--json", *common)
    assert mixed.returncode == 2
    got = json.loads(mixed.stdout)
    assert got[0]["type"] == "text" and len(got[0]["tracks"]) == 2
    assert got[1]["type"] == "track" and "lyrics.mp3" in got[1]["error"]


def test_audio_lists_the_most_similar_tracks_and_the_pages_that_fit(retriever, world):  # noqa: F811
    track = world.tracks["square"]
    res = retriever.query_audio(track, top_k=3)
    with Library.open(world.library) as lib:
        own = lib.find(track).row
        emb = lib.pooled(own)
        scores = lib.scores(emb[None, :])[0]
        order = [int(i) for i in np.argsort(-scores) if int(i) != own][:3]
        assert [t.path for t in res.tracks] == [str(lib.track(i).path) for i in order]
    assert str(track) not in [t.path for t in res.tracks]  # not itself
    assert res.pages == ()
    p = run_cli("runtime.query", "--audio", track, "--library", world.library, "--bundle", world.bundle,
                "--pages-index", world.pages_index, "--top-k", "2", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    sim, pages = lines.index("  similar tracks:"), lines.index("  pages that fit it:")
    assert len(lines[sim + 1:pages]) == 2 and all(re.match(r"^\s+\d\. [+-]\d\.\d{3}  from ", t) for t in lines[sim + 1:pages])
    assert len([x for x in lines[pages + 1:] if x.strip()]) == 2
    out = json.loads(run_cli("runtime.query", "--audio", track, "--library", world.library, "--bundle", world.bundle,
                             "--top-k", "2", "--json").stdout)[0]
    assert [t["path"] for t in out["tracks"]] == [t.path for t in res.tracks[:2]] and out["pages"] == []
    assert out["library"] == str(world.library.resolve())
    # No library named and the default one (the shipped demo's) built with another bundle:
    # the track's moods still come, and the output says no library was searched.
    alone = run_cli("runtime.query", "--audio", track, "--bundle", world.bundle)
    assert alone.returncode == 0, alone.stderr
    assert "  similar tracks: none searched (no library built with this bundle: give --library)" in alone.stdout
    assert alone.stdout.count("%") == 7


@pytest.mark.parametrize("args, expect", [
    (["--text", "sad piano", "--mode", "tiles"], "--mode applies to PAGE files"),
    (["--text", ""], "--text is empty"),
    (["--text", "   "], "--text is empty"),
    (["{pages[tall]}", "--provider", "CPUExecutionProvider", "--device", "cpu"], "--provider"),
    (["{pages[tall]}", "--provider", "NoSuchExecutionProvider"], "unknown ONNX Runtime execution provider"),
])
def test_options_that_do_not_apply_are_errors(world, args, expect):  # noqa: F811
    argv = [a.format(pages=world.pages) for a in args] + ["--bundle", str(world.bundle), "--library", str(world.library)]
    line = _one_error_line(run_cli("runtime.query", *argv))
    assert expect in line, line


def test_index_refuses_options_that_do_not_apply(world, tmp_path):  # noqa: F811
    line = _one_error_line(run_cli("runtime.index", world.music, "--out", tmp_path / "lib", "--bundle", world.bundle,
                                   "--mode", "tiles"))
    assert "--mode applies to --kind pages" in line
    assert not (tmp_path / "lib").exists()


def test_empty_text_is_refused_by_the_api(retriever):
    with pytest.raises(InputError, match="the text is empty"):
        retriever.query_text(" ")


def test_paths_are_shown_relative_to_the_working_directory(world, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    shutil.copytree(world.music, tmp_path / "music")
    shutil.copy(world.bad["text_as_mp3"], tmp_path / "music" / "lyrics.mp3")
    shutil.copy(world.pages["tall"], tmp_path / "page.png")
    env = {**os.environ, "PYTHONPATH": str(rf.ROOT)}

    def run(module, *args):
        return subprocess.run([sys.executable, "-m", module, *map(str, args), "--bundle", str(world.bundle)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    idx = run("runtime.index", "music", "--out", "lib")
    assert idx.returncode == 0, idx.stderr
    assert idx.stdout.startswith("lib: ")
    assert [x for x in idx.stderr.splitlines() if x.startswith("skipped")] == [
        f"skipped music/lyrics.mp3: {x.split(': ', 1)[1]}" for x in idx.stderr.splitlines() if x.startswith("skipped")]
    q = run("runtime.query", str(tmp_path / "page.png"), "--audio", "music/a/sine_stereo.wav", "--library", "lib",
            "--top-k", "2")
    assert q.returncode == 0, q.stderr
    listed = [x.split("]  ")[-1] for x in q.stdout.splitlines() if "]  " in x]
    assert q.stdout.startswith("page: page.png\n") and "track: music/a/sine_stereo.wav" in q.stdout
    assert len(listed) == 4 and all(x.startswith("music/") for x in listed), q.stdout
    # JSON keeps absolute paths for tracks.
    js = json.loads(run("runtime.query", "page.png", "--library", "lib", "--json").stdout)[0]
    assert all(Path(t["path"]).is_absolute() for t in js["tracks"])


@pytest.mark.parametrize("case, args, expect", [
    ("missing page", ["{root}/nope.png"], "nope.png: no such file"),
    ("corrupt image", ["{bad[corrupt_image]}"], "corrupt.png: not an image"),
    ("truncated image", ["{bad[truncated_image]}"], "truncated.jpg: corrupt or truncated"),
    ("decompression bomb", ["{bad[bomb_image]}"], "bomb.png: image is"),
    ("silent audio", ["--audio", "{bad[silent_audio]}"], "silent.wav: audio is silent"),
    ("zero-length audio", ["--audio", "{bad[empty_audio]}"], "empty.wav: audio file has no samples"),
    ("text named .mp3", ["--audio", "{bad[text_as_mp3]}"], "lyrics.mp3: not a readable audio file (it is a text file, not audio)"),
    ("no query", [], "nothing to query"),
    ("bad option", ["{pages[tall]}", "--top-k", "zero"], "--top-k"),
    ("pages index without audio", ["{pages[tall]}", "--pages-index", "{pages_index}"], "--pages-index"),
    ("missing library", ["{pages[tall]}", "--library", "{root}/nolib"], "nolib: no library here"),
    ("missing bundle", ["{pages[tall]}", "--bundle", "{root}/nobundle"], "nobundle: no bundle here"),
])
def test_query_cli_bad_input_is_one_line_and_exit_2(world, case, args, expect):  # noqa: F811
    fmt = {"root": world.root, "bad": world.bad, "pages": world.pages, "pages_index": world.pages_index}
    argv = [a.format(**fmt) for a in args]
    if "--bundle" not in argv:
        argv += ["--bundle", str(world.bundle)]
    if "--library" not in argv:
        argv += ["--library", str(world.library)]
    line = _one_error_line(run_cli("runtime.query", *argv))
    assert line.startswith("python -m runtime.query: error: ") and expect in line, line


def test_tampered_bundle_is_refused_in_one_line(world, tmp_path):  # noqa: F811
    bundle = shutil.copytree(world.bundle, tmp_path / "bundle")
    rf.tamper(bundle / "image.int8.onnx")
    line = _one_error_line(run_cli("runtime.query", world.pages["tall"], "--bundle", bundle,
                                   "--library", world.library))
    assert "image.int8.onnx: sha256 does not match the manifest" in line


def test_debug_shows_the_traceback(world):  # noqa: F811
    p = run_cli("runtime.query", world.bad["corrupt_image"], "--bundle", world.bundle, "--library",
                world.library, "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr and "InputError" in p.stderr


def test_help_explains_and_exits_0():
    for module in ("runtime.query", "runtime.index"):
        p = run_cli(module, "--help")
        assert p.returncode == 0 and "--bundle" in p.stdout and "Exit status" in p.stdout


# -- index CLI ----------------------------------------------------------------------------------------
def test_index_cli_builds_updates_and_reports(world, tmp_path):  # noqa: F811
    music = shutil.copytree(world.music, tmp_path / "music")
    shutil.copy(world.bad["text_as_mp3"], music / "lyrics.mp3")
    lib = tmp_path / "lib"
    p = run_cli("runtime.index", music, "--out", lib, "--bundle", world.bundle, "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert "5 tracks" in p.stdout and "5 new" in p.stdout and "1 skipped" in p.stdout
    assert re.search(r"embedded [\d.]+ s of audio at [\d.]+x real time", p.stdout)
    assert "skipped" in p.stderr and "lyrics.mp3" in p.stderr
    again = run_cli("runtime.index", music, "--out", lib, "--bundle", world.bundle)
    assert again.returncode == 0 and "5 unchanged" in again.stdout


def test_index_cli_default_out_is_inside_the_music_folder(world, tmp_path):  # noqa: F811
    music = shutil.copytree(world.music, tmp_path / "music")
    p = run_cli("runtime.index", music, "--bundle", world.bundle, "--quiet")
    assert p.returncode == 0 and p.stdout == ""
    Library.open(music / ".manga-music-library").close()


@pytest.mark.parametrize("case", ["no audio", "missing folder", "other bundle", "not a folder"])
def test_index_cli_bad_input_never_damages_the_library(world, tmp_path, case):  # noqa: F811
    lib = shutil.copytree(world.library, tmp_path / "lib")
    before = sorted(p.name for p in lib.rglob("*"))
    bundle = world.bundle
    source = world.music
    if case == "no audio":
        source = world.bad["no_audio_dir"]
    elif case == "missing folder":
        source = tmp_path / "nope"
    elif case == "not a folder":
        source = world.pages["tall"]
    else:
        bundle = rf.write_tiny_bundle(tmp_path / "other", seed=3)
    line = _one_error_line(run_cli("runtime.index", source, "--out", lib, "--bundle", bundle))
    assert line.startswith("python -m runtime.index: error: ")
    assert sorted(p.name for p in lib.rglob("*")) == before
    Library.open(lib, bundle=world.bundle if case != "other bundle" else None).close()


# -- CLI plumbing ---------------------------------------------------------------------------------------
def test_progress_bar_without_tqdm_draws_at_once_names_the_file_in_progress_and_says_time_left(monkeypatch, capsys):
    import runtime.cli as cli
    from runtime.cli import Progress, mmss

    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)  # tqdm is optional
    clock = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])

    def last_line() -> str:
        return capsys.readouterr().err.split("\r")[-1].rstrip()

    bar = Progress(4, "indexing", enabled=True)
    assert last_line() == "indexing [........................] 0/4 files 00:00 elapsed, --:-- left"  # at once
    bar.start("music/first.flac")
    assert last_line().endswith("--:-- left  music/first.flac")  # the file being read, before it is done
    clock[0] += 6.0
    bar.update(1)
    bar.start("second.flac")
    line = last_line()
    assert "1/4 files 00:06 elapsed, 00:18 left  second.flac" in line  # 6 s a file, 3 files to go
    clock[0] += 30.0
    bar.update(3)
    assert "4/4 files 00:36 elapsed, 00:00 left" in last_line()
    bar.close()
    assert capsys.readouterr().err.strip() == ""
    with Progress(3, "quiet", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    assert [mmss(s) for s in (0, 59.4, 75, 3600.2)] == ["00:00", "00:59", "01:15", "60:00"]


def test_indexer_progress_names_each_file_before_it_is_embedded(world, tmp_path):  # noqa: F811
    from runtime.library import build_library

    calls, embedded = [], []
    enc = __import__("runtime.encoders", fromlist=["Encoders"]).Encoders(world.bundle, device="cpu", threads=1)
    build_library(world.music, tmp_path / "lib", enc, progress=lambda *a: calls.append(a),
                  on_file=lambda p: embedded.append((len(calls), p.relative_to(world.music).as_posix())))
    n = len(calls) - 1
    assert n >= 5 and calls[-1] == (n, n, "")
    assert [c[0] for c in calls[:-1]] == list(range(n)) and all(c[1] == n for c in calls)
    # the note of the call made just before a file is embedded is that file
    assert all(calls[k - 1][2] == rel for k, rel in embedded)


def test_synthetic_catalogue_is_a_valid_library(world, tmp_path):  # noqa: F811
    lib = rf.synthetic_library(tmp_path / "synth", world.bundle, 300, windows_per_track=3)
    with Retriever(bundle=world.bundle, library=lib, device="cpu", threads=1) as r:
        res = r.query(world.pages["tall"], top_k=5)
    assert len(res.tracks) == 5 and res.tracks[0].path.endswith(".mp3")
    assert res.tracks[0].best_start_seconds in (0.0, 1.0, 2.0)
