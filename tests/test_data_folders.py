"""One-folder-per-label data sets for users' own pages or music."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from runtime.errors import InputError
from training.data.folders import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, LabelFolders
from training.data.manga109 import PageDataset


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture()
def pages(tmp_path: Path) -> Path:
    root = tmp_path / "my_pages"
    _touch(root / "sports" / "p1.jpg")
    _touch(root / "sports" / "chapter2" / "p2.PNG")  # nested, upper-case extension
    _touch(root / "sports" / "notes.txt")             # not an image
    _touch(root / "horror" / "h1.jpeg")
    _touch(root / "horror" / ".hidden.jpg")            # hidden file
    _touch(root / ".git" / "x.jpg")                    # hidden folder
    _touch(root / "love_romance" / "l1.webp")
    _touch(root / "README.jpg")                        # a file at the root is not a class
    return root


def test_sorted_classes_and_records(pages: Path) -> None:
    data = LabelFolders(pages, IMAGE_EXTENSIONS)
    assert data.classes == ("horror", "love_romance", "sports")
    got = [(r.path.relative_to(pages).as_posix(), r.label, r.index) for r in data.records]
    assert got == [
        ("horror/h1.jpeg", "horror", 0),
        ("love_romance/l1.webp", "love_romance", 1),
        ("sports/chapter2/p2.PNG", "sports", 2),
        ("sports/p1.jpg", "sports", 2),
    ]
    assert [r.target for r in data.records] == [0, 1, 2, 2]
    assert data.ignored == () and data.empty_classes == ()


def test_explicit_classes(pages: Path) -> None:
    data = LabelFolders(pages, [".JPG", "png", "webp"], classes=["sports", "love romance", "battle"])
    assert data.classes == ("sports", "love romance", "battle")
    # "love_romance" matches "love romance"; .jpeg is not among the extensions given.
    assert [(r.path.name, r.label, r.index) for r in data.records] == [
        ("p2.PNG", "sports", 0),
        ("p1.jpg", "sports", 0),
        ("l1.webp", "love romance", 1),
    ]
    assert data.ignored == ("horror",)
    assert data.empty_classes == ("battle",)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        LabelFolders(tmp_path / "absent", AUDIO_EXTENSIONS)
    with pytest.raises(ValueError, match="no file extensions"):
        LabelFolders(tmp_path, [])
    with pytest.raises(ValueError, match="collide"):
        LabelFolders(tmp_path, ["wav"], classes=["Happy music", "happy_music"])


def test_folder_records_feed_page_dataset(tmp_path: Path) -> None:
    for cls, colour in (("animal", (255, 0, 0)), ("humor", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (300, 200), colour).save(tmp_path / cls / "page.png")
    data = LabelFolders(tmp_path, IMAGE_EXTENSIONS)
    x, y = PageDataset(data.records)[1]
    assert x.shape == (3, 224, 224) and y == 1
    assert float(x[2].mean()) > float(x[0].mean())  # the blue page is blue, after normalising
    assert isinstance(x, torch.Tensor)
