"""Segments: the immutable unit a library is made of, written once and only read after.

A segment ``sNNNNNN`` is a SQLite table of records (one per indexed file, any status) and
the arrays of its ranked ('ok') records, in ``segments/``::

    sNNNNNN.db            records (schema.SEGMENT_SQL) and the segment's meta
    sNNNNNN.pooled.npy    float32 [V, D]  pooled unit embedding per ok record (row = vec)
    sNNNNNN.windows.npy   float16 [W, D]  unit window embeddings, each record's contiguous
    sNNNNNN.starts.npy    float64 [W]     each window's start in seconds
    sNNNNNN.KEY.faiss     optional FAISS index over its vectors (large segments; .hnsw
                          from older versions)
    sNNNNNN.del-gNNNNNN.npy  int64 sorted record ids deleted as of a generation

The last two kinds are added later, each as a new file (never an edit): deleting a record
or building an approximate index writes a sidecar, never the segment. ``write_segment`` checks every embedding (finite, unit norm)
before a byte is written, streams the arrays (hashing as it goes), fsyncs, and renames
into place; ``OpenSegment`` checks sizes, headers, schema and counts against the
generation's manifest before anything is served.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib import format as npy_format

from ..hashing import sha256_file
from ..errors import LibraryError
from .records import check_relpath, tag_block
from .schema import (SEGMENT_ROLES, SEGMENT_SQL, WINDOW_DTYPE, FileRef, SegmentRef, check_segment_db,
                     segment_prefix)
from .storage import fsync_dir, tmp_name

# Embeddings are unit vectors; float32 pooled rows are held to this, float16 windows
# (3 significant digits) to the looser bound.
_NORM_TOL = {np.dtype(np.float32): 1e-3, np.dtype(np.float16): 2e-2}
# Records tagged and inserted per block: bounds a merge's memory to one block.
_BLOCK = 4096


class EmbeddingCheckError(ValueError):
    """An embedding is not finite or not unit-norm: never written."""


def check_embeddings(x: np.ndarray, what: str) -> None:
    """Refuse rows that are not finite unit vectors (``EmbeddingCheckError``)."""
    x = np.asarray(x)
    if x.size == 0:
        return
    if not np.all(np.isfinite(x)):
        raise EmbeddingCheckError(f"{what}: non-finite values")
    norms = np.linalg.norm(x.astype(np.float32), axis=-1)
    tol = _NORM_TOL.get(x.dtype, 1e-3)
    if np.any(np.abs(norms - 1.0) > tol):
        raise EmbeddingCheckError(f"{what}: not unit length (norms {float(norms.min()):.4f}..{float(norms.max()):.4f})")


@dataclass
class NewRecord:
    """A record to write: from fresh arrays, or copied from another segment's vector."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    status: str  # ok | silent | failed
    reason: str = ""
    duration: float | None = None
    windows: np.ndarray | None = None  # [W, D]
    starts: np.ndarray | None = None  # [W] seconds
    pooled: np.ndarray | None = None  # [D]
    copy_from: tuple["OpenSegment", int] | None = None  # (segment, vec)
    tags: tuple[str, str, str | None] | None = None  # (moods JSON, top mood, genres JSON) to keep

    def window_count(self) -> int:
        if self.status != "ok":
            return 0
        if self.copy_from is not None:
            seg, vec = self.copy_from
            return seg.window_range(vec)[1]
        return len(self.starts)


