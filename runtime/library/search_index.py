"""Search over a generation: every segment searched, deleted rows left out, hubs corrected.

``SegmentedIndex`` answers top-k queries with the library's row numbers (0..N-1 over live
ranked tracks, segment by segment in generation order). With a centre (music libraries,
see ``hubs.py``) the score is ``(q.t - q.c) * inv_norm[t]``, the cosine between the query
and the track's direction away from the library's mean; ``correct=False`` gives the plain
cosine. Each segment is searched exactly (one chunked matrix product over its memory-mapped
vectors), or, past ``FAISS_THRESHOLD`` rows with faiss installed, through the FAISS index
saved beside it: the index proposes candidates (built over the centred rows as they were
when the segment was written), which are then scored exactly, so a centre that moved since
costs recall, never correctness of the scores. Candidates of all segments are merged.

``build_ann`` and ``measure_recall`` run at index time only (``build_library``): the query
path loads saved indexes and never builds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LibraryError
from ..search import FAISS_THRESHOLD, PQ_K_FACTOR_MIN, FaissIndex, SearchHits, _as_queries, _pq_codes, \
    faiss_available, top_k
from .hubs import centred_rows

# Segments with at least this many vectors get an approximate index at index time (faiss
# installed), once the library holds ANN_BUILD_FROM tracks: ready before search switches to
# it at FAISS_THRESHOLD, and no index-time or disk cost for libraries that will never use
# it. Smaller segments are searched exactly: 10k rows take well under a millisecond.
ANN_MIN_SEGMENT_ROWS = 10_000
ANN_BUILD_FROM = FAISS_THRESHOLD // 2
# The kind built (runtime/search.py): 4-bit product codes scanned whole, re-ranked with
# 8-bit codes; recall does not hinge on how the tracks are spread. Its size parameters
# are recorded in the library's AnnSpec (m: sub-quantisers, ef_search: k_factor).
ANN_KIND = "pq-refine"
# Candidates the approximate index proposes per wanted hit, rescored exactly in float32
# (100 for a top-10; 64 lost 0.04 of recall@10 on a million random rows).
ANN_OVERFETCH = 10
ANN_MIN_CANDIDATES = 100
_CHUNK_ROWS = 1 << 16


@dataclass
class IndexPart:
    """One segment as the index sees it."""

    matrix: np.ndarray  # float32 [V, D] (memmap)
    inv_norm: np.ndarray | None  # float32 [V]: 1 / |t - c| (None: no centre)
    deleted: np.ndarray  # sorted int64 vector ids left out
    base: int  # library row of the segment's first live vector
    ann: FaissIndex | None = None

    @property
    def live(self) -> int:
        return self.matrix.shape[0] - len(self.deleted)

    def rows(self, vecs: np.ndarray) -> np.ndarray:
        """Library rows of (live) vector ids."""
        return self.base + vecs - np.searchsorted(self.deleted, vecs)


class SegmentedIndex:
    """Top-k over all parts; ids are library rows. ``use_ann``: search parts through their
    saved FAISS indexes where they have one."""

    def __init__(self, parts: list[IndexPart], dim: int, centre: np.ndarray | None = None, use_ann: bool = False):
        self.parts, self.dim, self.centre, self.use_ann = parts, dim, centre, use_ann

    def __len__(self) -> int:
        return sum(p.live for p in self.parts)

    def _score(self, part: IndexPart, q: np.ndarray, qc: np.ndarray | None, lo: int, block: np.ndarray) -> np.ndarray:
        return self._score_at(part, q, qc, slice(lo, lo + block.shape[0]), block)

    @staticmethod
    def _score_at(part: IndexPart, q: np.ndarray, qc: np.ndarray | None, vecs, block: np.ndarray) -> np.ndarray:
        """Scores of ``block`` = ``part.matrix[vecs]`` (a slice or an array of vector ids)."""
        s = q @ block.T
        if qc is not None and part.inv_norm is not None:
            s = (s - qc[:, None]) * part.inv_norm[vecs]
        # A damaged vector (NaN) must not poison the ranking: it simply never ranks.
        s[~np.isfinite(s)] = -np.inf
        return s

    def _exact(self, part: IndexPart, q, qc, k: int) -> tuple[np.ndarray, np.ndarray]:
        cand_s, cand_i = [], []
        for lo in range(0, part.matrix.shape[0], _CHUNK_ROWS):
            block = np.asarray(part.matrix[lo:lo + _CHUNK_ROWS], dtype=np.float32)
            s = self._score(part, q, qc, lo, block)
            dead = part.deleted[(part.deleted >= lo) & (part.deleted < lo + len(block))] - lo
            s[:, dead] = -np.inf
            ss, ii = top_k(s, k)
            cand_s.append(ss)
            cand_i.append(ii + lo)
        s_all, i_all = np.concatenate(cand_s, axis=1), np.concatenate(cand_i, axis=1)
        s, pos = top_k(s_all, k)
        return s, np.take_along_axis(i_all, pos, axis=1)

    def _approx(self, part: IndexPart, q, qc, k: int) -> tuple[np.ndarray, np.ndarray]:
        want = min(part.live, max(k * ANN_OVERFETCH, ANN_MIN_CANDIDATES))
        cand = part.ann.search(q, want, exclude=part.deleted if len(part.deleted) else None).ids
        out_s = np.full((q.shape[0], k), -np.inf, np.float32)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        for j in range(q.shape[0]):  # rescore each query's candidates exactly
            ids = np.unique(cand[j][cand[j] >= 0])
            if not len(ids):
                continue
            s = (q[j] @ np.asarray(part.matrix[ids], np.float32).T)[None, :]
            if qc is not None and part.inv_norm is not None:
                s = (s - qc[j]) * part.inv_norm[ids]
            s[~np.isfinite(s)] = -np.inf
            ss, pos = top_k(s, k)
            out_s[j, :ss.shape[1]], out_i[j, :ss.shape[1]] = ss[0], ids[pos[0]]
        return out_s, out_i

    def search(self, queries: np.ndarray, k: int, correct: bool = True) -> SearchHits:
        """Top-k rows per query, best first; ``correct``: rank by the centred score."""
        q = _as_queries(queries, self.dim)
        if k <= 0 or not self.parts:
            return SearchHits(np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64))
        qc = q @ self.centre if correct and self.centre is not None else None
        cand_s, cand_r = [], []
        for part in self.parts:
            if part.live == 0:
                continue
            kk = min(k, part.live)
            if self.use_ann and part.ann is not None:
                s, vecs = self._approx(part, q, qc, kk)
            else:
                s, vecs = self._exact(part, q, qc, kk)
            cand_s.append(s)
            cand_r.append(np.where(vecs >= 0, part.rows(np.maximum(vecs, 0)), -1))
        if not cand_s:
            return SearchHits(np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64))
        s_all, r_all = np.concatenate(cand_s, axis=1), np.concatenate(cand_r, axis=1)
        s, pos = top_k(s_all, k)
        rows = np.take_along_axis(r_all, pos, axis=1)
        rows[~np.isfinite(s)] = -1  # deleted or damaged rows only filled the list: not hits
        return SearchHits(s, rows)

    def scores(self, queries: np.ndarray, correct: bool = True, rows=None) -> np.ndarray:
        """float32 [Q, N]: every live row's score, in row order (exact); with ``rows`` (library
        rows, any order, repeats allowed) float32 [Q, len(rows)], those rows' scores only."""
        q = _as_queries(queries, self.dim)
        qc = q @ self.centre if correct and self.centre is not None else None
        if rows is not None:
            return self._scores_of_rows(q, qc, rows)
        out = []
        for part in self.parts:
            for lo in range(0, part.matrix.shape[0], _CHUNK_ROWS):
                block = np.asarray(part.matrix[lo:lo + _CHUNK_ROWS], dtype=np.float32)
                s = self._score(part, q, qc, lo, block)
                keep = np.ones(len(block), bool)
                keep[part.deleted[(part.deleted >= lo) & (part.deleted < lo + len(block))] - lo] = False
                out.append(s[:, keep])
        return np.concatenate(out, axis=1) if out else np.zeros((q.shape[0], 0), np.float32)

    def _scores_of_rows(self, q: np.ndarray, qc: np.ndarray | None, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((q.shape[0], len(rows)), np.float32)
        if not len(rows):
            return out
        n = len(self)
        bad = rows[(rows < 0) | (rows >= n)]
        if len(bad):
            raise LibraryError(f"no track at row {int(bad[0])} (the library holds rows 0..{n - 1})")
        parts = [p for p in self.parts if p.live]
        which = np.searchsorted(np.array([p.base for p in parts]), rows, side="right") - 1
        for i, part in enumerate(parts):
            cols = np.flatnonzero(which == i)
            if not len(cols):
                continue
            # The rank-th live vector: rank plus the deleted vectors at or before it (the
            # j-th deleted id d_j sits where rank d_j - j would be).
            rank = rows[cols] - part.base
            vecs = rank + np.searchsorted(part.deleted - np.arange(len(part.deleted)), rank, side="right")
            out[:, cols] = self._score_at(part, q, qc, vecs, np.asarray(part.matrix[vecs], np.float32))
        return out


# The approximate indexes are searched only when their recall@10, measured when the
# generation was published, is at least this: below it they would return other tracks than
# the exact search, and an exact search over a large catalogue is slow but right. (An HNSW
# index built by an older version over random-like rows recorded 0.02 and stays unused.)
MIN_ANN_RECALL = 0.95


def should_use_ann(total_rows: int, recall_at_10: float | None = None) -> bool:
    """Search through the approximate indexes: a large catalogue, faiss installed, and a
    recorded recall@10 of at least ``MIN_ANN_RECALL``."""
    return (total_rows >= FAISS_THRESHOLD and faiss_available() and recall_at_10 is not None
            and recall_at_10 >= MIN_ANN_RECALL)


class _CentredRows:
    """Row blocks of ``centred_rows(matrix, centre)`` without materialising the whole."""

    def __init__(self, matrix: np.ndarray, centre: np.ndarray | None):
        self.matrix, self.centre = matrix, centre
        self.shape = matrix.shape

    def __getitem__(self, sl: slice) -> np.ndarray:
        return centred_rows(np.asarray(self.matrix[sl], np.float32), self.centre)


def build_ann(matrix: np.ndarray, centre: np.ndarray | None, path: Path) -> None:
    """Build and save (atomically) the approximate index over one segment's (centred) rows."""
    FaissIndex.build(_CentredRows(matrix, centre), kind=ANN_KIND).save(path)


def ann_params(dim: int) -> tuple[int, int]:
    """(m, ef_search) as the library's AnnSpec records them for ``ANN_KIND``: the product
    quantiser's sub-quantisers and the least k_factor (segments past 600,000 rows use more,
    runtime/search.py)."""
    return _pq_codes(dim), PQ_K_FACTOR_MIN


def measure_recall(index: SegmentedIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k that the approximate search also returns."""
    approx = SegmentedIndex(index.parts, index.dim, index.centre, use_ann=True).search(queries, k).ids
    exact = SegmentedIndex(index.parts, index.dim, index.centre, use_ann=False).search(queries, k).ids
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 1.0


def recall_queries(index: SegmentedIndex, n: int = 200, seed: int = 0) -> np.ndarray:
    """Queries for measuring recall: half library vectors moved by noise (a query near a
    track), half random directions (a page is nearly orthogonal to every track: cosines
    around 0.1 on real music), all unit length."""
    rng = np.random.default_rng(seed)
    total = len(index)
    picks = np.sort(rng.choice(total, size=min(n // 2, total), replace=False)) if total else np.zeros(0, int)
    starts = np.cumsum([0] + [p.live for p in index.parts])
    rows = []
    for r in picks:
        pi = int(np.searchsorted(starts, r, side="right") - 1)
        part = index.parts[pi]
        local = int(r - starts[pi])
        vec = local if not len(part.deleted) else int(np.setdiff1d(np.arange(part.matrix.shape[0]),
                                                                   part.deleted)[local])
        rows.append(np.asarray(part.matrix[vec], np.float32))
    near = np.stack(rows) if rows else np.zeros((0, index.dim), np.float32)
    near = near + rng.standard_normal(near.shape).astype(np.float32) / np.sqrt(index.dim)
    q = np.concatenate([near, rng.standard_normal((n - len(near), index.dim)).astype(np.float32)])
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
