"""A pages index read as what it holds: manga pages, for music -> pages search.

``python -m runtime.index PAGES_DIR --out P --kind pages`` stores pages the way a music
library stores tracks (segments and generations, one embedding per page), so the reader is
the same ``Library``; this view names its rows pages (``PageInfo``: genres and moods, no
duration or windows) and refuses a music library, so no caller has to read a page out of a
``TrackInfo``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LibraryError
from .reader import Library
from .records import Dist


@dataclass(frozen=True)
class PageInfo:
    """One indexed page: where it is and its zero-shot tags (label order)."""

    row: int
    path: Path  # absolute
    relpath: str
    genres: Dist
    top_genre: str
    moods: Dist
    top_mood: str


class PagesIndex:
    """An open pages index. ``len(idx)``, ``idx.page(row)``, ``idx.embeddings()`` (float32
    [N, D], row = ``PageInfo.row``), ``idx.search(queries, k)`` (plain cosine: pages have no
    hub correction), ``idx.close()`` or ``with``."""

    def __init__(self, library: Library):
        if library.kind != "pages":
            raise LibraryError(f"{library.dir} is a {library.kind} library, not a pages index "
                               f"(build one with `python -m runtime.index PAGES_DIR --out P --kind pages`)")
        self.library = library

    @classmethod
    def open(cls, path: str | Path, bundle=None) -> "PagesIndex":
        lib = Library.open(path, bundle=bundle)
        try:
            return cls(lib)
        except LibraryError:
            lib.close()
            raise

    @property
    def dir(self) -> Path:
        return self.library.dir

    def __len__(self) -> int:
        return len(self.library)

    def page(self, row: int) -> PageInfo:
        info = self.library.track(row)
        genres = info.genres
        if not genres:
            raise LibraryError(f"{self.dir}: page {info.relpath!r} has no genre tags; the index is damaged")
        top_genre = max(genres, key=lambda kv: kv[1])[0]
        return PageInfo(info.row, info.path, info.relpath, genres, top_genre, info.moods, info.top_mood)

    def embeddings(self) -> np.ndarray:
        return self.library.pooled_matrix()

    def search(self, queries: np.ndarray, k: int):
        """``SearchHits``: each query's top-k rows by cosine."""
        return self.library.index.search(queries, k)

    def check_bundle(self, bundle) -> None:
        self.library.check_bundle(bundle)

    def close(self) -> None:
        self.library.close()

    def __enter__(self) -> "PagesIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pages_index(path: "str | Path | PagesIndex | Library", bundle=None) -> PagesIndex:
    """A ``PagesIndex`` from a folder, an open ``Library`` of kind pages or a ``PagesIndex``,
    checked against ``bundle`` when one is given."""
    if isinstance(path, PagesIndex):
        idx = path
    elif isinstance(path, Library):
        idx = PagesIndex(path)
    else:
        return PagesIndex.open(path, bundle=bundle)
    if bundle is not None:
        idx.check_bundle(bundle)
    return idx


__all__ = ["PageInfo", "PagesIndex", "open_pages_index"]
