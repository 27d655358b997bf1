"""Nearest-neighbour search over unit vectors: exact by default, FAISS behind the same face.

Scores are inner products of unit vectors, i.e. cosines. ``ExactIndex`` is one matrix
product (chunked so a memory-mapped catalogue is streamed, never copied whole) and an
``argpartition`` for the top k: exactly right, and memory-bound (100,000 x 1024 float32
rows, 400 MB, take about 9 ms on a 2-core EPYC). ``FaissIndex`` (optional ``faiss-cpu``)
serves catalogues from ``FAISS_THRESHOLD`` rows, in one of two kinds:

- ``pq-refine`` (what the library builds): a compact copy of the rows scanned whole, so its
  recall does not depend on how the rows are distributed. 4-bit product codes (128 bytes a
  row at 1024-d, FAISS's SIMD "fast scan") rank every row; the best ``k_factor`` times the
  wanted count are re-ranked with 8-bit scalar codes (1 KB a row). Callers then rescore the
  survivors in float32. Measured on 1,000,000 random unit rows (the hardest case: no
  structure to exploit), 100 candidates for a top-10: recall@10 0.98 at 10.4 ms a query,
  against 62 ms exact (2-core AMD EPYC); 0.995 at 2.2 ms on 100,000 rows.
- ``hnsw``: a graph; fast, but its recall depends on the data: on 100,000 random rows it
  found 0.2-0.45 of the exact top-10 (beam width 128-512), and with rows of some structure
  still only 0.36-0.51 for queries far from every row (a page is nearly orthogonal to all
  tracks). Still read and searched where a library has one.

An index is only ever *built* at index time (``FaissIndex.build``, called by the library
builder) and loaded at query time: a query never pays for building one. Both return
``SearchHits``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import LibraryError

# Below this the exact product is fast enough (under 9 ms) that an approximate index only
# adds error; from it the compact copy answers in about 2 ms (module docstring).
FAISS_THRESHOLD = 100_000
_CHUNK_ROWS = 1 << 17


@dataclass(frozen=True)
class SearchHits:
    """Top-k per query, best first: ``scores`` float32 [Q, k], ``ids`` int64 [Q, k] (row numbers)."""

    scores: np.ndarray
    ids: np.ndarray


class VectorIndex(Protocol):
    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, correct: bool = True) -> SearchHits: ...


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [Q, {dim}], got shape {np.shape(queries)}")
    return q


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a [Q, N] score matrix, best first: (scores, ids)."""
    q, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (q, n))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return np.take_along_axis(scores, ids, axis=1).astype(np.float32), ids


class ExactIndex:
    """Exact cosine search over a [N, D] matrix of unit rows (an ndarray or a memmap)."""

    def __init__(self, matrix: np.ndarray):
        if matrix.ndim != 2:
            raise ValueError(f"index matrix must be [N, D], got shape {matrix.shape}")
        self.matrix = matrix

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def search(self, queries: np.ndarray, k: int, correct: bool = True) -> SearchHits:
        """Top-k rows by cosine. ``correct`` is accepted for the ``VectorIndex`` interface;
        a bare matrix has no hub terms to correct with."""
        q = _as_queries(queries, self.dim)
        n = len(self)
        if n <= _CHUNK_ROWS:
            s, i = top_k(q @ np.asarray(self.matrix, dtype=np.float32).T, k)
            return SearchHits(s, i)
        # Large catalogues: top-k per chunk, then top-k of the candidates. Memory stays at
        # one chunk of scores however big the memmap is.
        cand_s, cand_i = [], []
        for start in range(0, n, _CHUNK_ROWS):
            block = np.asarray(self.matrix[start:start + _CHUNK_ROWS], dtype=np.float32)
            s, i = top_k(q @ block.T, k)
            cand_s.append(s)
            cand_i.append(i + start)
        s_all, i_all = np.concatenate(cand_s, axis=1), np.concatenate(cand_i, axis=1)
        s, pos = top_k(s_all, k)
        return SearchHits(s, np.take_along_axis(i_all, pos, axis=1))


