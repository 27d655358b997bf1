"""Nearest-neighbour search over unit vectors: exact by default, FAISS behind the same face.

Scores are inner products of unit vectors, i.e. cosines. ``ExactIndex`` is one matrix
product (chunked so a memory-mapped catalogue is streamed, never copied whole) and an
``argpartition`` for the top k: for up to a few hundred thousand tracks this is a few tens
of milliseconds and exactly right. ``FaissIndex`` (HNSW, optional ``faiss-cpu``) serves
catalogues past ``FAISS_THRESHOLD`` rows; it is only ever *built* at index time
(``FaissIndex.build``, called by the library builder) and loaded at query time: a query
never pays for building one. Both return ``SearchHits``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import LibraryError

# Below this the exact product is fast enough that an approximate index only adds error.
FAISS_THRESHOLD = 200_000
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


class FaissIndex:
    """Approximate inner-product search (FAISS HNSW) with the ``ExactIndex`` interface."""

    def __init__(self, index, dim: int):
        self.index = index
        self.dim = dim

    @classmethod
    def build(cls, matrix: np.ndarray, m: int = 32, ef_search: int = 128, batch_rows: int = _CHUNK_ROWS) -> "FaissIndex":
        faiss = _faiss()
        dim = int(matrix.shape[1])
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
        for start in range(0, matrix.shape[0], batch_rows):
            index.add(np.ascontiguousarray(matrix[start:start + batch_rows], dtype=np.float32))
        return cls(index, dim)

    @classmethod
    def load(cls, path: str | Path) -> "FaissIndex":
        faiss = _faiss()
        index = faiss.read_index(str(path))
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
        if n_ex:
            faiss = _faiss()
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(exclude, dtype=np.int64)))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(int(self.index.hnsw.efSearch), k))
            scores, ids = self.index.search(np.ascontiguousarray(q), k, params=params)
        else:
            scores, ids = self.index.search(np.ascontiguousarray(q), k)
        return SearchHits(np.asarray(scores, np.float32), np.asarray(ids, np.int64))


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
