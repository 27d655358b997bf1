"""Search over a generation: every segment searched, deleted rows left out, hubs corrected.

``SegmentedIndex`` answers top-k queries with the library's row numbers (0..N-1 over live
ranked tracks, segment by segment in generation order). Each segment is searched exactly
(one chunked matrix product over its memory-mapped vectors), or through the FAISS index
saved beside it when the library is past ``FAISS_THRESHOLD`` rows, faiss is installed and
the segment has one; candidates of all segments are merged. The hub correction subtracts
``weight * hub`` per track; in FAISS it is the last coordinate of vectors built as
``[pooled, -weight * hub]``, queried with ``[q, 1]`` (or ``[q, 0]`` uncorrected), so the
approximate index ranks by the same corrected score.

``build_ann`` and ``measure_recall`` run at index time only (``build_library``): the query
path loads saved indexes and never builds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..search import FAISS_THRESHOLD, FaissIndex, SearchHits, _as_queries, faiss_available, top_k

# Segments with at least this many vectors get an HNSW index at index time (faiss installed).
# Smaller ones are searched exactly: 10k rows take well under a millisecond.
ANN_MIN_SEGMENT_ROWS = 10_000
ANN_M = 32
ANN_EF_SEARCH = 128
_CHUNK_ROWS = 1 << 16


@dataclass
class IndexPart:
    """One segment as the index sees it."""

    matrix: np.ndarray  # float32 [V, D] (memmap)
    bias: np.ndarray | None  # float32 [V]: weight * hub term, or None
    deleted: np.ndarray  # sorted int64 vector ids left out
    base: int  # library row of the segment's first live vector
    ann: FaissIndex | None = None

    @property
    def live(self) -> int:
        return self.matrix.shape[0] - len(self.deleted)

    def rows(self, vecs: np.ndarray) -> np.ndarray:
        """Library rows of (live) vector ids."""
        return self.base + vecs - np.searchsorted(self.deleted, vecs)


def augmented(matrix: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """[pooled, -bias] rows for an inner-product index that applies the hub correction."""
    out = np.empty((matrix.shape[0], matrix.shape[1] + 1), np.float32)
    out[:, :-1] = matrix
    out[:, -1] = 0.0 if bias is None else -bias
    return out


class SegmentedIndex:
    """Top-k over all parts; ids are library rows. ``use_ann``: search parts through their
    saved FAISS indexes where they have one."""

    def __init__(self, parts: list[IndexPart], dim: int, use_ann: bool = False):
        self.parts, self.dim, self.use_ann = parts, dim, use_ann

    def __len__(self) -> int:
        return sum(p.live for p in self.parts)

    def _exact(self, part: IndexPart, q: np.ndarray, k: int, correct: bool) -> tuple[np.ndarray, np.ndarray]:
        cand_s, cand_i = [], []
        n = part.matrix.shape[0]
        for lo in range(0, n, _CHUNK_ROWS):
            block = np.asarray(part.matrix[lo:lo + _CHUNK_ROWS], dtype=np.float32)
            s = q @ block.T
            if correct and part.bias is not None:
                s -= part.bias[lo:lo + _CHUNK_ROWS]
            dead = part.deleted[(part.deleted >= lo) & (part.deleted < lo + len(block))] - lo
            s[:, dead] = -np.inf
            # A damaged vector (NaN) must not poison the ranking: it simply never ranks.
            s[~np.isfinite(s)] = -np.inf
            ss, ii = top_k(s, k)
            cand_s.append(ss)
            cand_i.append(ii + lo)
        s_all, i_all = np.concatenate(cand_s, axis=1), np.concatenate(cand_i, axis=1)
        s, pos = top_k(s_all, k)
        return s, np.take_along_axis(i_all, pos, axis=1)

    def _approx(self, part: IndexPart, q: np.ndarray, k: int, correct: bool) -> tuple[np.ndarray, np.ndarray]:
        qa = np.empty((q.shape[0], q.shape[1] + 1), np.float32)
        qa[:, :-1] = q
        qa[:, -1] = 1.0 if correct else 0.0
        hits = part.ann.search(qa, k, exclude=part.deleted if len(part.deleted) else None)
        s = hits.scores.copy()
        s[hits.ids < 0] = -np.inf
        return s, hits.ids

    def search(self, queries: np.ndarray, k: int, correct: bool = True) -> SearchHits:
        """Top-k rows per query, best first; ``correct``: rank by the hub-corrected score."""
        q = _as_queries(queries, self.dim)
        if k <= 0 or not self.parts:
            return SearchHits(np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64))
        cand_s, cand_r = [], []
        for part in self.parts:
            if part.live == 0:
                continue
            kk = min(k, part.live)
            if self.use_ann and part.ann is not None:
                s, vecs = self._approx(part, q, kk, correct)
            else:
                s, vecs = self._exact(part, q, kk, correct)
            cand_s.append(s)
            cand_r.append(np.where(vecs >= 0, part.rows(np.maximum(vecs, 0)), -1))
        if not cand_s:
            return SearchHits(np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64))
        s_all, r_all = np.concatenate(cand_s, axis=1), np.concatenate(cand_r, axis=1)
        s, pos = top_k(s_all, k)
        rows = np.take_along_axis(r_all, pos, axis=1)
        rows[~np.isfinite(s)] = -1  # deleted or damaged rows only filled the list: not hits
        return SearchHits(s, rows)


def should_use_ann(total_rows: int) -> bool:
    return total_rows >= FAISS_THRESHOLD and faiss_available()


def build_ann(matrix: np.ndarray, bias: np.ndarray | None, path: Path) -> None:
    """Build and save (atomically) an HNSW index over one segment's augmented vectors."""
    from .storage import tmp_name

    idx = FaissIndex.build(_AugmentedRows(matrix, bias), m=ANN_M, ef_search=ANN_EF_SEARCH)
    tmp = tmp_name(path)
    idx.save(tmp)
    tmp.replace(path)