def _faiss():
    try:
        import faiss  # optional dependency
    except ImportError:
        raise LibraryError("approximate search needs faiss, which is not installed "
                           "(pip install 'manga-music[ann]', i.e. faiss-cpu)") from None
    return faiss


def faiss_available() -> bool:
    try:
        _faiss()
    except LibraryError:
        return False
    return True


# pq-refine: product-quantiser sub-vectors of this many dimensions, 4 bits each (the fast
# scan layout).
PQ_DIMS_PER_CODE = 4
# Candidates per wanted hit that the 4-bit stage passes to the 8-bit one (k_factor): at least
# PQ_K_FACTOR_MIN, and one per PQ_K_FACTOR_ROWS rows of the segment, as more rows compete for
# the 4-bit ranking's top places. Measured for a top-10 (100 wanted): 100,000 random rows,
# 60 -> recall@10 0.995 (100: 0.9985, 2.5 ms slower); 1,000,000, 60 -> 0.955, 100 -> 0.98.
PQ_K_FACTOR_MIN = 60
PQ_K_FACTOR_ROWS = 10_000


def pq_k_factor(rows: int) -> int:
    """k_factor for a pq-refine index over ``rows`` rows."""
    return max(PQ_K_FACTOR_MIN, -(-rows // PQ_K_FACTOR_ROWS))
# Training rows for the quantisers (evenly spaced over the segment).
_TRAIN_ROWS = 65_536
ANN_KINDS = ("pq-refine", "hnsw")


def _pq_codes(dim: int) -> int:
    """Sub-quantisers for ``dim``: one per ``PQ_DIMS_PER_CODE`` dimensions where that divides
    evenly, else fewer, longer ones (the count must divide ``dim``)."""
    for per in range(PQ_DIMS_PER_CODE, dim + 1):
        if dim % per == 0:
            return dim // per
    return 1


def _spread_rows(matrix, count: int, batch_rows: int) -> np.ndarray:
    """At most ``count`` rows of ``matrix`` (sliced block by block), evenly spaced."""
    n = int(matrix.shape[0])
    step = -(-n // count)  # ceil: every step-th row
    blocks = []
    for lo in range(0, n, batch_rows):
        first = -(-lo // step) * step - lo  # offset of the block's first multiple of step
        blocks.append(np.asarray(matrix[lo:lo + batch_rows], np.float32)[first::step])
    return np.ascontiguousarray(np.concatenate(blocks))


class FaissIndex:
    """Approximate inner-product search (FAISS: ``pq-refine`` or ``hnsw``, module docstring)
    with the ``ExactIndex`` interface."""

    def __init__(self, index, dim: int):
        self.index = index
        self.dim = dim

    @property
    def kind(self) -> str:
        return "hnsw" if hasattr(self.index, "hnsw") else "pq-refine"

    @classmethod
    def build(cls, matrix: np.ndarray, kind: str = "pq-refine", m: int = 32, ef_search: int = 128,
              batch_rows: int = _CHUNK_ROWS) -> "FaissIndex":
        """Index the rows of ``matrix`` (anything sliceable into float32 row blocks). ``m``
        and ``ef_search`` are HNSW's links per node and beam width."""
        faiss = _faiss()
        dim, n = int(matrix.shape[1]), int(matrix.shape[0])
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        elif kind == "pq-refine":
            base = faiss.IndexPQFastScan(dim, _pq_codes(dim), 4, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexRefine(base, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit,
                                                                       faiss.METRIC_INNER_PRODUCT))
            if n < 16:
                raise ValueError(f"a pq-refine index needs at least 16 rows to train on, got {n}")
            index.train(_spread_rows(matrix, _TRAIN_ROWS, batch_rows))
        else:
            raise ValueError(f"unknown approximate index kind {kind!r} ({', '.join(ANN_KINDS)})")
        for start in range(0, n, batch_rows):
            index.add(np.ascontiguousarray(matrix[start:start + batch_rows], dtype=np.float32))
        if kind == "pq-refine":
            index.k_factor = pq_k_factor(n)
        return cls(index, dim)

    @classmethod
    def load(cls, path: str | Path) -> "FaissIndex":
        faiss = _faiss()
        index = faiss.read_index(str(path))
        if not hasattr(index, "hnsw"):
            index.k_factor = pq_k_factor(index.ntotal)  # this version's setting, not the builder's
        return cls(index, int(index.d))

    def save(self, path: str | Path) -> None:
        faiss = _faiss()
        tmp = f"{path}.tmp-{os.getpid()}"
        faiss.write_index(self.index, tmp)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, correct: bool = True,
               exclude: np.ndarray | None = None) -> SearchHits:
        """Top-k by inner product; ``exclude``: row ids never returned (deleted rows).
        Missing hits (fewer than k rows left) have id -1. ``correct`` as for ``ExactIndex``:
        the library's segmented index applies hub terms itself."""
        q = _as_queries(queries, self.dim)
        n_ex = 0 if exclude is None else len(exclude)
        k = min(k, len(self) - n_ex)
        if k <= 0:
            return SearchHits(np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64))
        if not n_ex:
            scores, ids = self.index.search(np.ascontiguousarray(q), k)
        elif self.kind == "hnsw":
            faiss = _faiss()
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(exclude, dtype=np.int64)))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(int(self.index.hnsw.efSearch), k))
            scores, ids = self.index.search(np.ascontiguousarray(q), k, params=params)
        else:
            scores, ids = self._search_excluding(q, k, np.asarray(exclude, np.int64))
        return SearchHits(np.asarray(scores, np.float32), np.asarray(ids, np.int64))

    def _search_excluding(self, q: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The fast-scan stage takes no id filter: ask for more, drop the excluded, and ask
        # again with twice as many if a query was left short (deletions bunched together).
        n = len(self)
        want = min(n, k + int(np.ceil(k * len(exclude) / max(1, n - len(exclude)))) + 16)
        while True:
            scores, ids = self.index.search(np.ascontiguousarray(q), want)
            keep = ~np.isin(ids, exclude) & (ids >= 0)
            if want >= n or keep.sum(axis=1).min() >= k:
                break
            want = min(n, 2 * want)
        out_s = np.full((q.shape[0], k), -np.inf, np.float32)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        for j in range(q.shape[0]):
            s, i = scores[j][keep[j]][:k], ids[j][keep[j]][:k]
            out_s[j, :len(s)], out_i[j, :len(i)] = s, i
        return out_s, out_i


def make_index(matrix: np.ndarray, faiss_path: str | Path | None = None, kind: str = "auto") -> VectorIndex:
    """``exact``; ``faiss``: the saved index at ``faiss_path`` (an error if faiss is missing
    or there is no saved index); ``auto``: the saved FAISS index past ``FAISS_THRESHOLD``
    rows when faiss is installed and the file exists, else exact. Never builds an index:
    that is index-time work (``FaissIndex.build``)."""
    if kind not in ("auto", "exact", "faiss"):
        raise ValueError(f"unknown index kind {kind!r} (auto, exact, faiss)")
    saved = faiss_path is not None and Path(faiss_path).is_file()
    if kind == "faiss":
        _faiss()
        if not saved:
            raise LibraryError(f"no saved approximate index at {faiss_path}; build it at index time "
                               f"(python -m runtime.index) rather than at query time")
        return FaissIndex.load(faiss_path)
    if kind == "auto" and saved and matrix.shape[0] >= FAISS_THRESHOLD and faiss_available():
        return FaissIndex.load(faiss_path)
    return ExactIndex(matrix)
