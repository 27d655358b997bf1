"""Write synthetic pages and clips to disk in the real data sets' layouts.

The loaders are written against Manga109 and AudioSet as users have them on disk
(``shared/reference/DATASETS.md``); these writers produce small copies in exactly those
layouts, so the demo model's training data goes through the same code path as real data:

* ``write_manga109``: ``books.txt``, ``images/<title>/NNN.jpg``, ``annotations/<title>.xml``
  (Manga109 schema, boxes taken from what was actually drawn) and a ``genres.csv``
  metadata table with ``ENGLISH_NAME,GENRE``;
* ``write_audioset``: an ``ontology.json`` slice, a segments CSV with AudioSet's three
  ``#`` header lines and quoted label lists, and ``clips/<YTID>_<start>.<ext>``;
* ``write_music_library`` / ``write_example_pages``: the demo app's example tracks and
  query pages, each with a small CSV index.

Every item is drawn from its own generator, ``np.random.default_rng([seed, kind, ...])``,
so an item does not depend on how many others were written or in what order, and a
call is reproducible from its seed. Audio bytes of OGG files may differ between runs
(libsndfile picks a random Ogg stream serial number); the decoded samples do not.
"""
from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from runtime.labels import GENRES, MOOD_IDS, MOODS, MUSIC_MOOD_PARENT_ID
from training.synthetic.music import MOOD_SLUGS, render_clip
from training.synthetic.pages import DEFAULT_PAGE_SIZE, PageLayout, render_page_with_layout

__all__ = [
    "AUDIO_FORMATS",
    "MUSIC_ID",
    "book_title",
    "genre_slug",
    "write_audioset",
    "write_example_pages",
    "write_manga109",
    "write_music_library",
]

MUSIC_ID = "/m/04rlf"  # AudioSet "Music"; real mood segments carry it alongside the mood.

# Tags that keep the generators of different writers apart for the same seed.
_TAG_MANGA, _TAG_CHARS, _TAG_AUDIOSET, _TAG_ROWS, _TAG_LIBRARY, _TAG_EXAMPLES = range(1, 7)

AUDIO_FORMATS: dict[str, dict] = {
    # Vorbis at a middling quality: the clips are synthetic tones, and small files keep the
    # demo data and test fixtures light (a 5 s clip is ~30-60 kB).
    "ogg": {"format": "OGG", "subtype": "VORBIS", "compression_level": 0.6},
    "wav": {"format": "WAV", "subtype": "PCM_16"},
    "flac": {"format": "FLAC", "subtype": "PCM_16"},
}


def genre_slug(genre: str) -> str:
    """File-name form of a genre: "four-frame cartoons" -> "four_frame_cartoons"."""
    return re.sub(r"[^a-z0-9]+", "_", genre.lower()).strip("_")


def book_title(genre: str, index: int) -> str:
    """Manga109-style volume title: ("science fiction", 1) -> "SyntheticScienceFiction01"."""
    words = re.split(r"[^A-Za-z0-9]+", genre)
    return "Synthetic" + "".join(w[:1].upper() + w[1:] for w in words if w) + f"{index:02d}"


def _write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str) -> None:
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {sorted(AUDIO_FORMATS)}")
    sf.write(str(path), audio, sample_rate, **AUDIO_FORMATS[fmt])


# --------------------------------------------------------------------------------------
# Manga109
# --------------------------------------------------------------------------------------

_CHARACTER_NAMES = ("主人公", "ヒロイン", "男1", "女1", "男2", "女2", "先生", "ライバル")
_ANIMAL_NAMES = ("犬", "猫", "くま", "うさぎ", "きつね", "たぬき")


