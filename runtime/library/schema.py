"""The library's on-disk formats and their validation: nothing is used before it passes.

Three kinds of file describe a library (see ``runtime/library/__init__.py`` for the folder):

- a generation manifest ``gen-NNNNNN.json`` (``GenerationManifest``): which segments make
  up the library, with every file's name, size and sha256, the root of the stored paths,
  the hub correction's centre and the approximate index;
- a build journal ``build.json`` (``Journal``): the segments an unfinished build has
  committed so far, so a killed build resumes;
- a segment's SQLite database (``SEGMENT_SQL``): one row per indexed file.

``from_dict`` methods check every field's type and range and raise ``LibraryError`` naming
the field, so a tampered or truncated file is a one-line refusal, never a ``KeyError``;
``check_segment_db`` compares a database's schema with ``SEGMENT_SQL`` word for word.
File names in manifests must be bare names matching ``_NAME_RE``: they can never point
outside the library's ``segments/`` folder.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from ..errors import LibraryError
from ..json_fields import Fields
from ..search import ANN_KINDS

SCHEMA_VERSION = 2
MANIFEST_FORMAT = "manga-music-library"
JOURNAL_FORMAT = "manga-music-build-journal"
KINDS = ("music", "pages")
STATUSES = ("ok", "silent", "failed")
WINDOW_DTYPE = "float16"

CURRENT_NAME = "CURRENT"
JOURNAL_NAME = "build.json"
SEGMENTS_DIR = "segments"
LEASES_DIR = "leases"
LOCK_NAME = ".lock"
GC_LOCK_NAME = ".gc.lock"

GEN_RE = re.compile(r"^gen-(\d{6,})\.json$")
OLD_GEN_RE = re.compile(r"^gen-(\d{6,})$")  # format 1: a folder per generation
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
SEGMENT_ROLES = ("db", "pooled", "windows", "starts")


def generation_name(n: int) -> str:
    return f"gen-{n:06d}.json"


def segment_prefix(seg_id: int) -> str:
    return f"s{seg_id:06d}"


# One row per indexed file. `vec` is the row in pooled.npy (and hub files) for status 'ok',
# -1 otherwise; ok rows take vec 0, 1, 2, ... in id order and own windows
# [window_offset, window_offset + window_count) of windows.npy / starts.npy.
SEGMENT_SQL = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE records ("
    "id INTEGER PRIMARY KEY CHECK (id >= 0), "
    "path TEXT NOT NULL UNIQUE CHECK (length(path) > 0 AND substr(path, 1, 1) != '/'), "
    "size INTEGER NOT NULL CHECK (size >= 0), "
    "mtime_ns INTEGER NOT NULL, "
    "content_sha256 TEXT NOT NULL, "
    "status TEXT NOT NULL CHECK (status IN ('ok', 'silent', 'failed')), "
    "reason TEXT NOT NULL, "
    "duration REAL, "
    "vec INTEGER NOT NULL CHECK (vec >= -1), "
    "window_offset INTEGER NOT NULL CHECK (window_offset >= 0), "
    "window_count INTEGER NOT NULL CHECK (window_count >= 0), "
    "moods TEXT, top_mood TEXT, genres TEXT, "
    "CHECK ((status = 'ok') = (vec >= 0)))",
    "CREATE INDEX records_vec ON records(vec)",
    "CREATE INDEX records_sha ON records(content_sha256)",
)
RECORD_COLUMNS = ("id", "path", "size", "mtime_ns", "content_sha256", "status", "reason", "duration", "vec",
                  "window_offset", "window_count", "moods", "top_mood", "genres")


def check_segment_db(db: sqlite3.Connection, where: str) -> dict[str, str]:
    """Refuse a segment database whose schema is not exactly ``SEGMENT_SQL``; return its meta."""
    try:
        got = sorted(r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise LibraryError(f"{where}: not a readable segment database ({exc})") from None
    if got != sorted(SEGMENT_SQL):
        raise LibraryError(f"{where}: segment database schema is not the one this runtime writes")
    return meta


# -- field checks (rules in runtime/json_fields.py) ---------------------------------------------
_F = Fields(LibraryError)
_get, _float, _list = _F.req, _F.float, _F.list


def _int(d, key, where, lo: int = 0, hi: int | None = None) -> int:
    return _F.int(d, key, where, lo, hi)  # counts and ids: never negative unless said


def _str(d, key, where, pattern: re.Pattern | None = None, choices: tuple[str, ...] | None = None,
         optional: bool = False) -> str | None:
    return _F.str(d, key, where, choices=choices, pattern=pattern, optional=optional)


# -- manifest pieces ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRef:
    """A file in ``segments/``: bare name, size in bytes, sha256 of its content."""

    name: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d, where: str) -> "FileRef":
        return cls(_str(d, "name", where, _NAME_RE), _int(d, "bytes", where), _str(d, "sha256", where, _SHA_RE))


def _file_or_none(d, key, where) -> FileRef | None:
    v = _get(d, key, where)
    return None if v is None else FileRef.from_dict(v, f"{where}.{key}")


@dataclass(frozen=True)
class SegmentRef:
    """One immutable segment as a generation names it: its files, counts and deletions.

    ``deleted`` names a sorted int64 array of record ids removed since the segment was
    written (None: none); ``ann`` a FAISS index over the segment's vectors (large segments
    only), built over the rows as ``ann_key`` says (centred or raw)."""

    id: int
    records: int
    vectors: int
    windows: int
    files: tuple[FileRef, ...]  # in SEGMENT_ROLES order
    deleted: FileRef | None = None
    deleted_count: int = 0
    deleted_vectors: int = 0
    ann: FileRef | None = None
    ann_key: str = ""

    def file(self, role: str) -> FileRef:
        return self.files[SEGMENT_ROLES.index(role)]

    @property
    def live_vectors(self) -> int:
        return self.vectors - self.deleted_vectors

    @property
    def live_records(self) -> int:
        return self.records - self.deleted_count

    def all_files(self) -> list[FileRef]:
        return [*self.files, *(f for f in (self.deleted, self.ann) if f is not None)]

    def to_dict(self) -> dict:
        return {"id": self.id, "records": self.records, "vectors": self.vectors, "windows": self.windows,
                "files": {r: f.to_dict() for r, f in zip(SEGMENT_ROLES, self.files)},
                "deleted": None if self.deleted is None else self.deleted.to_dict(),
                "deleted_count": self.deleted_count, "deleted_vectors": self.deleted_vectors,
                "ann": None if self.ann is None else self.ann.to_dict(), "ann_key": self.ann_key}

    @classmethod
    def from_dict(cls, d, where: str) -> "SegmentRef":
        files_d = _get(d, "files", where)
        files = tuple(FileRef.from_dict(_get(files_d, r, f"{where}.files"), f"{where}.files.{r}")
                      for r in SEGMENT_ROLES)
        ref = cls(_int(d, "id", where), _int(d, "records", where, lo=1), _int(d, "vectors", where),
                  _int(d, "windows", where), files, _file_or_none(d, "deleted", where),
                  _int(d, "deleted_count", where), _int(d, "deleted_vectors", where),
                  _file_or_none(d, "ann", where), _str(d, "ann_key", where))
        if ref.vectors > ref.records or ref.deleted_count > ref.records or ref.deleted_vectors > ref.vectors \
                or (ref.deleted is None) != (ref.deleted_count == 0):
            raise LibraryError(f"{where}: inconsistent counts ({ref.records} records, {ref.vectors} vectors, "
                               f"{ref.deleted_count} deleted)")
        prefix = segment_prefix(ref.id) + "."
        if not all(f.name.startswith(prefix) for f in ref.all_files()):
            raise LibraryError(f"{where}: a file name does not belong to segment {ref.id}")
        return ref


@dataclass(frozen=True)
class RootRef:
    """Where the stored relative paths start: relative to the library folder when the two
    share a drive (a library moved together with its music keeps working), and absolute."""

    relative: str | None
    absolute: str

    def to_dict(self) -> dict:
        return {"relative": self.relative, "absolute": self.absolute}

    @classmethod
    def from_dict(cls, d, where: str) -> "RootRef":
        rel = _str(d, "relative", where, optional=True)
        ab = _str(d, "absolute", where)
        if "\x00" in ab or (rel is not None and "\x00" in rel):
            raise LibraryError(f"{where}: root holds a NUL character")
        return cls(rel, ab)


@dataclass(frozen=True)
class HubSpec:
    """The hub correction (see ``hubs.py``): tracks are compared by their direction away
    from ``centre``, the mean pooled embedding of the generation's ``count`` tracks."""

    method: str
    centre: FileRef  # float32 [D]
    count: int
    min_norm: float

    def to_dict(self) -> dict:
        return {"method": self.method, "centre": self.centre.to_dict(), "count": self.count,
                "min_norm": self.min_norm}

    @classmethod
    def from_dict(cls, d, where: str) -> "HubSpec":
        return cls(_str(d, "method", where, choices=("track-centring",)),
                   FileRef.from_dict(_get(d, "centre", where), f"{where}.centre"), _int(d, "count", where, lo=1),
                   _float(d, "min_norm", where, 1e-6, 1.0))


