"""Opening a library by what the caller has: a folder, a Qdrant URL, an open library, or
nothing (the shipped demo). Apart from ``reader.py`` so that the local reader and the Qdrant
reader never import each other: this module is the one place that knows both."""
from __future__ import annotations

from pathlib import Path

from .qdrant_store import is_qdrant_url
from .reader import Library


def open_library(path: str | Path | Library | None = None, bundle=None) -> Library:
    """A ``Library`` from a path, an open ``Library``, or None (the shipped demo library),
    checked against ``bundle`` when one is given. A Qdrant URL (``qdrant://HOST:PORT/NAME``,
    ``qdrant+local://DIR/NAME``) opens a published collection instead (``qdrant_reader.py``)."""
    if is_qdrant_url(path):
        from .qdrant_reader import QdrantLibrary

        return QdrantLibrary.open(path, bundle=bundle)
    if isinstance(path, Library) or (path is not None and not isinstance(path, (str, Path))
                                     and hasattr(path, "check_bundle")):  # any open library, a QdrantLibrary too
        if bundle is not None:
            path.check_bundle(bundle)
        return path
    if path is None:
        from ..defaults import default_library

        path = default_library()
    return Library.open(path, bundle=bundle)


__all__ = ["open_library"]
