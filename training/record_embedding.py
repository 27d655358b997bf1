"""Embedding data-set records through any backend, skipping the unreadable ones.

Evaluation (``training.evaluate``) and the soundtrack evaluation
(``training.soundtrack_eval``) both embed Manga109 pages and AudioSet clips this way: in
chunks (bounded memory on a 20k-clip set), each unreadable file named and left out.
"""
from __future__ import annotations

import sys
from typing import Iterable, Sequence

import numpy as np

from runtime.errors import InputError
from training.backends import EmbeddingBackend

_CHUNK = 32  # items decoded and embedded at a time: bounds memory on a 20k-clip eval set


def _progress(it: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _chunks(n: int) -> list[range]:
    return [range(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]


def _embed_readable(backend: EmbeddingBackend, records: Sequence, load, embed, desc: str, progress: bool
                    ) -> tuple[np.ndarray, list[int], list[str]]:
    """Load each record with `load` in chunks, skipping (and naming) unreadable ones, and
    embed the rest with `embed`: (embeddings, indices kept, "path: reason" of the rest)."""
    embs, kept, skipped = [], [], []
    chunks = _chunks(len(records))
    for chunk in _progress(chunks, len(chunks), desc, progress):
        items = []
        for i in chunk:
            try:
                items.append(load(records[i].path))
                kept.append(i)
            except InputError as exc:
                skipped.append(str(exc))
        if items:
            embs.append(embed(items))
    emb = np.concatenate(embs) if embs else np.zeros((0, backend.embed_dim), np.float32)
    return emb, kept, skipped


def embed_clips(backend: EmbeddingBackend, records: Sequence, clip_seconds: float, sample_rate: int = 44100,
                progress: bool = False) -> tuple[np.ndarray, list[int], list[str]]:
    """(embeddings of readable clips, their indices into records, "path: reason" of the rest)."""
    from training.data.audioset import load_clip_audio
    from training.data.augment import PadOrCrop, clip_length

    fit = PadOrCrop(clip_length(sample_rate, clip_seconds), train=False)
    return _embed_readable(backend, records, lambda p: fit(load_clip_audio(p, sample_rate)), backend.embed_audio,
                           "clips", progress)


def embed_pages(backend: EmbeddingBackend, records: Sequence, progress: bool = False
                ) -> tuple[np.ndarray, list[int], list[str]]:
    from training.data.manga109 import load_page_image

    return _embed_readable(backend, records, load_page_image, backend.embed_images, "pages", progress)
