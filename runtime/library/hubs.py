"""Hub correction: keep one track from coming first for most pages.

In cross-modal retrieval some items top the results of unrelated queries ("hubs"). In our
audio tower the tracks of a collection sit in a narrow cone (on Debian's Wesnoth music:
mean pairwise cosine 0.80 between tracks, 0.11 between pages) and a track *off* the cone
has cosines to pages that swing more widely than the others', so it wins the argmax for
many pages although its mean cosine to pages is below average. A correction that
subtracts each track's mean similarity to a reference set of pages (CSLS, Conneau et al.
2018) cannot see such a hub, and measured so: it made the largest first-place share worse
(README, "Hubs"). What does help is centring: compare pages with each track's direction
away from the library's mean embedding (``t - c``, renormalised), which gives every track
the same spread (Suzuki et al. 2013 on centring against hubs; Liang et al. 2022 on the gap
between modalities' cones).

    score(q, t) = q . (t - c) / |t - c|  =  (q.t - q.c) / |t - c|

``c`` is the mean pooled embedding of the generation's tracks, stored with the generation
(``centre-SHA.npy``, D floats) and recomputed at each publication (a read of the pooled
rows; it moves a little when tracks are added). Nothing per track is stored: a reader
derives ``1 / |t - c|`` from ``t . c`` in one pass at its first query, so adding a track
never rewrites anything for the others. Pages indexes are not centred.
"""
from __future__ import annotations

import numpy as np

METHOD = "track-centring"
# Fewer tracks than this and there is no meaningful centre (two tracks centre to opposites).
MIN_TRACKS = 3
# |t - c| is floored here: a track almost exactly at the mean has no direction of its own,
# and dividing by ~0 would make its (noise) score explode. Real tracks sit at 0.25-1.0.
MIN_CENTRED_NORM = 0.05
_CHUNK = 1 << 16


def centre_of(blocks) -> tuple[np.ndarray, int]:
    """(mean row as float32 [D], count) of the row blocks (arrays [n, D]), summed in float64
    in the order given, so the same library always gives the same centre to the bit."""
    total, count = None, 0
    for b in blocks:
        b = np.asarray(b, np.float64)
        if not len(b):
            continue
        s = b.sum(axis=0)
        total = s if total is None else total + s
        count += len(b)
    if total is None:
        return np.zeros(0, np.float32), 0
    return (total / count).astype(np.float32), count


def inverse_norms(matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """float32 [N]: 1 / max(|t - c|, MIN_CENTRED_NORM) per row, from t.t and t.c (one pass)."""
    out = np.empty(matrix.shape[0], np.float32)
    c = np.asarray(centre, np.float32)
    cc = float(c @ c)
    for lo in range(0, matrix.shape[0], _CHUNK):
        t = np.asarray(matrix[lo:lo + _CHUNK], np.float32)
        sq = np.einsum("ij,ij->i", t, t) - 2.0 * (t @ c) + cc
        out[lo:lo + len(t)] = 1.0 / np.maximum(np.sqrt(np.maximum(sq, 0.0)), MIN_CENTRED_NORM)
    return out


def centred_rows(block: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Rows as the corrected score sees them: (t - c) / max(|t - c|, floor); unchanged
    without a centre. What an approximate index is built over."""
    t = np.asarray(block, np.float32)
    if centre is None:
        return t
    d = t - centre
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), MIN_CENTRED_NORM)
