"""Reading a chapter: folders and .cbz/.zip archives, page order, what is ignored, and the
guards against hostile archives (zip bombs, path traversal, lying headers, encryption)."""
from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from runtime.errors import InputError
from runtime.soundtrack import ChapterLimits, natural_key, open_chapter
from runtime.soundtrack.chapter import unsafe_name


def _png(colour=(200, 10, 10), size=(8, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name) if name.endswith("/") else name, data)
    return path


def _names(ch) -> list[str]:
    return [p.name for p in ch.pages]


def test_natural_sort_is_how_comic_readers_order_pages():
    names = ["page10.png", "Page2.png", "page1.png", "page1b.png", "page002a.png", "cover.png"]
    assert sorted(names, key=natural_key) == ["cover.png", "page1.png", "page1b.png", "Page2.png",
                                              "page002a.png", "page10.png"]


def test_folder_chapter_reads_its_own_level_in_natural_order(tmp_path):
    for name in ("p10.png", "p2.jpg", "P1.PNG"):
        (tmp_path / name).write_bytes(_png())
    (tmp_path / "notes.txt").write_text("not a page")
    (tmp_path / ".thumb.png").write_bytes(_png())
    (tmp_path / "extras").mkdir()
    (tmp_path / "extras" / "p3.png").write_bytes(_png())
    with open_chapter(tmp_path) as ch:
        assert _names(ch) == ["P1.PNG", "p2.jpg", "p10.png"]
        assert ch.ignored == 3 and ch.skipped == []
        assert ch.pages[0].read() == (tmp_path / "P1.PNG").read_bytes()


def test_cbz_reads_pages_in_memory_from_the_root_or_its_single_folder(tmp_path):
    pages = {f"Chapter 1/{i}.png": _png((i * 20, 0, 0)) for i in (1, 2, 10)}
    cbz = _zip(tmp_path / "ch.cbz", {"Chapter 1/": b"", **pages, "Chapter 1/extras/bonus.png": _png(),
                                     "__MACOSX/Chapter 1/._1.png": b"\0" * 10, "ComicInfo.xml": b"<ComicInfo/>"})
    before = set(os.listdir(tmp_path))
    with open_chapter(cbz) as ch:
        assert _names(ch) == ["Chapter 1/1.png", "Chapter 1/2.png", "Chapter 1/10.png"]
        assert ch.ignored == 3  # the nested extra, the resource fork, the XML
        assert [p.read() for p in ch.pages] == [pages[n] for n in _names(ch)]
    assert set(os.listdir(tmp_path)) == before  # nothing extracted
    # Images at the root: the root is the page level and every folder is ignored.
    flat = _zip(tmp_path / "flat.zip", {"b.png": _png(), "a.png": _png(), "sub/c.png": _png()})
    with open_chapter(flat) as ch:
        assert _names(ch) == ["a.png", "b.png"] and ch.ignored == 1


@pytest.mark.parametrize("name", ["../evil.png", "../../tmp/evil.png", "/abs/evil.png", "C:/evil.png",
                                  "ok/../../evil.png", "..\\evil.png"])
