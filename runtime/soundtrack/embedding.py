"""A chapter's pages -> embeddings, one page read at a time, bad pages skipped with their reason.

Each page's bytes are read (from the folder, or from the archive into memory), decoded and
preprocessed by the runtime's image pipeline (which owns the pixel-count guard) and then
dropped; only the preprocessed pixels wait for their batch. A page that cannot be read or
decoded is listed as skipped instead of failing the chapter.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .chapter import Chapter, Skipped


def embed_chapter(encoders, chapter: Chapter, mode: str | None = None, batch_size: int = 8,
                  on_page: Callable[[str], Any] | None = None
                  ) -> tuple[np.ndarray, tuple[str, ...], tuple[Skipped, ...]]:
    """(embeddings [N, D] of the readable pages in order, their names, the skipped pages)."""
    from ..image_preprocess import preprocess_image

    cfg = encoders.bundle.manifest.image
    names: list[str] = []
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            out.append(encoders.embed_images(batch, batch_size=batch_size))
            batch.clear()

    for page in chapter:
        try:
            batch.append(preprocess_image(page.read(), cfg, mode))
        except InputError as exc:
            chapter.skipped.append(Skipped(page.name, _reason(exc, page.name)))
        else:
            names.append(page.name)
            if len(batch) == batch_size:
                flush()
        if on_page is not None:
            on_page(page.name)
    flush()
    embs = np.concatenate(out) if out else np.zeros((0, encoders.dim), np.float32)
    return embs, tuple(names), tuple(chapter.skipped)


def _reason(exc: InputError, name: str) -> str:
    # Errors name their input first ("<123 bytes>: ..." or "001.jpg: ..."); the skipped
    # entry already carries the page name.
    text = " ".join(str(exc).split())
    head, sep, rest = text.partition(": ")
    return rest if sep and (head == name or (head.startswith("<") and head.endswith(">"))) else text
