"""Where the music changes: an exact dynamic programme over the pages of a chapter.

Given each page's fit to each candidate track (z-scores, ``fit.py``), choose segments
(runs of consecutive pages, each at least ``min_pages`` long) and one track per segment to
maximise

    sum over pages of fit(page, its segment's track)  -  switch_cost * (segments - 1)

This is a Viterbi path over tracks with a minimum stay, written as optimal partitioning:
``best[j] = max over i <= j - min_pages of best[i] + value(i, j) - switch_cost`` where
``value(i, j)`` is the best single-track sum over pages i..j-1 (prefix sums make it one
vector operation). A change only pays when the new track's advantage, summed over at least
``min_pages`` pages, beats the switching cost, so one odd page never starts a segment, and a
persistent change in the pages (seen through the music they call for) does. Cost:
O(pages x min(pages, MAX_SEGMENT_PAGES) x (candidates + embedding size)) numpy work,
milliseconds for a 200-page chapter.
"""
from __future__ import annotations

import numpy as np

# No segment is longer than this (about half an hour of reading): bounds the work on very
# long inputs (a whole volume), and music would change by then anyway.
MAX_SEGMENT_PAGES = 240


def segment(z: np.ndarray, switch_cost: float, min_pages: int, embs: np.ndarray | None = None,
            story_weight: float = 0.0, open_end: bool = False) -> list[tuple[int, int, int]]:
    """Optimal segments of ``z`` [pages, tracks]: ``[(first, end, column), ...]`` (end exclusive).

    With ``embs`` [pages, D] and ``story_weight`` > 0, a segment also pays for how spread its
    pages are (see ``_spread_table``). ``open_end``: the pages are a prefix of a chapter still
    being read, so the last segment may be shorter than ``min_pages`` (it may go on); that
    lets a fresh change sit where it happened instead of being pulled earlier to make up the
    length. Ties prefer fewer segments, then the lower column. Fewer pages than
    ``min_pages`` make one segment; no pages, none.
    """
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    if n == 0:
        return []
    k = max(1, int(min_pages))
    if n < k:
        return [(0, n, int(np.argmax(z.sum(axis=0))))]
    cum = np.vstack([np.zeros((1, z.shape[1])), np.cumsum(z, axis=0)])
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    back = np.zeros(n + 1, dtype=np.int64)
    col = np.zeros(n + 1, dtype=np.int64)
    penalty = np.full(n + 1, float(switch_cost))
    penalty[0] = 0.0  # the first segment is no switch
    spread = _spread_table(embs, story_weight) if embs is not None and story_weight > 0 else None
    for j in range(1, n + 1):
        last = 1 if open_end and j == n else k
        if j < last:
            continue
        lo = max(0, j - MAX_SEGMENT_PAGES)
        starts = slice(lo, j - last + 1)
        sums = cum[j] - cum[starts]  # [starts, tracks]: each track's sum over pages i..j-1
        cols = np.argmax(sums, axis=1)
        total = best[starts] + sums[np.arange(sums.shape[0]), cols] - penalty[starts]
        if spread is not None:
            total = total - spread(j, lo, j - last + 1)
        i = int(np.argmax(total))  # first maximum: the earliest start, i.e. the fewest segments
        best[j], back[j], col[j] = total[i], lo + i, cols[i]
    out = []
    j = n
    while j > 0:
        out.append((int(back[j]), j, int(col[j])))
        j = int(back[j])
    return out[::-1]


def _spread_table(embs: np.ndarray, weight: float):
    """``spread(j, lo, hi)``: weight x the spread of pages i..j-1 for i = lo..hi-1, in units of
    the chapter's typical page-to-page change.

    Spread of a segment = sum of squared distances of its pages to their mean =
    sum |p|^2 - |sum p|^2 / n (prefix sums make it O(D) per segment). It is divided by half
    the mean squared distance between consecutive pages, so a segment of one story costs
    about ``weight`` per page whatever it holds (a constant that does not move a boundary),
    while a segment that straddles a change pays extra in proportion to how far apart the
    two sides are and how long each lasts; a single odd page raises the unit a little and
    cannot form a segment of its own.
    """
    e = np.asarray(embs, dtype=np.float64)
    cum = np.vstack([np.zeros((1, e.shape[1])), np.cumsum(e, axis=0)])
    cum_sq = np.concatenate([[0.0], np.cumsum(np.einsum("nd,nd->n", e, e))])
    unit = spread_unit(e)

    def spread(j: int, lo: int, hi: int) -> np.ndarray:
        s = cum[j] - cum[lo:hi]
        count = j - np.arange(lo, hi)
        within = (cum_sq[j] - cum_sq[lo:hi]) - np.einsum("md,md->m", s, s) / count
        return weight * within / unit

    return spread


def spread_unit(embs: np.ndarray) -> float:
    """Half the mean squared distance between consecutive pages: the unit of ``story_weight``."""
    e = np.asarray(embs, dtype=np.float64)
    if e.shape[0] < 2:
        return 1.0
    return max(float(np.mean(np.sum(np.diff(e, axis=0) ** 2, axis=1))) / 2, 1e-6)


def last_page_agrees(z: np.ndarray, embs: np.ndarray, story_weight: float, before: tuple[int, int, int],
                     after: tuple[int, int, int]) -> bool:
    """Whether the last page of segment ``after`` fits it at least as well as the segment
    ``before`` it, by the programme's own measure (its track's fit, and its distance to each
    segment's mean page in spread units). A reader at that page is then already in the new
    story, not back from a detour of a page or two."""
    page = after[1] - 1
    gain = float(z[page, after[2]] - z[page, before[2]])
    if story_weight > 0:
        e = np.asarray(embs, dtype=np.float64)
        d_before = np.sum((e[page] - e[before[0]:before[1]].mean(axis=0)) ** 2)
        d_after = np.sum((e[page] - e[after[0]:after[1]].mean(axis=0)) ** 2)
        gain += story_weight * float(d_before - d_after) / spread_unit(e)
    return gain >= 0
