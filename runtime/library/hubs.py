"""Hub correction: keep one track from coming first for every page.

In cross-modal retrieval some items sit close to everything ("hubs") and top the results
of unrelated queries. CSLS (Conneau et al., 2018, "Word translation without parallel
data") corrects for it: a candidate's score is lowered by its mean similarity to its k
nearest neighbours among queries. We cannot know a reader's pages in advance, so that mean
is taken over a fixed *reference set* of pages, embedded once at index time: each track's
hub term is the mean cosine between its pooled embedding and its ``k`` most similar
reference pages, stored beside the segment (``hub-KEY.npy``). At query time the ranking
score is ``cos(page, track) - weight * hub(track)``; weight 0.5 ranks exactly as CSLS's
``2 cos - r_track - r_page`` does (r_page is the same for every track of one query).

The default reference set is ``runtime/defaults/reference_pages`` (synthetic pages made by
the demo recipe with its own seed, so they are never the pages anyone queries with); an
app that indexes real manga should pass a folder of its own pages (``--reference-pages``).
Figures measured on a real music collection are in the README ("Hubs").
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[1] / "defaults" / "reference_pages"
HUB_K = 10
HUB_WEIGHT = 0.5
METHOD = "csls"


@dataclass(frozen=True)
class Reference:
    """Reference page embeddings and how hub terms are derived from them."""

    key: str  # sha256 of everything the terms depend on
    embeddings: np.ndarray  # float32 [R, D], unit rows
    k: int
    weight: float
    source: str

    def terms(self, pooled: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Hub term per row of ``pooled`` [N, D]: mean of its top-k cosines with the
        reference pages (all of them when there are k or fewer). Vectorised per chunk."""
        pooled = np.asarray(pooled, np.float32)
        out = np.empty(len(pooled), np.float32)
        k = min(self.k, len(self.embeddings))
        for lo in range(0, len(pooled), chunk):
            s = pooled[lo:lo + chunk] @ self.embeddings.T
            if k < s.shape[1]:
                s = np.partition(s, s.shape[1] - k, axis=1)[:, -k:]
            out[lo:lo + chunk] = s.mean(axis=1)
        return out


def reference_files(source: str | Path | Sequence[str | Path] | None) -> tuple[list[Path], str]:
    """The reference page files and a description: a folder (its images), a list of files,
    or None for the shipped default set."""
    from .scanning import IMAGE_EXTENSIONS

    if source is None:
        source = DEFAULT_REFERENCE_DIR
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"{folder}: reference pages folder does not exist")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        desc = str(folder) if folder != DEFAULT_REFERENCE_DIR else "shipped reference pages"
    else:
        files = [Path(p) for p in source]
        desc = f"{len(files)} reference pages"
    if not files:
        raise InputError(f"{source}: no reference page images found")
    return files, desc


def reference_key(bundle_fingerprint: str, files: Sequence[Path], mode: str | None, k: int) -> str:
    """Fingerprint of what the hub terms depend on: bundle, page bytes, image mode, k."""
    from ..bundle import sha256_file

    h = hashlib.sha256(f"{METHOD}|{bundle_fingerprint}|{mode}|{k}".encode())
    for f in files:
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def embed_reference(encoders, files: Sequence[Path], mode: str | None) -> np.ndarray:
    """Embed the reference pages one by one; unreadable ones are skipped (at least one must
    remain)."""
    rows = []
    for f in files:
        try:
            rows.append(encoders.embed_images([f], mode=mode)[0])
        except InputError:
            continue
    if not rows:
        raise InputError(f"none of the {len(files)} reference pages could be read")
    return np.stack(rows).astype(np.float32)
