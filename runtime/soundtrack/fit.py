"""How well each page fits each track: the catalogue's scores, standardised per page.

The score of a page and a track is the library's ranking score (``Catalogue.scores``: the
hub-corrected cosine for a library built with the correction, see ``_catalogue.py``). A
page's scores with the tracks share an offset that depends on the page (some pages sit
closer to all music than others), so the planner compares tracks by each page's z-score:
(score - the page's mean over the catalogue) / the page's standard deviation. That makes
``switch_cost`` a number of "standard deviations of preference" whatever the model or the
catalogue. The catalogue is streamed in blocks of tracks (it may be a memory map of a large
library; at most ``_BLOCK`` scores are held at once, and each track is read once); only
each page's best ``k`` tracks are kept as candidates, whose fits are then read for those
rows alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BLOCK = 1 << 24  # scores held at once while reading the pages' stats (64 MB of float32)
_EPS = 1e-6
# The z-score of a track that cannot be scored (an unusable stored vector scores -inf): it
# never fits, and the programme's prefix sums stay finite.
_UNUSABLE = -1e3


@dataclass(frozen=True)
class PageStats:
    """Per page: the mean and spread of its scores over the whole catalogue, and its best tracks."""

    mean: np.ndarray  # float64 [N]
    std: np.ndarray  # float64 [N]
    top: np.ndarray  # int64 [N, k]: rows of the best k tracks, best first (ties: lower row)
    best: np.ndarray  # float64 [N]: score of the best track


def page_stats(embs: np.ndarray, catalogue, k: int) -> PageStats:
    embs = np.asarray(embs, dtype=np.float32)
    n, m = embs.shape[0], len(catalogue)
    k = min(k, m)
    total, total_sq, count = np.zeros(n), np.zeros(n), np.zeros(n)
    top_rows = np.zeros((n, 0), np.int64)
    top_vals = np.zeros((n, 0), np.float32)
    step = max(1, _BLOCK // max(n, 1))
    for lo in range(0, m, step):
        rows = np.arange(lo, min(lo + step, m), dtype=np.int64)
        s = catalogue.scores(embs, rows)  # float32 [n, block]; an unusable track scores -inf
        ok = np.isfinite(s)
        v = np.where(ok, s, 0.0)
        total += v.sum(axis=1, dtype=np.float64)
        total_sq += np.square(v, dtype=np.float64).sum(axis=1)
        count += ok.sum(axis=1)
        cand = np.concatenate([top_rows, np.broadcast_to(rows, s.shape)], axis=1)
        vals = np.concatenate([top_vals, s], axis=1)
        # Best first; ties go to the lower row so results never depend on the blocks.
        order = np.lexsort((cand, -vals), axis=1)[:, :k]
        top_rows, top_vals = np.take_along_axis(cand, order, 1), np.take_along_axis(vals, order, 1)
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return PageStats(mean, std, top_rows, top_vals[:, 0].astype(np.float64))


def fits(embs: np.ndarray, mean: np.ndarray, std: np.ndarray, catalogue,
         rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N, C], z-scores [N, C]) of the pages with the catalogue rows ``rows``."""
    s = catalogue.scores(embs, np.asarray(rows, dtype=np.int64)).astype(np.float64)
    z = (s - np.asarray(mean)[:, None]) / np.maximum(np.asarray(std), _EPS)[:, None]
    z[~np.isfinite(z)] = _UNUSABLE
    return s, z


def candidates(stats: PageStats, extra: np.ndarray | None = None) -> np.ndarray:
    """Sorted union of every page's best tracks (plus ``extra`` rows)."""
    rows = stats.top.ravel()
    if extra is not None:
        rows = np.concatenate([rows, np.asarray(extra, dtype=np.int64)])
    return np.unique(rows)