class _Ids:
    """Manga109 annotation ids: 8 lowercase hex digits, unique within a book."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> str:
        self.next += 1
        return f"{self.next:08x}"


def _box_attrs(ids: _Ids, box) -> dict[str, str]:
    xmin, ymin, xmax, ymax = box
    return {"id": ids(), "xmin": str(xmin), "ymin": str(ymin), "xmax": str(xmax), "ymax": str(ymax)}


def _render_manga_page(genre: str, rng: np.random.Generator, size, n_characters: int, spread: bool) -> tuple[Image.Image, PageLayout]:
    """One Manga109 image: a single page, or a double-page spread of two pages."""
    if not spread:
        return render_page_with_layout(genre, rng, size, n_characters)
    # Japanese reading order is right to left: the first page goes on the right.
    right, lr = render_page_with_layout(genre, rng, size, n_characters)
    left, ll = render_page_with_layout(genre, rng, size, n_characters)
    w, h = right.size
    image = Image.new("RGB", (2 * w, h))
    image.paste(left, (0, 0))
    image.paste(right, (w, 0))

    def shift(box, dx):
        return (box[0] + dx, box[1], box[2] + dx, box[3])

    merged = PageLayout(genre=genre, width=2 * w, height=h)
    for lay, dx in ((lr, w), (ll, 0)):
        merged.frames += [shift(b, dx) for b in lay.frames]
        merged.texts += [(shift(b, dx), t) for b, t in lay.texts]
        merged.faces += [(shift(b, dx), c) for b, c in lay.faces]
        merged.bodies += [(shift(b, dx), c) for b, c in lay.bodies]
    return image, merged


def write_manga109(
    root,
    pages_per_book: int,
    books_per_genre: int,
    seed: int,
    size: tuple[int, int] = DEFAULT_PAGE_SIZE,
    spread: bool = False,
    jpeg_quality: int = 90,
    n_characters: int = 4,
) -> Path:
    """Write a Manga109-layout copy: ``books_per_genre`` volumes of each of the 12 genres.

    ``size`` is one page's (width, height); ``spread=True`` makes every image a
    double-page spread (two pages side by side, as most real Manga109 images are). The
    genre table is ``genres.csv`` (``ENGLISH_NAME,GENRE``). Returns ``root``.
    """
    if pages_per_book < 1 or books_per_genre < 1:
        raise ValueError("pages_per_book and books_per_genre must be >= 1")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    titles: list[tuple[str, str]] = []
    for gi, genre in enumerate(GENRES):
        for b in range(books_per_genre):
            title = book_title(genre, b + 1)
            titles.append((title, genre))
            ids = _Ids()
            book = ET.Element("book", {"title": title})
            chars = ET.SubElement(book, "characters")
            crng = np.random.default_rng([seed, _TAG_CHARS, gi, b])
            pool = _ANIMAL_NAMES if genre == "animal" else _CHARACTER_NAMES
            names = [pool[int(i)] for i in crng.permutation(len(pool))[:n_characters]]
            names += [f"キャラ{k + 1}" for k in range(len(names), n_characters)]
            char_ids = []
            for name in names:
                cid = ids()
                char_ids.append(cid)
                ET.SubElement(chars, "character", {"id": cid, "name": name})
            pages_el = ET.SubElement(book, "pages")
            img_dir = root / "images" / title
            img_dir.mkdir(parents=True, exist_ok=True)
            for p in range(pages_per_book):
                rng = np.random.default_rng([seed, _TAG_MANGA, gi, b, p])
                image, layout = _render_manga_page(genre, rng, size, n_characters, spread)
                image.save(img_dir / f"{p:03d}.jpg", quality=jpeg_quality)
                page = ET.SubElement(pages_el, "page", {"index": str(p), "width": str(layout.width), "height": str(layout.height)})
                for box in layout.frames:
                    ET.SubElement(page, "frame", _box_attrs(ids, box))
                for box, text in layout.texts:
                    ET.SubElement(page, "text", _box_attrs(ids, box)).text = text
                for box, slot in layout.faces:
                    ET.SubElement(page, "face", {**_box_attrs(ids, box), "character": char_ids[slot % n_characters]})
                for box, slot in layout.bodies:
                    ET.SubElement(page, "body", {**_box_attrs(ids, box), "character": char_ids[slot % n_characters]})
            ET.indent(book)
            # Written by hand to match the released files' declaration (double quotes).
            xml = '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(book, encoding="unicode") + "\n"
            (root / "annotations" / f"{title}.xml").write_text(xml, encoding="utf-8")
    (root / "books.txt").write_text("".join(t + "\n" for t, _ in titles), encoding="utf-8")
    with open(root / "genres.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ENGLISH_NAME", "GENRE"])
        w.writerows(titles)
    return root


# --------------------------------------------------------------------------------------
# AudioSet
# --------------------------------------------------------------------------------------

_YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

_MOOD_DESCRIPTIONS = {
    "Happy music": "Music that evokes a feeling of happiness, joy or cheerfulness.",
    "Funny music": "Music intended to be humorous or to make the listener laugh.",
    "Sad music": "Music that evokes a feeling of sadness, sorrow or melancholy.",
    "Tender music": "Music that is gentle, soft and affectionate in character.",
    "Exciting music": "Music that is thrilling, energetic or stimulating.",
    "Angry music": "Music that expresses or evokes anger, aggression or rage.",
    "Scary music": "Music that evokes fear, dread or suspense.",
}


def _ontology(positive_examples: dict[str, list[str]]) -> list[dict]:
    """The slice of AudioSet's ontology.json the mood task touches, in its schema."""

    def node(id_, name, description, citation="", children=(), restrictions=(), examples=()):
        return {
            "id": id_,
            "name": name,
            "description": description,
            "citation_uri": citation,
            "positive_examples": list(examples),
            "child_ids": list(children),
            "restrictions": list(restrictions),
        }

    nodes = [
        node(MUSIC_ID, "Music", "Music is an art form and cultural activity whose medium is sound and silence. "
             "The common elements of music are pitch, rhythm, dynamics, and the sonic qualities of timbre and texture.",
             "http://en.wikipedia.org/wiki/Music", children=["/m/04szw", "/m/0kpv1t", MUSIC_MOOD_PARENT_ID]),
        node("/m/04szw", "Musical instrument", "An instrument created or adapted to make musical sounds.",
             "http://en.wikipedia.org/wiki/Musical_instrument"),
        node("/m/0kpv1t", "Music genre", "A conventional category that identifies pieces of music as belonging to "
             "a shared tradition or set of conventions.", "http://en.wikipedia.org/wiki/Music_genre"),
        node(MUSIC_MOOD_PARENT_ID, "Music mood", "The emotional character of a piece of music as perceived by the listener.",
             children=list(MOOD_IDS.values()), restrictions=["abstract"]),
    ]
    for mood, mid in MOOD_IDS.items():
        nodes.append(node(mid, mood, _MOOD_DESCRIPTIONS[mood], examples=positive_examples.get(mood, [])))
    return nodes


