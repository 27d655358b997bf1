"""Embed every window of a track from one pass of the audio trunk over the whole track.

The audio tower is convolutional up to its last feature map (``features``; its gates pool
only within each stride), and only its head (global average, last gate, fc) pools over
time. So instead of running the whole tower on every overlapping 5 s window (each second
of music twice at a 2.5 s hop), the indexer runs the trunk once over long chunks of the
track and the head on each window's slice of the resulting map. The slice sees real
music at its edges where a lone window sees zero padding, so the two embeddings are
close but not equal; ``agreement`` measures it on the track itself, and the caller keeps
the per-window path where it falls short (``SpanGeometry.min_cosine``).

Chunks: a track longer than ``CHUNK_SECONDS`` is cut into chunks of that length that
overlap by one window, so every window lies whole inside one chunk (the trunk's memory
grows with the chunk, not the track).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

CHUNK_SECONDS = 60.0

Run = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SpanGeometry:
    """How trunk feature steps map to samples (from the manifest's ``audio_span``)."""

    samples_per_step: int  # STFT hop x the trunk's time stride (561 x 32 for AudioCLIP)
    window_steps: int  # steps a window's slice spans (a lone 5 s window's map has this many)
    min_cosine: float  # below this agreement with the per-window path, use that path

    def first_step(self, start: int, chunk_start: int) -> int:
        return int(round((start - chunk_start) / self.samples_per_step))


def chunk_starts(n_samples: int, window: int, chunk: int) -> list[int]:
    """Chunk start samples: chunks of ``chunk`` samples overlapping by ``window``."""
    if n_samples <= chunk:
        return [0]
    step = chunk - window
    return list(range(0, n_samples - window, step))


def span_embeddings(trunk: Run, head: Run, wave: np.ndarray, starts: np.ndarray, window: int, sample_rate: int,
                    geo: SpanGeometry, batch_size: int = 16) -> np.ndarray:
    """Un-normalised embeddings [len(starts), D] of the windows starting at ``starts``
    (samples, ascending, each window whole inside ``wave``), from trunk + head."""
    chunk = max(int(round(CHUNK_SECONDS * sample_rate)), 2 * window)
    c_starts = chunk_starts(wave.shape[0], window, chunk)
    # Each window goes to the last chunk that starts at or before it (it fits there whole).
    owner = np.searchsorted(np.asarray(c_starts), starts, side="right") - 1
    out: list[np.ndarray] = [None] * len(starts)  # type: ignore[list-item]
    for c, c0 in enumerate(c_starts):
        mine = np.flatnonzero(owner == c)
        if not len(mine):
            continue
        feats = trunk(np.ascontiguousarray(wave[None, c0:c0 + chunk], dtype=np.float32))[0]  # [C, F, T]
        steps = feats.shape[-1]
        width = min(geo.window_steps, steps)
        firsts = [min(max(geo.first_step(int(starts[i]), c0), 0), steps - width) for i in mine]
        for k in range(0, len(mine), batch_size):
            rows = mine[k:k + batch_size]
            sl = np.stack([feats[:, :, f:f + width] for f in firsts[k:k + batch_size]])
            emb = head(sl)
            for j, r in enumerate(rows):
                out[r] = emb[j]
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def agreement(span: np.ndarray, per_window: np.ndarray) -> np.ndarray:
    """Row cosines between span-pooled and per-window embeddings of the same windows."""
    a = np.asarray(span, np.float64)
    b = np.asarray(per_window, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


__all__ = ["SpanGeometry", "span_embeddings", "agreement", "chunk_starts", "CHUNK_SECONDS"]
