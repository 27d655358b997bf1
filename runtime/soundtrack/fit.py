"""How well each page fits each track: cosines, standardised per page.

A page's raw cosines with the tracks share an offset that depends on the page (some pages
sit closer to all music than others), so the planner compares tracks by each page's
z-score: (cosine - the page's mean over the catalogue) / the page's standard deviation.
That makes ``switch_cost`` a number of "standard deviations of preference" whatever the
model or the catalogue. The catalogue is streamed in chunks (it may be a memory map of a
large library); only each page's best ``k`` tracks are kept as candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK = 1 << 16
_EPS = 1e-6


@dataclass(frozen=True)
class PageStats:
    """Per page: the mean and spread of its cosines over the whole catalogue, and its best tracks."""

    mean: np.ndarray  # float64 [N]
    std: np.ndarray  # float64 [N]
    top: np.ndarray  # int64 [N, k]: rows of the best k tracks, best first
    best_cos: np.ndarray  # float64 [N]: cosine of the best track


def page_stats(embs: np.ndarray, pooled: np.ndarray, k: int) -> PageStats:
    embs = np.asarray(embs, dtype=np.float32)
    n, m = embs.shape[0], pooled.shape[0]
    k = min(k, m)
    total = np.zeros(n)
    total_sq = np.zeros(n)
    top_rows = np.zeros((n, 0), np.int64)
    top_cos = np.zeros((n, 0), np.float32)
    for lo in range(0, m, _CHUNK):
        block = np.asarray(pooled[lo:lo + _CHUNK], dtype=np.float32)
        cos = embs @ block.T
        total += cos.sum(axis=1, dtype=np.float64)
        total_sq += np.square(cos, dtype=np.float64).sum(axis=1)
        rows = np.concatenate([top_rows, np.broadcast_to(np.arange(lo, lo + block.shape[0]), cos.shape)], axis=1)
        vals = np.concatenate([top_cos, cos], axis=1)
        # Best first; ties go to the lower row so results never depend on chunking.
        order = np.lexsort((rows, -vals), axis=1)[:, :k]
        top_rows, top_cos = np.take_along_axis(rows, order, 1), np.take_along_axis(vals, order, 1)
    mean = total / m
    std = np.sqrt(np.maximum(total_sq / m - mean ** 2, 0.0))
    return PageStats(mean, std, top_rows, top_cos[:, 0].astype(np.float64))


def fits(embs: np.ndarray, mean: np.ndarray, std: np.ndarray, pooled: np.ndarray,
         rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosines [N, C], z-scores [N, C]) of the pages with the catalogue rows ``rows``."""
    block = np.asarray(pooled[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
    cos = (np.asarray(embs, dtype=np.float32) @ block.T).astype(np.float64)
    z = (cos - np.asarray(mean)[:, None]) / np.maximum(np.asarray(std), _EPS)[:, None]
    return cos, z


def candidates(stats: PageStats, extra: np.ndarray | None = None) -> np.ndarray:
    """Sorted union of every page's best tracks (plus ``extra`` rows)."""
    rows = stats.top.ravel()
    if extra is not None:
        rows = np.concatenate([rows, np.asarray(extra, dtype=np.int64)])
    return np.unique(rows)