def test_path_traversal_members_are_skipped_and_never_written(tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    cbz = _zip(work / "ch.cbz", {"001.png": _png(), name: _png()})
    cwd = os.getcwd()
    os.chdir(work)  # a relative "../evil.png" would land in tmp_path if it were ever written
    try:
        with open_chapter(cbz) as ch:
            assert _names(ch) == ["001.png"]
            assert [s.name for s in ch.skipped] == [name]
            assert "archive" in ch.skipped[0].reason or "absolute" in ch.skipped[0].reason
            [p.read() for p in ch.pages]
    finally:
        os.chdir(cwd)
    assert not list(tmp_path.rglob("evil.png"))
    assert unsafe_name("a/b.png") is None and unsafe_name("x\0.png")


def test_zip_bomb_is_refused_from_the_directory_alone(tmp_path):
    limits = ChapterLimits(max_page_bytes=1 << 20, max_total_bytes=3 << 20)
    zeros = b"\0" * (900 << 10)  # 0.9 MB each, a few KB compressed
    bomb = _zip(tmp_path / "bomb.cbz", {f"{i:03d}.png": zeros for i in range(5)})
    assert bomb.stat().st_size < 50_000
    with pytest.raises(InputError, match=r"pages add up to \d+ MB uncompressed, over the 3 MB limit"):
        open_chapter(bomb, limits)
    # One oversized member is skipped with its size; the others are pages.
    big = _zip(tmp_path / "big.cbz", {"001.png": _png(), "002.png": b"\0" * (2 << 20), "003.png": _png()})
    with open_chapter(big, limits) as ch:
        assert _names(ch) == ["001.png", "003.png"]
        assert ch.skipped[0].name == "002.png" and "over the 1 MB limit" in ch.skipped[0].reason


def _patch_central(path: Path, offset: int, fmt: str, value: int, member: int = 0) -> None:
    """Overwrite one field of a member's central-directory entry (what zipfile trusts)."""
    data = bytearray(path.read_bytes())
    at = -1
    for _ in range(member + 1):
        at = data.index(b"PK\x01\x02", at + 1)
    struct.pack_into(fmt, data, at + offset, value)
    path.write_bytes(bytes(data))


def test_a_member_that_lies_about_its_size_is_read_no_further_and_skipped(tmp_path):
    cbz = _zip(tmp_path / "liar.cbz", {"001.png": b"\0" * (3 << 20), "002.png": _png()})
    _patch_central(cbz, 24, "<I", 1000)  # claims 1000 bytes uncompressed
    with open_chapter(cbz, ChapterLimits(max_page_bytes=1 << 20)) as ch:
        assert _names(ch) == ["001.png", "002.png"]  # the claim passes the directory checks ...
        with pytest.raises(InputError, match="001.png: unreadable archive member"):
            ch.pages[0].read()  # ... the data does not (only 1000 bytes are inflated, then the CRC fails)
        assert ch.pages[1].read() == _png()


def test_encrypted_members_are_skipped(tmp_path):
    cbz = _zip(tmp_path / "enc.cbz", {"001.png": _png(), "002.png": _png()})
    _patch_central(cbz, 8, "<H", 0x1, member=1)  # general purpose flag: encrypted
    with open_chapter(cbz) as ch:
        assert _names(ch) == ["001.png"] and ch.skipped[0].reason == "encrypted member"


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("text", "not a chapter"),
    ("empty folder", "no page images found"),
    ("corrupt cbz", "not a readable zip/cbz archive"),
    ("too many members", "archive members, over the limit of 8"),
    ("too many pages", "pages, over the limit of 4 pages"),
    ("archive too big", "archive is"),
])
def test_bad_chapters_are_one_clear_error(tmp_path, case, message):
    limits = ChapterLimits(max_members=8, max_pages=4)
    path = tmp_path / "x"
    if case == "text":
        path = tmp_path / "x.txt"
        path.write_text("hello")
    elif case == "empty folder":
        path.mkdir()
        (path / "readme.txt").write_text("no pages")
    elif case == "corrupt cbz":
        path = tmp_path / "x.cbz"
        path.write_bytes(b"PK\x03\x04 this is not a zip")
    elif case == "too many members":
        path = _zip(tmp_path / "x.cbz", {f"{i}.txt": b"" for i in range(9)})
    elif case == "too many pages":
        path.mkdir()
        for i in range(5):
            (path / f"{i}.png").write_bytes(_png())
    elif case == "archive too big":
        path = _zip(tmp_path / "x.cbz", {"1.png": _png()}, zipfile.ZIP_STORED)
        limits = ChapterLimits(max_total_bytes=100)
    with pytest.raises(InputError, match=message):
        open_chapter(path, limits)
