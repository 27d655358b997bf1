"""Manga109 loading and page splits, on a mini release written in the real layout."""
from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from runtime.errors import InputError
from runtime.labels import GENRES
from training.data.augment import image_train_transform
from training.data.manga109 import (
    Manga109,
    PageDataset,
    PageRecord,
    normalize_genre,
    page_split,
    parse_annotation,
    read_books,
    read_genre_table,
)
from training.data.splits import grouped_partition, stratified_partition

ARMS_XML = """<?xml version="1.0" encoding="utf-8"?>
<book title="ARMS">
  <characters>
    <character id="00000003" name="高槻涼"/>
    <character id="00000007" name="新宮隼人"/>
  </characters>
  <pages>
    <page index="0" width="1654" height="1170"/>
    <page index="1" width="1654" height="1170">
      <frame id="00000011" xmin="0" ymin="0" xmax="827" ymax="1170"/>
      <frame id="00000012" xmin="827" ymin="0" xmax="1654" ymax="585"/>
      <text id="00000013" xmin="100" ymin="120" xmax="180" ymax="400">なんだ…！？この腕は</text>
      <face id="00000014" xmin="300" ymin="310" xmax="420" ymax="450" character="00000003"/>
      <body id="00000015" xmin="250" ymin="300" xmax="600" ymax="1100" character="00000003"/>
      <body id="00000016" xmin="900" ymin="50" xmax="1200" ymax="560" character="00000007"/>
    </page>
  </pages>
</book>
"""

# Metadata table as the seed paper read it: extra columns, mixed-case genre spellings,
# a title written with spaces, a volume outside books.txt, and a volume left blank.
METADATA_CSV = """ID,JAPANESE_NAME,ENGLISH_NAME,AUTHOR,GENRE,YEAR
1,アームズ,ARMS,皆川亮二,Battle,1997
2,あいさずにはいられない,Aisazu Niha Irarenai,吉河美希,Romantic comedy,2010
3,夢の通ひ路,YumeNoKayoiji,中川ゆう子,4-koma,2003
4,あくはむ,Akuhamu,大石寿之,Four-frame cartoons,2005
5,無題,BlankGenre,誰か,,2000
"""

# title -> (genre, number of pages written)
VOLUMES = {"ARMS": ("battle", 3), "AisazuNihaIrarenai": ("romantic comedy", 12), "YumeNoKayoiji": ("four-frame cartoons", 2)}


