"""A chapter as readers have it: a folder of page images, or a comic archive (.cbz / .zip).

Page order is the natural sort of the names (``page2`` before ``page10``, case-insensitive),
as comic readers order them. Only the chapter's own level holds pages: files in nested
folders, hidden files, macOS resource forks and non-images are ignored (counted, not
read). An archive whose pages all sit in one top-level folder (a common .cbz layout) reads
that folder as its own level.

Archives are untrusted input. Nothing is ever extracted to disk: members are read into
memory one at a time, when the page is embedded. Before any member is read, the archive's
size, its member count and the declared uncompressed size of its pages are checked against
``ChapterLimits`` (a zip bomb is refused from its directory alone); a member whose name
tries to leave the archive (``../``, absolute, drive letters), that is too large, encrypted,
or fails its CRC is skipped with the reason. Pixel counts are bounded by the runtime's own
image guard (``image_preprocess.MAX_PIXELS``, checked from the image header before
decoding), which every page goes through when it is embedded.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError
from ._catalogue import IMAGE_EXTENSIONS

ARCHIVE_EXTENSIONS = (".cbz", ".zip")
_MB = 1 << 20


@dataclass(frozen=True)
class ChapterLimits:
    """Bounds on what a chapter may ask of memory and time."""

    max_pages: int = 2000
    max_members: int = 10_000  # archive entries of any kind
    max_page_bytes: int = 64 * _MB  # one page file, uncompressed
    max_total_bytes: int = 2048 * _MB  # all pages, uncompressed (and the archive file itself)


@dataclass(frozen=True)
class Skipped:
    """A page that could not be used, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class PageFile:
    """One page of a chapter; ``read()`` returns its bytes (raises InputError if it cannot)."""

    name: str
    read: Callable[[], bytes]


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key: digit runs compare as numbers, the rest case-insensitively."""
    parts = _DIGITS.split(name.casefold())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "") + (name,)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class Chapter:
    """The readable pages of a chapter, in reading order, and what was left out."""

    def __init__(self, source: Path, pages: list[PageFile], skipped: list[Skipped], ignored: int,
                 archive: zipfile.ZipFile | None = None):
        self.source = source
        self.pages = tuple(pages)
        self.skipped = list(skipped)  # grows as members fail while being read
        self.ignored = ignored
        self._archive = archive

    def __len__(self) -> int:
        return len(self.pages)

    def __iter__(self) -> Iterator[PageFile]:
        return iter(self.pages)

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def __enter__(self) -> "Chapter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_chapter(path: str | Path, limits: ChapterLimits = ChapterLimits()) -> Chapter:
    """A folder of pages or a .cbz/.zip archive -> ``Chapter`` (raises InputError if it is neither,
    or breaks a limit as a whole)."""
    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if src.is_dir():
        return _folder(src, limits)
    if src.suffix.lower() in ARCHIVE_EXTENSIONS or zipfile.is_zipfile(src):
        return _archive(src, limits)
    raise InputError(f"{src}: not a chapter (give a folder of page images or a .cbz/.zip archive)")


def _check_count(src: Path, n: int, limits: ChapterLimits) -> None:
    if n == 0:
        raise InputError(f"{src}: no page images found (looked for {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    if n > limits.max_pages:
        raise InputError(f"{src}: {n} pages, over the limit of {limits.max_pages} pages per chapter")


def _folder(src: Path, limits: ChapterLimits) -> Chapter:
    pages: list[PageFile] = []
    skipped: list[Skipped] = []
    ignored = 0
    for entry in sorted(src.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith(".") or not entry.is_file() or not _is_image(entry.name):
            ignored += 1
            continue
        size = entry.stat().st_size
        if size > limits.max_page_bytes:
            skipped.append(Skipped(entry.name, _too_big(size, limits)))
            continue
        pages.append(PageFile(entry.name, entry.read_bytes))
    _check_count(src, len(pages), limits)
    return Chapter(src, pages, skipped, ignored)


def _too_big(size: int, limits: ChapterLimits) -> str:
    return f"{size / _MB:.1f} MB, over the {limits.max_page_bytes / _MB:.0f} MB limit for one page"


def unsafe_name(name: str) -> str | None:
    """Why a member name may not be used (it would leave the archive's folder), or None."""
    if "\x00" in name:
        return "member name contains a NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute member path"
    if ".." in norm.split("/"):
        return "member path leaves the archive (..)"
    return None


def _archive(src: Path, limits: ChapterLimits) -> Chapter:
    size = src.stat().st_size
    if size > limits.max_total_bytes:
        raise InputError(f"{src}: archive is {size / _MB:.0f} MB, over the {limits.max_total_bytes / _MB:.0f} MB limit")
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{src}: not a readable zip/cbz archive ({exc})") from None
    try:
        return _archive_pages(src, zf, limits)
    except BaseException:
        zf.close()
        raise


def _archive_pages(src: Path, zf: zipfile.ZipFile, limits: ChapterLimits) -> Chapter:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise InputError(f"{src}: {len(infos)} archive members, over the limit of {limits.max_members}")
    skipped: list[Skipped] = []
    images: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
    ignored = 0
    for info in infos:
        if info.is_dir():
            continue
        why = unsafe_name(info.filename)
        if why is not None:
            if _is_image(info.filename):
                skipped.append(Skipped(info.filename, why))
            else:
                ignored += 1
            continue
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p)
        if not parts or _hidden(parts) or not _is_image(parts[-1]):
            ignored += 1
            continue
        images.append((parts, info))
    # The page level: the archive's root, or its single top-level folder when every root
    # image lives there (``Chapter 1/001.jpg``); deeper folders are extras, ignored.
    roots = {parts[0] for parts, _ in images if len(parts) > 1}
    depth = 1 if any(len(parts) == 1 for parts, _ in images) or len(roots) != 1 else 2
    chosen = [(parts, info) for parts, info in images if len(parts) == depth]
    ignored += len(images) - len(chosen)
    chosen.sort(key=lambda pi: natural_key("/".join(pi[0])))

    pages: list[PageFile] = []
    total = 0
    for parts, info in chosen:
        name = info.filename
        if info.flag_bits & 0x1:
            skipped.append(Skipped(name, "encrypted member"))
            continue
        if info.file_size > limits.max_page_bytes:
            skipped.append(Skipped(name, _too_big(info.file_size, limits)))
            continue
        total += info.file_size
        pages.append(PageFile(name, _member_reader(zf, info, limits)))
    _check_count(src, len(pages), limits)
    if total > limits.max_total_bytes:
        raise InputError(f"{src}: pages add up to {total / _MB:.0f} MB uncompressed, over the "
                         f"{limits.max_total_bytes / _MB:.0f} MB limit (a zip bomb?)")
    return Chapter(src, pages, skipped, ignored, archive=zf)


def _member_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ChapterLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zf.open(info) as f:
                # The directory's size is a claim: read one byte past the limit to catch a lie.
                data = f.read(limits.max_page_bytes + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError) as exc:
            raise InputError(f"{info.filename}: unreadable archive member ({exc})") from None
        if len(data) > limits.max_page_bytes:
            raise InputError(f"{info.filename}: {_too_big(len(data), limits)}")
        return data

    return read
