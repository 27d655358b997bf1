"""Distinct tracks for the segments of a chapter: an optimal assignment (Hungarian method).

Each segment wants the track with the highest summed fit over its pages, but two segments
of the same kind of story would then share a track. ``assign_distinct`` gives every
segment a different track, among those that fit it, maximising the total fit; a segment
left without a fitting track of its own gets -1 (the caller repeats one, which the rules
allow only then). Shortest augmenting paths with potentials, O(segments^2 x tracks), the
inner loop over tracks in numpy.
"""
from __future__ import annotations

import numpy as np

# Cost of a pair that is not allowed, and of the "no distinct track" fallback column: large
# and finite, so the potentials stay ordinary floats; the fallback is cheaper than a
# forbidden pair, so a forbidden pair is never chosen.
_FORBIDDEN = 1e12
_FALLBACK = 1e9


def assign_distinct(value: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Column per row of ``value`` [rows, cols] maximising the sum, columns distinct, only
    where ``allowed``; -1 for a row that cannot get an allowed column of its own."""
    value = np.asarray(value, dtype=np.float64)
    n, m = value.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Scale-free: shift values to be >= 0 so the fallback columns are always worse.
    shifted = value - value[allowed].min() if allowed.any() else np.zeros_like(value)
    cost = np.where(allowed, -shifted, _FORBIDDEN)
    cost = np.hstack([cost, np.full((n, n), _FALLBACK)])  # one fallback column per row
    cols = _hungarian(cost)
    return np.where((cols < m) & allowed[np.arange(n), np.minimum(cols, m - 1)], cols, -1).astype(np.int64)


def _hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row to a distinct column (rows <= cols)."""
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row (1-based) holding column j; 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[p[used]] += delta  # used columns hold distinct rows
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    out = np.full(n, -1, dtype=np.int64)
    for j in range(1, m + 1):
        if p[j]:
            out[p[j] - 1] = j - 1
    return out