class _AugmentedRows:
    """Row blocks of ``augmented(matrix, bias)`` without materialising the whole thing."""

    def __init__(self, matrix: np.ndarray, bias: np.ndarray | None):
        self.matrix, self.bias = matrix, bias
        self.shape = (matrix.shape[0], matrix.shape[1] + 1)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return augmented(np.asarray(self.matrix[sl], np.float32), None if self.bias is None else self.bias[sl])


def measure_recall(index: SegmentedIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k that the approximate search also returns."""
    approx = SegmentedIndex(index.parts, index.dim, use_ann=True).search(queries, k).ids
    exact = SegmentedIndex(index.parts, index.dim, use_ann=False).search(queries, k).ids
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 1.0


def recall_queries(index: SegmentedIndex, reference: np.ndarray | None, n: int = 200, seed: int = 0) -> np.ndarray:
    """Queries for measuring recall: the reference pages plus library vectors moved by
    noise (a page is never identical to a track), all unit length."""
    rng = np.random.default_rng(seed)
    rows = []
    total = len(index)
    picks = rng.choice(total, size=min(n, total), replace=False) if total else []
    starts = np.cumsum([0] + [p.live for p in index.parts])
    for r in np.sort(picks):
        pi = int(np.searchsorted(starts, r, side="right") - 1)
        part = index.parts[pi]
        live = np.setdiff1d(np.arange(part.matrix.shape[0]), part.deleted) if len(part.deleted) else None
        vec = int(r - starts[pi]) if live is None else int(live[r - starts[pi]])
        rows.append(np.asarray(part.matrix[vec], np.float32))
    q = np.stack(rows) if rows else np.zeros((0, index.dim), np.float32)
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (1.0 / np.sqrt(index.dim))
    if reference is not None:
        q = np.concatenate([np.asarray(reference, np.float32), q])
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