def _write_jpg(path: Path, size=(40, 28), colour=(200, 200, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


@pytest.fixture()
def release(tmp_path: Path) -> Path:
    root = tmp_path / "Manga109_released_2021_12_30"
    root.mkdir()
    # "Unlisted" has pages but no genre row; "NoImages" has a genre but no images folder.
    (root / "books.txt").write_text("ARMS\nAisazuNihaIrarenai\nYumeNoKayoiji\nUnlisted\nAkuhamu\n", encoding="utf-8")
    for title, (_, n) in VOLUMES.items():
        for i in range(n):
            _write_jpg(root / "images" / title / f"{i:03d}.jpg", colour=(10 * i, 100, 200))
        (root / "images" / title / "Thumbs.db").write_bytes(b"junk")  # not a page
    _write_jpg(root / "images" / "Unlisted" / "000.jpg")
    (root / "annotations").mkdir()
    (root / "annotations" / "ARMS.xml").write_text(ARMS_XML, encoding="utf-8")
    (tmp_path / "metadata.csv").write_text(METADATA_CSV, encoding="utf-8")
    return root


def test_read_books(release: Path) -> None:
    assert read_books(release) == ["ARMS", "AisazuNihaIrarenai", "YumeNoKayoiji", "Unlisted", "Akuhamu"]
    with pytest.raises(InputError, match="books.txt"):
        read_books(release / "nowhere")


def test_metadata_genre_table(release: Path) -> None:
    table = read_genre_table(release.parent / "metadata.csv")
    assert table == {
        "ARMS": "battle",
        "Aisazu Niha Irarenai": "romantic comedy",
        "YumeNoKayoiji": "four-frame cartoons",
        "Akuhamu": "four-frame cartoons",
    }


@pytest.mark.parametrize("header", ["", "title,genre\n", "Title, Genre\n"])
def test_simple_genre_table_with_or_without_header(tmp_path: Path, header: str) -> None:
    csv_path = tmp_path / "genres.csv"
    csv_path.write_text(header + "ARMS,battle\nYumeNoKayoiji, Four Frame Cartoons \nTetsuSan,SCIENCE_FICTION\n", encoding="utf-8")
    assert read_genre_table(csv_path) == {
        "ARMS": "battle",
        "YumeNoKayoiji": "four-frame cartoons",
        "TetsuSan": "science fiction",
    }


def test_unknown_genre_names_the_row(tmp_path: Path) -> None:
    csv_path = tmp_path / "genres.csv"
    csv_path.write_text("title,genre\nARMS,battle\nFoo,romance\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"row 3: unknown genre 'romance' for 'Foo'"):
        read_genre_table(csv_path)
    csv_path.write_text("ARMS,battle\nARMS,horror\n", encoding="utf-8")
    with pytest.raises(InputError, match="row 2: 'ARMS' is given two genres"):
        read_genre_table(csv_path)


def test_genre_spellings_are_explicit() -> None:
    assert [normalize_genre(g.upper()) for g in GENRES] == list(GENRES)
    assert normalize_genre("4-frame") == "four-frame cartoons"
    assert normalize_genre("Sci-Fi") == "science fiction"
    # Ambiguous between two genres: refused, not guessed.
    assert normalize_genre("comedy") is None and normalize_genre("romance") is None


def test_parse_annotation(release: Path) -> None:
    book = parse_annotation(release / "annotations" / "ARMS.xml")
    assert book.title == "ARMS"
    assert [(c.id, c.name) for c in book.characters] == [("00000003", "高槻涼"), ("00000007", "新宮隼人")]
    assert [p.index for p in book.pages] == [0, 1]
    empty, page = book.pages
    assert (empty.width, empty.height, empty.frames, empty.texts) == (1654, 1170, (), ())
    assert [(f.id, f.xmin, f.ymin, f.xmax, f.ymax) for f in page.frames] == [
        ("00000011", 0, 0, 827, 1170),
        ("00000012", 827, 0, 1654, 585),
    ]
    assert page.frames[1].width == 827 and page.frames[1].height == 585
    (text,) = page.texts
    assert text.text == "なんだ…！？この腕は" and text.id == "00000013"
    assert [f.character for f in page.faces] == ["00000003"]
    assert [(b.character, b.xmax) for b in page.bodies] == [("00000003", 600), ("00000007", 1200)]
    assert book.page(1) is page
    with pytest.raises(Exception):  # frozen: records are values
        page.index = 3  # type: ignore[misc]


def test_bad_annotation_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "Bad.xml"
    bad.write_text("<book title='Bad'><pages><page index='0' width='10'", encoding="utf-8")
    with pytest.raises(InputError, match="malformed XML"):
        parse_annotation(bad)
    bad.write_text("<book title='Bad'><pages><page index='0' width='10' height='9'>"
                   "<face id='1' xmin='0' ymin='0' xmax='3' ymax='x'/></page></pages></book>", encoding="utf-8")
    with pytest.raises(InputError, match="page 0.*ymax='x'"):
        parse_annotation(bad)


def test_manga109_loads_pages_with_genres(release: Path) -> None:
    with pytest.warns(UserWarning, match="2 volume") as caught:
        data = Manga109(release, release.parent / "metadata.csv")
    message = str(caught[0].message)
    assert "Unlisted" in message and "Akuhamu" in message
    assert data.titles == ("ARMS", "AisazuNihaIrarenai", "YumeNoKayoiji")
    assert data.unplaced_titles == ("Unlisted", "Akuhamu")
    assert "no genre" in data.unplaced[0].reason and "no NNN.jpg" in data.unplaced[1].reason
    assert len(data) == sum(n for _, n in VOLUMES.values())
    aisazu = [r for r in data.records if r.title == "AisazuNihaIrarenai"]
    # Numeric page order (010 after 009), paths in the real layout.
    assert [r.index for r in aisazu] == list(range(12))
    assert aisazu[10].path == release / "images" / "AisazuNihaIrarenai" / "010.jpg"
    # The table wrote "Aisazu Niha Irarenai": matched despite the spaces.
    assert {(r.genre, r.genre_index) for r in aisazu} == {("romantic comedy", GENRES.index("romantic comedy"))}
    assert data.genre_counts() == {"battle": 3, "romantic comedy": 12, "four-frame cartoons": 2}
    assert data.annotation("ARMS").pages[1].texts[0].text.startswith("なんだ")


def test_manga109_strict_and_books_subset(release: Path) -> None:
    with pytest.raises(InputError, match="Unlisted"):
        Manga109(release, release.parent / "metadata.csv", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean subset warns about nothing
        data = Manga109(release, release.parent / "metadata.csv", books=["YumeNoKayoiji"], strict=True)
    assert [r.title for r in data.records] == ["YumeNoKayoiji"] * 2 and data.unplaced == ()


def test_page_dataset(release: Path) -> None:
    with pytest.warns(UserWarning):
        data = Manga109(release, release.parent / "metadata.csv")
    ds = PageDataset(data.records)
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == GENRES.index("battle")
    train = PageDataset(data.records, image_train_transform(page_aware_crop=True), seed=3)
    assert torch.equal(train[5][0], PageDataset(data.records, image_train_transform(), seed=3)[5][0])


# ---------------------------------------------------------------------------- splits


def _synthetic_records() -> list[PageRecord]:
    """5 genres, 2..9 volumes each, 3..20 pages per volume (no files needed to split)."""
    rng = random.Random(7)
    records = []
    for g, genre in enumerate(GENRES[:5]):
        for v in range(2 + 2 * g):
            for i in range(rng.randint(3, 20)):
                records.append(PageRecord(f"{genre}-vol{v}", i, Path(f"{genre}-vol{v}/{i:03d}.jpg"), genre, g))
    return records


def test_page_split_is_deterministic_stratified_and_order_free() -> None:
    records = _synthetic_records()
    split = page_split(records, val_fraction=0.2, seed=11)
    assert split.level == "page" and "page-level" in split.describe()
    assert set(split.train).isdisjoint(split.val) and len(split.train) + len(split.val) == len(records)
    per_genre = Counter(r.genre for r in records)
    val_genre = Counter(r.genre for r in split.val)
    for genre, n in per_genre.items():
        assert val_genre[genre] == int(n * 0.2 + 0.5)  # each genre holds out its own 20 %
    again = page_split(list(reversed(records)), val_fraction=0.2, seed=11)
    assert set(again.val) == set(split.val)  # the order records arrive in does not matter
    assert set(page_split(records, 0.2, seed=12).val) != set(split.val)
    # Page-level splits do share volumes: that is the leak the volume level avoids.
    assert {r.title for r in split.train} & {r.title for r in split.val}


def test_volume_split_never_shares_a_volume() -> None:
    records = _synthetic_records()
    split = page_split(records, val_fraction=0.2, seed=5, level="volume")
    train_titles, val_titles = {r.title for r in split.train}, {r.title for r in split.val}
    assert train_titles.isdisjoint(val_titles)
    assert len(split.train) + len(split.val) == len(records)
    volumes = defaultdict(set)
    for r in records:
        volumes[r.genre].add(r.title)
    for genre, titles in volumes.items():
        held = titles & val_titles
        # stratified over volumes: every genre (all have >= 2 volumes) is on both sides
        assert 1 <= len(held) == max(1, min(len(titles) - 1, int(len(titles) * 0.2 + 0.5)))
    assert {r.title for r in page_split(list(reversed(records)), 0.2, 5, "volume").val} == val_titles
    with pytest.raises(ValueError, match="level"):
        page_split(records, level="book")


def test_partition_edge_cases() -> None:
    # A one-item stratum cannot be split: it trains.
    train, val = stratified_partition(["a", "b", "c"], ["x", "x", "y"], 0.5, seed=0)
    assert 2 in train and val in ([0], [1])
    train, val = stratified_partition(["a"], ["x"], 0.5, seed=0)
    assert (train, val) == ([0], [])
    with pytest.raises(ValueError, match="two strata"):
        grouped_partition(["v1", "v1"], ["battle", "horror"])
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_partition(["a"], ["x"], 1.0)
