"""Manga109 as it comes on disk: volumes, their annotations, and pages labelled by genre.

Layout (a release folder such as ``Manga109_released_2021_12_30/``)::

    books.txt                    one volume title per line
    images/<title>/000.jpg ...   pages, three-digit zero-padded
    annotations/<title>.xml      <book title> <characters/> <pages><page index width height>
                                 with <frame>/<text>/<face>/<body> boxes

Genre is not in the XML; it comes from a CSV the user passes: the metadata table (columns
``ENGLISH_NAME`` and ``GENRE``, others ignored) or a plain ``title,genre`` file, with or
without a header. Volumes that cannot be given a genre (or have no page images) are named
in one list, `Manga109.unplaced`, and either warned about or, with strict=True, refused.
The XML is parsed here with xml.etree (the manga109api package is not a dependency).
"""
from __future__ import annotations

import csv
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from runtime.errors import InputError
from runtime.labels import GENRES
from training.data.augment import image_eval_transform, item_rng
from training.data.splits import Split, grouped_partition, make_split, stratified_partition

# ---------------------------------------------------------------------------- genres


def _genre_key(raw: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", raw.casefold()).split())


# Canonical names (hyphen-insensitive) plus a few spellings seen in the wild. Deliberately
# small and explicit: "romance" or "comedy" alone are ambiguous between two genres and are
# refused rather than guessed.
_GENRE_BY_KEY: dict[str, str] = {_genre_key(g): g for g in GENRES}
_GENRE_BY_KEY.update(
    {
        "four frame cartoon": "four-frame cartoons",
        "four frame": "four-frame cartoons",
        "4 frame": "four-frame cartoons",
        "4 frame cartoons": "four-frame cartoons",
        "4 koma": "four-frame cartoons",
        "yonkoma": "four-frame cartoons",
        "sci fi": "science fiction",
        "scifi": "science fiction",
        "sf": "science fiction",
        "rom com": "romantic comedy",
        "romcom": "romantic comedy",
    }
)


def normalize_genre(raw: str) -> Optional[str]:
    """The GENRES name for a spelling from a metadata table, or None if not recognised."""
    return _GENRE_BY_KEY.get(_genre_key(raw))


def _title_key(title: str) -> str:
    # "Aisazu Niha Irarenai" in a hand-made table should still find "AisazuNihaIrarenai".
    return re.sub(r"[^0-9a-z]", "", title.casefold())


def read_books(root: Union[str, os.PathLike]) -> list[str]:
    """Volume titles from ``<root>/books.txt``, in file order."""
    path = Path(root) / "books.txt"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: not found (is {root} a Manga109 release folder?)") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_genre_table(csv_path: Union[str, os.PathLike]) -> dict[str, str]:
    """title -> genre (one of runtime.labels.GENRES) from a metadata or title,genre CSV.

    A row with an empty genre is skipped (its volume will be reported as unplaced); a genre
    that is not recognised, or a title given two genres, is an error naming the row.
    """
    path = Path(csv_path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), start=1)]
    except FileNotFoundError:
        raise InputError(f"{path}: genre table not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None
    rows = [(n, row) for n, row in rows if any(row)]
    if not rows:
        raise InputError(f"{path}: empty genre table")

    first_n, first = rows[0]
    upper = [c.upper() for c in first]
    if "ENGLISH_NAME" in upper and "GENRE" in upper:
        title_col, genre_col, body = upper.index("ENGLISH_NAME"), upper.index("GENRE"), rows[1:]
    elif len(first) >= 2 and normalize_genre(first[1]) is not None:
        title_col, genre_col, body = 0, 1, rows
    elif len(first) >= 2 and first[1].casefold() == "genre":
        title_col, genre_col, body = 0, 1, rows[1:]
    else:
        raise InputError(
            f"{path}: row {first_n}: expected a header with ENGLISH_NAME and GENRE, a 'title,genre' "
            f"header, or a first row 'title,<genre>'; got {first!r}"
        )

    table: dict[str, str] = {}
    for n, row in body:
        if len(row) <= max(title_col, genre_col):
            raise InputError(f"{path}: row {n}: too few columns: {row!r}")
        title, raw = row[title_col], row[genre_col]
        if not title:
            raise InputError(f"{path}: row {n}: empty title")
        if not raw:
            continue
        genre = normalize_genre(raw)
        if genre is None:
            raise InputError(
                f"{path}: row {n}: unknown genre {raw!r} for {title!r}; expected one of: {', '.join(GENRES)}"
            )
        if table.setdefault(title, genre) != genre:
            raise InputError(f"{path}: row {n}: {title!r} is given two genres, {table[title]!r} and {genre!r}")
    return table


# ---------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Box:
    """A frame (panel): an axis-aligned box in page pixels, id an 8-digit hex string."""

    id: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int

    @property
    def width(self) -> int:
        return self.xmax - self.xmin

    @property
    def height(self) -> int:
        return self.ymax - self.ymin


@dataclass(frozen=True)
class TextBox(Box):
    """A speech balloon or caption and its transcribed (Japanese) text."""

    text: str


@dataclass(frozen=True)
class CharacterBox(Box):
    """A face or body box and the id of the character it shows."""

    character: str


@dataclass(frozen=True)
class Character:
    id: str
    name: str


@dataclass(frozen=True)
class PageAnnotation:
    index: int
    width: int
    height: int
    frames: tuple[Box, ...]
    texts: tuple[TextBox, ...]
    faces: tuple[CharacterBox, ...]
    bodies: tuple[CharacterBox, ...]


@dataclass(frozen=True)
class BookAnnotation:
    title: str
    characters: tuple[Character, ...]
    pages: tuple[PageAnnotation, ...]

    def page(self, index: int) -> PageAnnotation:
        for p in self.pages:
            if p.index == index:
                return p
        raise KeyError(f"{self.title}: no page {index}")


def _attr(el: ET.Element, name: str, where: str) -> str:
    value = el.get(name)
    if value is None:
        raise InputError(f"{where}: <{el.tag}> has no '{name}' attribute")
    return value


def _int_attr(el: ET.Element, name: str, where: str) -> int:
    raw = _attr(el, name, where)
    try:
        return int(raw)
    except ValueError:
        try:
            # Some re-exports write coordinates as "12.0"; they are still pixel integers.
            return int(float(raw))
        except ValueError:
            raise InputError(f"{where}: <{el.tag}> attribute {name}={raw!r} is not a number") from None


def _box_fields(el: ET.Element, where: str) -> dict:
    return {
        "id": _attr(el, "id", where),
        **{k: _int_attr(el, k, where) for k in ("xmin", "ymin", "xmax", "ymax")},
    }


def parse_annotation(xml_path: Union[str, os.PathLike]) -> BookAnnotation:
    """Parse one ``annotations/<title>.xml``. Unknown elements are ignored (later releases)."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise InputError(f"{path}: malformed XML ({e})") from None
    if root.tag != "book":
        raise InputError(f"{path}: root element is <{root.tag}>, expected <book>")
    title = root.get("title") or path.stem

    characters = tuple(
        Character(_attr(c, "id", str(path)), c.get("name", ""))
        for c in root.iterfind("characters/character")
    )
    pages = []
    for p in root.iterfind("pages/page"):
        index = _int_attr(p, "index", str(path))
        where = f"{path}: page {index}"
        frames, texts, faces, bodies = [], [], [], []
        for el in p:
            if el.tag == "frame":
                frames.append(Box(**_box_fields(el, where)))
            elif el.tag == "text":
                texts.append(TextBox(**_box_fields(el, where), text=el.text or ""))
            elif el.tag == "face":
                faces.append(CharacterBox(**_box_fields(el, where), character=_attr(el, "character", where)))
            elif el.tag == "body":
                bodies.append(CharacterBox(**_box_fields(el, where), character=_attr(el, "character", where)))
        pages.append(
            PageAnnotation(
                index=index,
                width=_int_attr(p, "width", where),
                height=_int_attr(p, "height", where),
                frames=tuple(frames),
                texts=tuple(texts),
                faces=tuple(faces),
                bodies=tuple(bodies),
            )
        )
    return BookAnnotation(title=title, characters=characters, pages=tuple(pages))


# ---------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class PageRecord:
    """One page image and its volume's genre."""

    title: str
    index: int
    path: Path
    genre: str
    genre_index: int

    @property
    def target(self) -> int:
        return self.genre_index


@dataclass(frozen=True)
class UnplacedVolume:
    """A listed volume that yields no training pages, and why."""

    title: str
    reason: str


_PAGE_FILE = re.compile(r"^(\d{3,})\.jpe?g$", re.IGNORECASE)


def page_files(folder: Path) -> list[tuple[int, Path]]:
    """(page index, path) of ``NNN.jpg`` files in a volume folder, by index."""
    pages = []
    for entry in os.scandir(folder):
        m = _PAGE_FILE.match(entry.name)
        if m and entry.is_file():
            pages.append((int(m.group(1)), Path(entry.path)))
    return sorted(pages)


class Manga109:
    """Pages of a Manga109 release with their genres.

    `records` (tuple of PageRecord, by volume in books order then page), `titles` (placed
    volumes), `unplaced` (tuple of UnplacedVolume). `books` restricts the volumes (default:
    books.txt). strict=True raises InputError naming every unplaced volume; otherwise one
    warning names them all.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        genre_csv: Union[str, os.PathLike],
        books: Optional[Sequence[str]] = None,
        strict: bool = False,
    ):
        self.root = Path(root)
        self.genre_table = read_genre_table(genre_csv)
        titles = list(books) if books is not None else read_books(self.root)

        by_key: dict[str, Optional[str]] = {}
        for t, g in self.genre_table.items():
            k = _title_key(t)
            # Two table titles that only differ in spacing/case but disagree: don't guess.
            by_key[k] = g if by_key.get(k, g) == g else None

        records: list[PageRecord] = []
        placed: list[str] = []
        unplaced: list[UnplacedVolume] = []
        for title in titles:
            genre = self.genre_table.get(title) or by_key.get(_title_key(title))
            if genre is None:
                unplaced.append(UnplacedVolume(title, f"no genre for it in {genre_csv}"))
                continue
            folder = self.root / "images" / title
            pages = page_files(folder) if folder.is_dir() else []
            if not pages:
                unplaced.append(UnplacedVolume(title, f"no NNN.jpg pages in {folder}"))
                continue
            g_idx = GENRES.index(genre)
            records.extend(PageRecord(title, i, p, genre, g_idx) for i, p in pages)
            placed.append(title)

        self.records: tuple[PageRecord, ...] = tuple(records)
        self.titles: tuple[str, ...] = tuple(placed)
        self.unplaced: tuple[UnplacedVolume, ...] = tuple(unplaced)
        if unplaced:
            message = f"Manga109 at {self.root}: {len(unplaced)} volume(s) cannot be placed: " + "; ".join(
                f"{u.title} ({u.reason})" for u in unplaced
            )
            if strict:
                raise InputError(message)
            warnings.warn(message, stacklevel=2)

    @property
    def unplaced_titles(self) -> tuple[str, ...]:
        return tuple(u.title for u in self.unplaced)

    def genre_counts(self) -> dict[str, int]:
        """Pages per genre (what a stratified split balances)."""
        return dict(Counter(r.genre for r in self.records))

    def annotation(self, title: str) -> BookAnnotation:
        return parse_annotation(self.root / "annotations" / f"{title}.xml")

    def split(self, val_fraction: float = 0.2, seed: int = 0, level: str = "page") -> Split[PageRecord]:
        return page_split(self.records, val_fraction, seed, level)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Manga109({str(self.root)!r}: {len(self.records)} pages, {len(self.titles)} volumes)"


def page_split(
    records: Sequence[PageRecord], val_fraction: float = 0.2, seed: int = 0, level: str = "page"
) -> Split[PageRecord]:
    """Deterministic train/val split of pages, stratified by genre.

    level="page" (the paper's protocol): pages are drawn at random per genre; pages of one
    volume end up on both sides, so a model can score by recognising the volume's art.
    level="volume": whole volumes are drawn per genre, no volume on both sides; this measures
    genre. val_fraction then counts volumes, so the page fraction only approximates it.
    """
    records = list(records)
    strata = [r.genre for r in records]
    if level == "page":
        train, val = stratified_partition([(r.title, r.index) for r in records], strata, val_fraction, seed)
    elif level == "volume":
        train, val = grouped_partition([r.title for r in records], strata, val_fraction, seed)
    else:
        raise ValueError(f"level must be 'page' or 'volume', got {level!r}")
    return make_split(records, train, val, level, seed, val_fraction)


# ---------------------------------------------------------------------------- torch


def load_page_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Decode a page to an RGB PIL image; the one place training reads images.

    Goes through the runtime's loader so training and serving decode identically; falls back
    to PIL directly while runtime.image_preprocess is not present (parallel development).
    """
    try:
        from runtime.image_preprocess import load_image
    except ModuleNotFoundError as e:
        if e.name != "runtime.image_preprocess":
            raise
    else:
        return load_image(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read image ({e})") from None


class PageDataset(Dataset):
    """(image tensor [3, S, S] float32, class index) for records with .path and .target.

    Works for PageRecord (target = genre index) and folders.FolderRecord alike. The
    transform is called as ``transform(img, rng)`` with a per-item generator (see
    augment.item_rng); the default is CLIP's evaluation transform.
    """

    def __init__(
        self,
        records: Iterable,
        transform: Optional[Callable[[Image.Image, np.random.Generator], np.ndarray]] = None,
        seed: Optional[int] = None,
    ):
        self.records = tuple(records)
        self.transform: Callable = transform if transform is not None else image_eval_transform()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Seeded augmentation varies by epoch only when told the epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        record = self.records[i]
        img = load_page_image(record.path)
        rng = item_rng(self.seed, self.epoch, i)
        x = self.transform(img, rng)
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32), int(record.target)


__all__ = [
    "read_books",
    "read_genre_table",
    "normalize_genre",
    "Box",
    "TextBox",
    "CharacterBox",
    "Character",
    "PageAnnotation",
    "BookAnnotation",
    "parse_annotation",
    "PageRecord",
    "UnplacedVolume",
    "Manga109",
    "page_split",
    "load_page_image",
    "PageDataset",
]