class _NpyStream:
    """Write a .npy file row block by row block, hashing as it goes (no read-back)."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.final, self.path = path, tmp_name(path)
        self.dtype, self.shape = np.dtype(dtype), shape
        self.f = open(self.path, "wb")
        self.h = hashlib.sha256()
        header = {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        npy_format.write_array_header_1_0(self, header)
        self.rows = 0

    def write(self, data) -> None:  # also receives the header bytes
        if isinstance(data, np.ndarray):
            a = np.ascontiguousarray(data, dtype=self.dtype)
            self.rows += a.shape[0]
            data = a.tobytes()
        self.f.write(data)
        self.h.update(data)

    def finish(self) -> FileRef:
        if self.rows != self.shape[0]:
            raise AssertionError(f"{self.final.name}: wrote {self.rows} rows, header says {self.shape[0]}")
        self.f.flush()
        os.fsync(self.f.fileno())
        size = self.f.tell()
        self.f.close()
        return FileRef(self.final.name, size, self.h.hexdigest())

    def commit(self) -> None:
        os.replace(self.path, self.final)

    def abort(self) -> None:
        self.f.close()
        self.path.unlink(missing_ok=True)


def write_vector_file(seg_dir: Path, name: str, values: np.ndarray, dtype=np.float32) -> FileRef:
    """A small array file (deleted ids, the library's centre), atomically."""
    s = _NpyStream(seg_dir / name, dtype, tuple(values.shape))
    try:
        s.write(values)
        ref = s.finish()
        s.commit()
    except BaseException:
        s.abort()
        raise
    return ref


def write_deleted(seg_dir: Path, ref: SegmentRef, record_ids: np.ndarray, deleted_vectors: int,
                  generation: int) -> SegmentRef:
    """The segment's entry with a new deletion sidecar (ids sorted), or without one if none."""
    from dataclasses import replace

    ids = np.unique(np.asarray(record_ids, np.int64))
    if not len(ids):
        return replace(ref, deleted=None, deleted_count=0, deleted_vectors=0)
    f = write_vector_file(seg_dir, f"{segment_prefix(ref.id)}.del-g{generation:06d}.npy", ids, np.int64)
    return replace(ref, deleted=f, deleted_count=len(ids), deleted_vectors=int(deleted_vectors))


def _record_arrays(r: NewRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled float32 [D], windows float16 [W, D], starts float64 [W]) of an ok record, checked."""
    if r.copy_from is not None:
        src, src_vec = r.copy_from
        lo, cnt = src.window_range(src_vec)
        pooled = np.asarray(src.pooled[src_vec], np.float32)
        windows = np.asarray(src.windows[lo:lo + cnt])
        starts = np.asarray(src.starts[lo:lo + cnt])
    else:
        pooled = np.asarray(r.pooled, np.float32)
        windows = np.asarray(r.windows, np.float32).astype(WINDOW_DTYPE)
        starts = np.asarray(r.starts, np.float64)
    check_embeddings(pooled[None, :], f"{r.path}: pooled embedding")
    check_embeddings(windows, f"{r.path}: window embeddings")
    if len(windows) != len(starts) or len(windows) == 0 or not np.all(np.isfinite(starts)) or np.any(starts < 0):
        raise EmbeddingCheckError(f"{r.path}: window starts do not match the windows")
    return pooled, windows, starts


def sound_copy(seg: "OpenSegment", vec: int) -> bool:
    """Whether a stored vector (and its windows) can be copied into a new segment: finite,
    unit length, in bounds. False for a tampered one, which is then embedded again instead."""
    try:
        _record_arrays(NewRecord("x", 0, 0, "", "ok", copy_from=(seg, vec)))
    except (EmbeddingCheckError, LibraryError, ValueError, IndexError):
        return False
    return True


def write_segment(seg_dir: Path, seg_id: int, records: Sequence[NewRecord], *, kind: str, dim: int,
                  bundle_fingerprint: str, labels, genres, scale: float,
                  counts: tuple[int, int] | None = None) -> SegmentRef:
    """Write ``records`` as segment ``seg_id``; returns its manifest entry. ``labels`` (and
    ``genres`` for pages) tag the vectors, a block at a time. Memory is one block of
    records, however large the segment (a merge):
    ``records`` may be a lazy sequence read in slices, with ``counts`` = (ranked records,
    windows) given so it is not read twice. Nothing is visible under the final names until
    every file is complete and fsynced."""
    if not len(records):
        raise ValueError("a segment holds at least one record")
    if counts is None:
        counts = (sum(r.status == "ok" for r in records), sum(r.window_count() for r in records))
    n_ok, n_win = counts
    prefix = segment_prefix(seg_id)
    streams = {
        "pooled": _NpyStream(seg_dir / f"{prefix}.pooled.npy", np.float32, (n_ok, dim)),
        "windows": _NpyStream(seg_dir / f"{prefix}.windows.npy", WINDOW_DTYPE, (n_win, dim)),
        "starts": _NpyStream(seg_dir / f"{prefix}.starts.npy", np.float64, (n_win,)),
    }
    db_final = seg_dir / f"{prefix}.db"
    db_tmp = tmp_name(db_final)
    committed = False
    try:
        db = sqlite3.connect(db_tmp)
        try:
            for sql in SEGMENT_SQL:
                db.execute(sql)
            db.executemany("INSERT INTO meta VALUES (?, ?)", {
                "segment": str(seg_id), "kind": kind, "embed_dim": str(dim),
                "bundle_fingerprint": bundle_fingerprint, "records": str(len(records))}.items())
            vec = off = 0
            for start in range(0, len(records), _BLOCK):
                block = records[start:start + _BLOCK]
                rows, pooled = [], []
                for rid, r in enumerate(block, start):
                    check_relpath(r.path)
                    if r.status != "ok":
                        rows.append((rid, r.path, r.size, r.mtime_ns, r.sha256, r.status, r.reason, r.duration,
                                     -1, 0, 0, None, None, None))
                        continue
                    p, w, st = _record_arrays(r)
                    streams["windows"].write(w)
                    streams["starts"].write(st)
                    pooled.append(p)
                    tags = r.tags or (None, None, None)
                    rows.append([rid, r.path, r.size, r.mtime_ns, r.sha256, "ok", r.reason, r.duration, vec, off,
                                 len(w), *tags])
                    vec += 1
                    off += len(w)
                if pooled:
                    # Tags for the whole block at once (one product); records that carry
                    # their tags (copies, merges) keep them.
                    block_pooled = np.stack(pooled)
                    streams["pooled"].write(block_pooled)
                    ok_rows = [row for row in rows if isinstance(row, list)]
                    need = [i for i, row in enumerate(ok_rows) if row[11] is None]
                    if need:
                        moods, top = tag_block(block_pooled[need], labels, scale)
                        genre_json = (tag_block(block_pooled[need], genres, scale)[0] if genres is not None
                                      else [None] * len(need))
                        for i, m, t, g in zip(need, moods, top, genre_json):
                            ok_rows[i][11], ok_rows[i][12], ok_rows[i][13] = m, t, g
                db.executemany(f"INSERT INTO records VALUES ({', '.join('?' * 14)})", (tuple(r) for r in rows))
            db.commit()
        finally:
            db.close()
        with open(db_tmp, "rb") as f:
            os.fsync(f.fileno())
        files = {name: s.finish() for name, s in streams.items()}
        files["db"] = FileRef(db_final.name, db_tmp.stat().st_size, sha256_file(db_tmp))
        for s in streams.values():
            s.commit()
        os.replace(db_tmp, db_final)
        committed = True
        fsync_dir(seg_dir)
    finally:
        if not committed:
            for s in streams.values():
                s.abort()
            db_tmp.unlink(missing_ok=True)
    return SegmentRef(seg_id, len(records), n_ok, n_win, tuple(files[r] for r in SEGMENT_ROLES))


# -- reading ----------------------------------------------------------------------------------------
class OpenSegment:
    """A segment opened for reading, checked against its manifest entry: memory-mapped
    arrays, a read-only SQLite handle, and the deleted records of the generation."""

    def __init__(self, seg_dir: Path, ref: SegmentRef, *, kind: str, dim: int, bundle_fingerprint: str):
        self.ref, self.dir = ref, seg_dir
        where = f"segment {ref.id}"
        for f in ref.all_files():
            p = seg_dir / f.name
            try:
                size = p.stat().st_size
            except OSError:
                raise LibraryError(f"{where}: {f.name} is missing") from None
            if size != f.bytes:
                raise LibraryError(f"{where}: {f.name} is {size} bytes, the manifest says {f.bytes}")
        dbp = seg_dir / ref.file("db").name
        try:
            self.db = sqlite3.connect(f"{dbp.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                      check_same_thread=False)
        except sqlite3.Error as exc:
            raise LibraryError(f"{where}: cannot open its database ({exc})") from None
        try:
            meta = check_segment_db(self.db, where)
            expect = {"segment": str(ref.id), "kind": kind, "embed_dim": str(dim),
                      "bundle_fingerprint": bundle_fingerprint, "records": str(ref.records)}
            if {k: meta.get(k) for k in expect} != expect:
                raise LibraryError(f"{where}: its database belongs to another segment or library")
            n, n_ok, max_vec = self.db.execute("SELECT COUNT(*), SUM(status = 'ok'), MAX(vec) FROM records").fetchone()
            if (n, n_ok or 0, -1 if max_vec is None else max_vec) != (ref.records, ref.vectors, ref.vectors - 1):
                raise LibraryError(f"{where}: its database holds {n} records ({n_ok} ranked), the manifest "
                                   f"says {ref.records} ({ref.vectors})")
            self.pooled = self._array("pooled", np.float32, (ref.vectors, dim))
            self.windows = self._array("windows", np.float16, (ref.windows, dim))
            self.starts = self._array("starts", np.float64, (ref.windows,))
            self.deleted_ids = np.zeros(0, np.int64)
            self.deleted_vecs = np.zeros(0, np.int64)
            if ref.deleted is not None:
                ids = self._small(ref.deleted.name, np.int64, (ref.deleted_count,))
                if np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= ref.records:
                    raise LibraryError(f"{where}: deleted record ids are not sorted ids of its records")
                self.deleted_ids = ids
                vecs = [v for (v,) in self.db.execute(
                    "SELECT vec FROM records WHERE vec >= 0 AND id IN (SELECT value FROM json_each(?)) ORDER BY vec",
                    (json.dumps(ids.tolist()),))]
                if len(vecs) != ref.deleted_vectors:
                    raise LibraryError(f"{where}: deleted counts do not match its records")
                self.deleted_vecs = np.asarray(vecs, np.int64)
        except LibraryError:
            self.db.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise LibraryError(f"{where}: unreadable database ({exc})") from None
        self._windows_by_vec: np.ndarray | None = None
        self.live_vecs = (None if not len(self.deleted_vecs)
                          else np.setdiff1d(np.arange(ref.vectors, dtype=np.int64), self.deleted_vecs))

    def _array(self, role: str, dtype, shape) -> np.ndarray:
        name = self.ref.file(role).name
        try:
            a = np.load(self.dir / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise LibraryError(f"segment {self.ref.id}: {name} is not a readable array ({exc})") from None
        if a.dtype != np.dtype(dtype) or a.shape != shape:
            raise LibraryError(f"segment {self.ref.id}: {name} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} "
                               f"{shape}")
        return a

    def _small(self, name: str, dtype, shape) -> np.ndarray:
        try:
            a = np.load(self.dir / name, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise LibraryError(f"segment {self.ref.id}: {name} is not a readable array ({exc})") from None
        if a.dtype != np.dtype(dtype) or a.shape != shape:
            raise LibraryError(f"segment {self.ref.id}: {name} has the wrong type or shape")
        return a

    # -- lookups ---------------------------------------------------------------------------
    @property
    def live_count(self) -> int:
        return self.ref.vectors - len(self.deleted_vecs)

    def window_range(self, vec: int) -> tuple[int, int]:
        """(first window row, count) of a vector; read for all vectors at first use."""
        if self._windows_by_vec is None:
            ranges = np.asarray(self.db.execute("SELECT window_offset, window_count FROM records WHERE vec >= 0 "
                                                "ORDER BY vec").fetchall(), np.int64).reshape(-1, 2)
            if len(ranges) != self.ref.vectors or np.any(ranges[:, 1] < 1) \
                    or np.any(ranges[:, 0] + ranges[:, 1] > self.ref.windows):
                raise LibraryError(f"segment {self.ref.id}: window ranges are out of bounds; the library is damaged")
            self._windows_by_vec = ranges
        lo, cnt = self._windows_by_vec[int(vec)]
        return int(lo), int(cnt)

    def is_deleted(self, record_id: int) -> bool:
        i = np.searchsorted(self.deleted_ids, record_id)
        return bool(i < len(self.deleted_ids) and self.deleted_ids[i] == record_id)

    def rank_of_vec(self, vec: int) -> int:
        """Position of a live vector among the segment's live vectors."""
        return int(vec - np.searchsorted(self.deleted_vecs, vec))

    def vec_of_rank(self, rank: int) -> int:
        return int(rank if self.live_vecs is None else self.live_vecs[rank])

    def live_records(self, columns: str = "*", where: str = "1") -> list[tuple]:
        """Rows of live (not deleted) records, in id order; the first column must be id."""
        rows = self.db.execute(f"SELECT {columns} FROM records WHERE {where} ORDER BY id").fetchall()
        if not len(self.deleted_ids):
            return rows
        return [r for r in rows if not self.is_deleted(r[0])]

    def close(self) -> None:
        self.db.close()


def verify_files(seg_dir: Path, files: Sequence[FileRef]) -> list[str]:
    """Problems found by hashing every file (slow: reads everything); [] when all match."""
    problems = []
    for f in files:
        p = seg_dir / f.name
        try:
            if p.stat().st_size != f.bytes or sha256_file(p) != f.sha256:
                problems.append(f"{f.name}: content differs from what was written")
        except OSError as exc:
            problems.append(f"{f.name}: {exc.strerror or exc}")
    return problems
