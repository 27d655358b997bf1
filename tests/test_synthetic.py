"""Tests for the synthetic data generator (training/synthetic).

Three things matter for the demo model: the generator is deterministic given a seed, its
files are in the real data sets' on-disk formats (so the real loaders read them), and
its classes are learnable. Learnability is checked with deliberately weak models (32x32
grey pixels or a dozen spectral statistics, nearest class centroid): if those separate
the classes well above chance, a small CNN / audio encoder will too.
"""
from __future__ import annotations

import csv
import json
import re
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from runtime.labels import GENRES, MOOD_IDS, MOODS, MUSIC_MOOD_PARENT_ID
from training.synthetic import (
    render_clip,
    render_page,
    render_page_with_layout,
    write_audioset,
    write_example_pages,
    write_manga109,
    write_music_library,
)
from training.synthetic.layouts import book_title

SR = 44100


def _nearest_centroid_accuracy(X: np.ndarray, y: np.ndarray, train: np.ndarray, n_classes: int, standardise: bool) -> float:
    if standardise:  # features on different scales (dB vs rates) need equal say
        mu, sd = X[train].mean(0), X[train].std(0) + 1e-6
        X = (X - mu) / sd
    centroids = np.stack([X[train & (y == c)].mean(0) for c in range(n_classes)])
    d = ((X[~train][:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((d.argmin(1) == y[~train]).mean())


# --------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("genre", GENRES)
def test_render_page_is_deterministic_and_grey_rgb(genre):
    a = render_page(genre, np.random.default_rng(7))
    b = render_page(genre, np.random.default_rng(7))
    c = render_page(genre, np.random.default_rng(8))
    assert a.mode == "RGB" and a.size == (320, 448)
    arr = np.asarray(a)
    assert np.array_equal(arr, np.asarray(b))
    assert not np.array_equal(arr, np.asarray(c))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


@pytest.mark.parametrize("size", [(160, 224), (96, 96), (827, 1170)])
def test_render_page_any_size(size):
    for genre in ("battle", "love romance", "four-frame cartoons"):
        img, layout = render_page_with_layout(genre, np.random.default_rng(0), size)
        assert img.size == size and (layout.width, layout.height) == size


def test_render_page_rejects_unknown_genre():
    with pytest.raises(ValueError):
        render_page("western", np.random.default_rng(0))


def test_layout_boxes_are_inside_the_page_and_their_frames():
    rng = np.random.default_rng(3)
    for genre in GENRES:
        _, lay = render_page_with_layout(genre, rng)
        assert lay.frames, genre
        for x0, y0, x1, y1 in lay.frames:
            assert 0 <= x0 < x1 <= lay.width and 0 <= y0 < y1 <= lay.height
        for box, _ in lay.texts + lay.faces + lay.bodies:
            # Each drawn object lies within (the bounding box of) some panel.
            assert any(f[0] <= box[0] and f[1] <= box[1] and box[2] <= f[2] and box[3] <= f[3] for f in lay.frames), (genre, box)
        if genre == "four-frame cartoons":
            assert len(lay.frames) in (4, 8)
            heights = {f[3] - f[1] for f in lay.frames}
            assert max(heights) - min(heights) <= 2  # four equal frames


def test_four_frame_panels_are_equal_and_stacked():
    _, lay = render_page_with_layout("four-frame cartoons", np.random.default_rng(1))
    ys = sorted({f[1] for f in lay.frames})
    assert len(ys) == 4


def test_pages_are_learnable_from_32px_pixels():
    """12 genres x (20 train + 10 test) pages; nearest centroid on 32x32 grey pixels of
    the centre square (what a resize + centre-crop pipeline keeps)."""
    n_train, n_test = 20, 10
    X, y = [], []
    t0 = time.perf_counter()
    for gi, genre in enumerate(GENRES):
        rng = np.random.default_rng([2024, gi])
        for _ in range(n_train + n_test):
            g = render_page(genre, rng).convert("L")
            w, h = g.size
            s = min(w, h)
            g = g.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((32, 32), Image.BILINEAR)
            X.append(np.asarray(g, np.float32).ravel() / 255.0)
            y.append(gi)
    per_page_ms = (time.perf_counter() - t0) / len(X) * 1000
    X, y = np.stack(X), np.array(y)
    train = np.tile(np.arange(n_train + n_test) < n_train, len(GENRES))
    acc = _nearest_centroid_accuracy(X, y, train, len(GENRES), standardise=False)
    print(f"\npages: nearest-centroid on 32x32 centre crop, held-out accuracy {acc:.3f} "
          f"(chance {1 / len(GENRES):.3f}); {per_page_ms:.1f} ms/page incl. features")
    assert acc >= 0.70


# --------------------------------------------------------------------------------------
# Music
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mood", MOODS)
def test_render_clip_shape_range_determinism(mood):
    a = render_clip(mood, np.random.default_rng(5))
    b = render_clip(mood, np.random.default_rng(5))
    c = render_clip(mood, np.random.default_rng(6))
    assert a.dtype == np.float32 and a.ndim == 1 and a.shape == (5 * SR,)
    assert np.isfinite(a).all() and np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.05
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_clip_other_lengths_and_rates():
    x = render_clip("Scary music", np.random.default_rng(0), seconds=1.3, sample_rate=16000)
    assert x.shape == (round(1.3 * 16000),)
    y = render_clip("Exciting music", np.random.default_rng(0), seconds=12.0, sample_rate=22050)
    assert y.shape == (12 * 22050,) and np.abs(y).max() <= 1.0
    with pytest.raises(ValueError):
        render_clip("Calm music", np.random.default_rng(0))


def _audio_features(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """Log band energies (relative), level, crest factor, onset rate, spectral flux."""
    hop, nfft = 1024, 2048
    frames = (len(x) - nfft) // hop + 1
    idx = np.arange(nfft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(nfft).astype(np.float32), axis=1)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1 / sr)
    edges = np.geomspace(40, 16000, 13)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    logb = np.log(bands + 1e-8)
    relative = logb.mean(0) - np.log(bands.sum(1) + 1e-8).mean()
    flux = np.maximum(np.diff(logb, axis=0), 0).sum(1)
    thr = flux.mean() + flux.std()
    peaks = (flux[1:-1] > thr) & (flux[1:-1] >= flux[:-2]) & (flux[1:-1] >= flux[2:])
    rms = float(np.sqrt(np.mean(x * x)))
    return np.concatenate([relative, [np.log(rms + 1e-8), np.log(np.abs(x).max() / (rms + 1e-8)),
                                      peaks.sum() / (len(x) / sr), flux.mean()]])


def test_music_is_learnable_from_spectral_statistics():
    """7 moods x (20 train + 10 test) 5 s clips; nearest centroid on 16 standardised
    spectral statistics."""
    n_train, n_test = 20, 10
    X, y = [], []
    render_s = 0.0
    for mi, mood in enumerate(MOODS):
        rng = np.random.default_rng([2024, mi])
        for _ in range(n_train + n_test):
            t0 = time.perf_counter()
            x = render_clip(mood, rng)
            render_s += time.perf_counter() - t0
            X.append(_audio_features(x))
            y.append(mi)
    X, y = np.stack(X), np.array(y)
    train = np.tile(np.arange(n_train + n_test) < n_train, len(MOODS))
    acc = _nearest_centroid_accuracy(X, y, train, len(MOODS), standardise=True)
    print(f"\nmusic: nearest-centroid on spectral stats, held-out accuracy {acc:.3f} "
          f"(chance {1 / len(MOODS):.3f}); {render_s / len(X) * 1000:.1f} ms per 5 s clip")
    assert acc >= 0.80


# --------------------------------------------------------------------------------------
# On-disk layouts
# --------------------------------------------------------------------------------------


def _tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_manga109_layout_and_schema(tmp_path):
    root = write_manga109(tmp_path / "m109", pages_per_book=2, books_per_genre=1, seed=11)
    titles = (root / "books.txt").read_text(encoding="utf-8").splitlines()
    assert titles == [book_title(g, 1) for g in GENRES]
    assert "SyntheticAnimal01" in titles and "SyntheticFourFrameCartoons01" in titles
    with open(root / "genres.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ENGLISH_NAME", "GENRE"]
    assert {r["ENGLISH_NAME"]: r["GENRE"] for r in rows} == dict(zip(titles, GENRES))
    hexid = re.compile(r"^[0-9a-f]{8}$")
    for title in titles:
        text = (root / "annotations" / f"{title}.xml").read_text(encoding="utf-8")
        assert text.startswith('<?xml version="1.0" encoding="utf-8"?>')
        book = ET.fromstring(text.encode("utf-8"))
        assert book.tag == "book" and book.get("title") == title
        chars = book.find("characters").findall("character")
        char_ids = {c.get("id") for c in chars}
        assert chars and all(hexid.match(c.get("id")) and c.get("name") for c in chars)
        pages = book.find("pages").findall("page")
        assert [p.get("index") for p in pages] == ["0", "1"]
        seen: set[str] = set(char_ids)
        for page in pages:
            img_path = root / "images" / title / f"{int(page.get('index')):03d}.jpg"
            with Image.open(img_path) as im:
                assert im.format == "JPEG"
                assert im.size == (int(page.get("width")), int(page.get("height")))
            assert page.findall("frame"), title
            for el in page:
                assert el.tag in ("frame", "text", "face", "body")
                assert hexid.match(el.get("id")) and el.get("id") not in seen
                seen.add(el.get("id"))
                x0, y0, x1, y1 = (int(el.get(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                assert 0 <= x0 < x1 <= int(page.get("width")) and 0 <= y0 < y1 <= int(page.get("height"))
                if el.tag in ("face", "body"):
                    assert el.get("character") in char_ids
                if el.tag == "text":
                    assert el.text and re.search(r"[\u3040-\u30ff]", el.text)
    # Same seed, same bytes (JPEG and XML included).
    again = write_manga109(tmp_path / "again", pages_per_book=2, books_per_genre=1, seed=11)
    assert _tree_bytes(root) == _tree_bytes(again)


def test_write_manga109_spreads(tmp_path):
    root = write_manga109(tmp_path / "m109", pages_per_book=1, books_per_genre=1, seed=0, size=(200, 280), spread=True)
    book = ET.parse(root / "annotations" / "SyntheticBattle01.xml").getroot()
    page = book.find("pages/page")
    assert (page.get("width"), page.get("height")) == ("400", "280")
    xs = [int(f.get("xmin")) for f in page.findall("frame")]
    assert min(xs) < 200 <= max(xs)  # frames on both halves
    with Image.open(root / "images" / "SyntheticBattle01" / "000.jpg") as im:
        assert im.size == (400, 280)


@pytest.mark.parametrize("fmt", ["ogg", "wav"])
def test_write_audioset_layout(tmp_path, fmt):
    root = write_audioset(tmp_path / "as", clips_per_mood=2, seed=3, seconds=2.0, fmt=fmt,
                          sample_rate=22050, multi_label_fraction=0.5, missing=1)
    lines = (root / "segments.csv").read_text(encoding="utf-8").splitlines()
    assert re.fullmatch(r"# Segments csv created .+", lines[0])
    m = re.fullmatch(r"# num_ytids=(\d+), num_segs=(\d+), num_unique_labels=(\d+), num_positive_labels=(\d+)", lines[1])
    assert m and int(m.group(1)) == int(m.group(2)) == 14
    assert lines[2] == "# YTID, start_seconds, end_seconds, positive_labels"
    rows = list(csv.reader(lines[3:], skipinitialspace=True))
    assert len(rows) == 14 and int(m.group(4)) == sum(len(r[3].split(",")) for r in rows)
    assert all(re.fullmatch(r'[A-Za-z0-9_-]{11}, \d+\.000, \d+\.000, "[^"]+"', line) for line in lines[3:])
    mood_ids = set(MOOD_IDS.values())
    multi = 0
    missing = 0
    for ytid, start, end, labels in rows:
        labels = labels.split(",")
        assert labels[0] == "/m/04rlf" and set(labels[1:]) <= mood_ids
        multi += len(labels) > 2
        assert float(end) - float(start) == pytest.approx(2.0)
        path = root / "clips" / f"{ytid}_{start}.{fmt}"
        if not path.exists():
            missing += 1
            continue
        audio, sr = sf.read(str(path), dtype="float32")
        assert sr == 22050 and audio.ndim == 1 and abs(len(audio) - 2 * 22050) <= 1
    assert missing == 1 and multi >= 1
    onto = json.loads((root / "ontology.json").read_text(encoding="utf-8"))
    keys = {"id", "name", "description", "citation_uri", "positive_examples", "child_ids", "restrictions"}
    assert all(set(node) == keys for node in onto)
    by_id = {n["id"]: n for n in onto}
    parent = by_id[MUSIC_MOOD_PARENT_ID]
    assert parent["name"] == "Music mood" and parent["child_ids"] == list(MOOD_IDS.values())
    assert {by_id[i]["name"] for i in parent["child_ids"]} == set(MOODS)
    assert by_id["/m/04rlf"]["name"] == "Music"
    # Determinism: CSV/ontology bytes identical; audio identical once decoded (OGG
    # streams carry a random serial number, so their bytes may differ).
    again = write_audioset(tmp_path / "again", clips_per_mood=2, seed=3, seconds=2.0, fmt=fmt,
                           sample_rate=22050, multi_label_fraction=0.5, missing=1)
    for name in ("segments.csv", "ontology.json", "synthetic_truth.csv"):
        assert (root / name).read_bytes() == (again / name).read_bytes()
    for p in sorted((root / "clips").iterdir()):
        a, _ = sf.read(str(p), dtype="float32")
        b, _ = sf.read(str(again / "clips" / p.name), dtype="float32")
        assert np.array_equal(a, b)
        if fmt == "wav":
            assert p.read_bytes() == (again / "clips" / p.name).read_bytes()


def test_write_audioset_flac(tmp_path):
    root = write_audioset(tmp_path / "as", clips_per_mood=1, seed=0, seconds=1.0, fmt="flac", sample_rate=16000)
    files = sorted((root / "clips").glob("*.flac"))
    assert len(files) == len(MOODS)
    assert sf.info(str(files[0])).format == "FLAC"


def test_write_music_library(tmp_path):
    root = write_music_library(tmp_path / "lib", tracks_per_mood=1, seed=4, seconds=(6.0, 7.0), sample_rate=16000)
    with open(root / "library.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["mood"] for r in rows] == list(MOODS)
    assert rows[2]["file"] == "sad_01.ogg"
    for r in rows:
        info = sf.info(str(root / r["file"]))
        assert info.format == "OGG" and info.subtype == "VORBIS"
        assert 6.0 <= info.duration <= 7.01 and info.duration == pytest.approx(float(r["seconds"]), abs=0.01)


def test_write_example_pages(tmp_path):
    root = write_example_pages(tmp_path / "pages", n_per_genre=1, seed=4, size=(160, 224), fmt="png")
    with open(root / "pages.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["genre"] for r in rows] == list(GENRES)
    assert rows[3]["file"] == "four_frame_cartoons_01.png"
    for r in rows:
        with Image.open(root / r["file"]) as im:
            assert im.size == (160, 224) and im.mode == "RGB"
    again = write_example_pages(tmp_path / "again", n_per_genre=1, seed=4, size=(160, 224), fmt="png")
    assert _tree_bytes(root) == _tree_bytes(again)