@dataclass(frozen=True)
class AnnSpec:
    """The approximate index: one FAISS index per large segment, built at index time, and its
    recall@10 against exact search, measured when this generation was published.

    ``kind`` "pq-refine": ``m`` is the product quantiser's sub-quantisers, ``ef_search`` the
    least number of candidates per wanted hit its 4-bit stage passes to the 8-bit one
    (k_factor; more in segments past 600,000 rows); "hnsw" (libraries from before): links
    per node and beam width."""

    kind: str
    m: int
    ef_search: int
    min_segment_rows: int
    recall_at_10: float | None
    queries: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "m": self.m, "ef_search": self.ef_search,
                "min_segment_rows": self.min_segment_rows, "recall_at_10": self.recall_at_10,
                "queries": self.queries}

    @classmethod
    def from_dict(cls, d, where: str) -> "AnnSpec":
        return cls(_str(d, "kind", where, choices=ANN_KINDS), _int(d, "m", where, lo=2),
                   _int(d, "ef_search", where, lo=1), _int(d, "min_segment_rows", where, lo=1),
                   _float(d, "recall_at_10", where, 0.0, 1.0, optional=True), _int(d, "queries", where))


@dataclass(frozen=True)
class GenerationManifest:
    """One published generation: the list of segments that make up the library."""

    generation: int
    kind: str
    bundle_fingerprint: str
    model_name: str
    embed_dim: int
    precision: str
    root: RootRef
    created: str
    updated: str
    loudness_floor_dbfs: float | None
    max_track_seconds: float | None
    segments: tuple[SegmentRef, ...]
    next_segment: int
    hub: HubSpec | None = None
    ann: AnnSpec | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {"format": MANIFEST_FORMAT, "schema_version": self.schema_version, "generation": self.generation,
                "kind": self.kind, "bundle_fingerprint": self.bundle_fingerprint, "model_name": self.model_name,
                "embed_dim": self.embed_dim, "precision": self.precision, "window_dtype": WINDOW_DTYPE,
                "root": self.root.to_dict(), "created": self.created, "updated": self.updated,
                "loudness_floor_dbfs": self.loudness_floor_dbfs, "max_track_seconds": self.max_track_seconds,
                "hub": None if self.hub is None else self.hub.to_dict(),
                "ann": None if self.ann is None else self.ann.to_dict(),
                "next_segment": self.next_segment, "segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, d, where: str) -> "GenerationManifest":
        if _get(d, "format", where) != MANIFEST_FORMAT:
            raise LibraryError(f"{where}: not a manga-music library manifest")
        version = _get(d, "schema_version", where)
        if version != SCHEMA_VERSION:
            raise LibraryError(f"{where}: library format {version!r} is not the one this runtime reads "
                               f"({SCHEMA_VERSION}); re-run `python -m runtime.index` to rebuild it")
        if _get(d, "window_dtype", where) != WINDOW_DTYPE:
            raise LibraryError(f"{where}.window_dtype: expected {WINDOW_DTYPE}")
        segs = tuple(SegmentRef.from_dict(s, f"{where}.segments[{i}]")
                     for i, s in enumerate(_list(d, "segments", where)))
        ids = [s.id for s in segs]
        next_segment = _int(d, "next_segment", where)
        if len(set(ids)) != len(ids) or any(i >= next_segment for i in ids):
            raise LibraryError(f"{where}.segments: duplicate or out-of-range segment ids")
        hub = _get(d, "hub", where)
        ann = _get(d, "ann", where)
        return cls(_int(d, "generation", where, lo=1), _str(d, "kind", where, choices=KINDS),
                   _str(d, "bundle_fingerprint", where), _str(d, "model_name", where),
                   _int(d, "embed_dim", where, lo=1, hi=1 << 16), _str(d, "precision", where),
                   RootRef.from_dict(_get(d, "root", where), f"{where}.root"),
                   _str(d, "created", where), _str(d, "updated", where),
                   _float(d, "loudness_floor_dbfs", where, -200.0, 0.0, optional=True),
                   _float(d, "max_track_seconds", where, 0.0, optional=True), segs, next_segment,
                   None if hub is None else HubSpec.from_dict(hub, f"{where}.hub"),
                   None if ann is None else AnnSpec.from_dict(ann, f"{where}.ann"))

    def content_key(self) -> dict:
        """What makes two generations the same library (not their number or dates)."""
        d = self.to_dict()
        for k in ("generation", "updated", "created", "next_segment"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class Journal:
    """An unfinished build: the segments it committed, for the next run to resume from."""

    kind: str
    bundle_fingerprint: str
    root_absolute: str
    segments: tuple[SegmentRef, ...]
    next_segment: int

    def to_dict(self) -> dict:
        return {"format": JOURNAL_FORMAT, "schema_version": SCHEMA_VERSION, "kind": self.kind,
                "bundle_fingerprint": self.bundle_fingerprint, "root_absolute": self.root_absolute,
                "segments": [s.to_dict() for s in self.segments], "next_segment": self.next_segment}

    @classmethod
    def from_dict(cls, d, where: str) -> "Journal":
        if _get(d, "format", where) != JOURNAL_FORMAT or _get(d, "schema_version", where) != SCHEMA_VERSION:
            raise LibraryError(f"{where}: not a build journal this runtime writes")
        segs = tuple(SegmentRef.from_dict(s, f"{where}.segments[{i}]")
                     for i, s in enumerate(_list(d, "segments", where)))
        return cls(_str(d, "kind", where, choices=KINDS), _str(d, "bundle_fingerprint", where),
                   _str(d, "root_absolute", where), segs, _int(d, "next_segment", where))
