"""``python -m runtime.soundtrack``: the cue sheet as text, JSON and .m3u8, pages that cannot be
read skipped with their reason, and the bad-input contract (exit 2, one line on stderr)."""
from __future__ import annotations

import json
import re
import shutil
import zipfile

import pytest

import runtime_fixtures as rf
from runtime_fixtures import run_cli, world  # noqa: F401  (session fixture)

PROG = "python -m runtime.soundtrack"


@pytest.fixture(scope="module")
def chapters(world, tmp_path_factory):  # noqa: F811
    """A folder chapter (9 pages, two looks) and the same pages in a .cbz with hostile extras."""
    root = tmp_path_factory.mktemp("chapters")
    folder = root / "ch1"
    folder.mkdir()
    order = ["tall"] * 5 + ["spread"] * 4
    for i, key in enumerate(order, 1):
        src = world.pages[key]
        shutil.copy(src, folder / f"page{i}{src.suffix}")
    cbz = root / "ch1.cbz"
    with zipfile.ZipFile(cbz, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"Chapter 1/{p.name}")
        zf.writestr("Chapter 1/page4b.png", rf.bomb_png())  # 400 megapixels in a few hundred bytes
        zf.writestr("Chapter 1/page4c.png", world.bad["corrupt_image"].read_bytes())
        zf.writestr("../../escape.png", rf.bomb_png())
        zf.writestr("Chapter 1/ComicInfo.xml", "<ComicInfo/>")
    return {"folder": folder, "cbz": cbz, "pages": len(order)}


def _common(world):  # noqa: F811
    return ["--bundle", str(world.bundle), "--library", str(world.library), "--device", "cpu", "--threads", "1"]


def test_text_cue_sheet(world, chapters):  # noqa: F811
    p = run_cli("runtime.soundtrack", chapters["folder"], *_common(world), "--seconds-per-page", "4")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines[0] == f"chapter: {chapters['folder']}  (9 pages at 4 s: 00:36 of reading)"
    segs = [l for l in lines if l.startswith("segment ")]
    assert segs[0].startswith("segment 1: pages 1-") and re.search(r"-9  \(\d\d:\d\d-00:36\)$", segs[-1])
    plays = [l for l in lines if l.startswith("  ")]
    assert plays and all(re.match(r"^  \d\d:\d\d  \S.* from \d\d:\d\d(  crossfade \d\.\d s)?  \((start|story change|"
                                  r"track ended)\)$", l) for l in plays), plays
    assert "(start)" in plays[0]


def test_json_m3u8_and_skipped_members_from_an_archive(world, chapters, tmp_path):  # noqa: F811
    playlist = tmp_path / "lists" / "ch1.m3u8"
    p = run_cli("runtime.soundtrack", chapters["cbz"], *_common(world), "--json", "--m3u8", playlist,
                "--switch-cost", "2", "--min-pages", "2")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["type"] == "soundtrack" and d["pages"] == chapters["pages"]
    assert d["page_names"][:2] == ["Chapter 1/page1.png", "Chapter 1/page2.png"]
    assert d["settings"]["switch_cost"] == 2 and d["settings"]["min_pages"] == 2
    assert d["ignored"] == 1  # ComicInfo.xml
    skipped = {s["name"]: s["reason"] for s in d["skipped"]}
    assert re.search(r"megapixel limit|decompression bomb guard", skipped["Chapter 1/page4b.png"])
    assert "not an image" in skipped["Chapter 1/page4c.png"]
    assert "leaves the archive" in skipped["../../escape.png"]
    assert sorted(l.split(":")[0] for l in p.stderr.splitlines() if l.startswith("skipped ")) == sorted(
        f"skipped {n}" for n in skipped)
    covered = [(s["first_page"], s["last_page"]) for s in d["segments"]]
    assert covered[0][0] == 1 and covered[-1][1] == chapters["pages"]
    assert all(b[0] == a[1] + 1 for a, b in zip(covered, covered[1:]))
    text = playlist.read_text(encoding="utf-8")
    plays = [pl for s in d["segments"] for pl in s["plays"]]
    assert text.startswith("#EXTM3U\n") and text.count("#EXTINF:") == len(plays)
    assert not list(tmp_path.rglob("*.tmp"))


def test_help_has_examples_and_exit_status():
    p = run_cli("runtime.soundtrack", "--help")
    assert p.returncode == 0
    assert "examples:" in p.stdout and "--switch-cost" in p.stdout and "Exit status" in p.stdout


@pytest.mark.parametrize("case, args, expect", [
    ("missing chapter", ["{root}/nope"], "nope: no such file or folder"),
    ("not a chapter", ["{bad[text_as_mp3]}"], "not a chapter"),
    ("no pages", ["{bad[no_audio_dir]}"], "no page images found"),
    ("bad seconds", ["{folder}", "--seconds-per-page", "0"], "--seconds-per-page"),
    ("bad cost", ["{folder}", "--switch-cost", "-1"], "--switch-cost"),
    ("missing library", ["{folder}", "--library", "{root}/nolib"], "nolib: no library here"),
    ("playlist is a folder", ["{folder}", "--m3u8", "{root}"], "is a folder"),
])
def test_bad_input_is_one_line_and_exit_2(world, chapters, case, args, expect):  # noqa: F811
    fmt = {"root": world.root, "bad": world.bad, "folder": chapters["folder"]}
    argv = [a.format(**fmt) for a in args]
    if "--library" not in argv:
        argv += ["--library", str(world.library)]
    p = run_cli("runtime.soundtrack", *argv, "--bundle", world.bundle)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"{PROG}: error: ") and expect in lines[0], lines[0]


def test_a_chapter_with_no_readable_page_is_an_error(world, tmp_path):  # noqa: F811
    (tmp_path / "001.png").write_bytes(world.bad["corrupt_image"].read_bytes())
    p = run_cli("runtime.soundtrack", tmp_path, *_common(world))
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == f"{PROG}: error: {tmp_path}: none of its 1 pages could be read"