def _ytids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct fake 11-character YouTube ids (AudioSet's alphabet)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = "".join(_YTID_ALPHABET[int(i)] for i in rng.integers(len(_YTID_ALPHABET), size=11))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write_audioset(
    root,
    clips_per_mood: int,
    seed: int,
    seconds: float = 5.0,
    fmt: str = "ogg",
    sample_rate: int = 44100,
    multi_label_fraction: float = 0.1,
    missing: int = 0,
    csv_name: str = "segments.csv",
) -> Path:
    """Write an AudioSet-layout copy of the 7 music-mood classes. Returns ``root``.

    Each clip is rendered in one (primary) mood and labelled ``/m/04rlf`` (Music) plus
    that mood; about ``multi_label_fraction`` of the rows also carry a second mood, as
    real AudioSet labels sometimes do. Rows are ``YTID, start, end, "labels"`` with
    ``end = start + seconds`` (AudioSet's segments are 10 s; pass ``seconds=10`` for
    that); audio goes to ``clips/<YTID>_<start>.<fmt>`` with start written as in the
    CSV (``30.000``). The last ``missing`` rows get no audio file, to exercise loaders'
    skip-and-count path. ``synthetic_truth.csv`` (not part of AudioSet) records each
    clip's primary mood.
    """
    if clips_per_mood < 1:
        raise ValueError("clips_per_mood must be >= 1")
    root = Path(root)
    clip_dir = root / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    meta = np.random.default_rng([seed, _TAG_ROWS])
    n = clips_per_mood * len(MOODS)
    ytids = _ytids(meta, n)
    starts = meta.integers(0, 30, size=n) * 10  # AudioSet segments start on whole seconds
    rows, truth = [], []
    examples: dict[str, list[str]] = {m: [] for m in MOODS}
    label_ids: set[str] = set()
    n_labels = 0
    for mi, mood in enumerate(MOODS):
        for c in range(clips_per_mood):
            k = mi * clips_per_mood + c
            rng = np.random.default_rng([seed, _TAG_AUDIOSET, mi, c])
            labels = [MUSIC_ID, MOOD_IDS[mood]]
            if rng.random() < multi_label_fraction:
                other = [m for m in MOODS if m != mood]
                labels.append(MOOD_IDS[other[int(rng.integers(len(other)))]])
            start = f"{starts[k]:.3f}"
            end = f"{starts[k] + seconds:.3f}"
            rows.append(f'{ytids[k]}, {start}, {end}, "{",".join(labels)}"')
            label_ids.update(labels)
            n_labels += len(labels)
            name = f"{ytids[k]}_{start}.{fmt}"
            truth.append((name, mood))
            if len(examples[mood]) < 3:
                examples[mood].append(f"youtu.be/{ytids[k]}?start={int(starts[k])}&end={int(starts[k] + seconds)}")
            if k < n - missing:
                _write_audio(clip_dir / name, render_clip(mood, rng, seconds, sample_rate), sample_rate, fmt)
    header = [
        # A fixed creation date keeps the file byte-identical for a given seed.
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        f"# num_ytids={n}, num_segs={n}, num_unique_labels={len(label_ids)}, num_positive_labels={n_labels}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    (root / csv_name).write_text("\n".join(header + rows) + "\n", encoding="utf-8")
    (root / "ontology.json").write_text(json.dumps(_ontology(examples), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(root / "synthetic_truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "mood"])
        w.writerows(truth)
    return root


# --------------------------------------------------------------------------------------
# Demo app assets
# --------------------------------------------------------------------------------------


def write_music_library(
    root,
    tracks_per_mood: int,
    seed: int,
    seconds: tuple[float, float] = (8.0, 20.0),
    sample_rate: int = 44100,
    fmt: str = "ogg",
) -> Path:
    """Write example tracks for the demo library: ``<mood>_NN.<fmt>`` (e.g. ``sad_01.ogg``).

    Each track is one mood throughout and lasts uniformly within ``seconds`` (longer than
    one 5 s analysis window). ``library.csv`` lists ``file,mood,seconds``. Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lo, hi = seconds
    rows = []
    for mi, mood in enumerate(MOODS):
        for t in range(tracks_per_mood):
            rng = np.random.default_rng([seed, _TAG_LIBRARY, mi, t])
            dur = round(float(rng.uniform(lo, hi)), 2)
            name = f"{MOOD_SLUGS[mood]}_{t + 1:02d}.{fmt}"
            _write_audio(root / name, render_clip(mood, rng, dur, sample_rate), sample_rate, fmt)
            rows.append((name, mood, f"{dur:.2f}"))
    with open(root / "library.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "mood", "seconds"])
        w.writerows(rows)
    return root


def write_example_pages(
    root,
    n_per_genre: int,
    seed: int,
    size: tuple[int, int] = DEFAULT_PAGE_SIZE,
    fmt: str = "jpg",
) -> Path:
    """Write example query pages: ``<genre_slug>_NN.<fmt>`` (jpg or png), plus
    ``pages.csv`` listing ``file,genre``. Returns ``root``."""
    if fmt not in ("jpg", "png"):
        raise ValueError("fmt must be 'jpg' or 'png'")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for gi, genre in enumerate(GENRES):
        for k in range(n_per_genre):
            rng = np.random.default_rng([seed, _TAG_EXAMPLES, gi, k])
            image, _ = render_page_with_layout(genre, rng, size)
            name = f"{genre_slug(genre)}_{k + 1:02d}.{fmt}"
            image.save(root / name, **({"quality": 90} if fmt == "jpg" else {}))
            rows.append((name, genre))
    with open(root / "pages.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "genre"])
        w.writerows(rows)
    return root
