"""The music library (and pages index): a folder of embeddings plus SQLite metadata.

Layout of a library folder ``LIBRARY/``::

    CURRENT                 the live generation's folder name, one line (replaced atomically)
    .lock                   held (flock) by a running indexer
    gen-000007/             one complete, immutable build
        library.sqlite      meta, tracks, failures (schema below)
        tracks.npy          float32 [N, D]  pooled unit embedding per track, row = tracks.row
        windows.npy         float16 [W, D]  unit embedding per window; a track owns rows
                            [window_offset, window_offset + window_count)
        starts.npy          float64 [W]     each window's start in seconds
        tracks.faiss        optional HNSW index over tracks.npy (large catalogues, faiss installed)

Why generations: a build writes a fresh ``gen-*`` folder next to the live one and only
then swaps ``CURRENT`` with ``os.replace`` (atomic on POSIX and Windows). Killing the
indexer at any instant leaves ``CURRENT`` naming a complete generation, so the previous
library keeps loading; leftovers of a killed build are removed by the next one.
Generations are never modified after publication, so readers open SQLite immutable and
memory-map the arrays. Windows are float16: they are only compared within one track to
find the best start, and halve the largest file; pooled rows stay float32 for ranking.

Paths are stored relative to the scanned root; the root itself is stored relative to the
library folder when one contains the other, so a music folder moved together with its
library (or a shipped demo library) keeps working.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .bundle import load_bundle, sha256_file
from .errors import InputError, LibraryError
from .search import FAISS_THRESHOLD, FaissIndex, faiss_available, make_index

LIBRARY_SCHEMA_VERSION = 1
KINDS = ("music", "pages")
CURRENT_NAME = "CURRENT"
LOCK_NAME = ".lock"
DB_NAME = "library.sqlite"
TRACKS_NAME = "tracks.npy"
WINDOWS_NAME = "windows.npy"
STARTS_NAME = "starts.npy"
FAISS_NAME = "tracks.faiss"
WINDOW_DTYPE = np.float16
_GEN_RE = re.compile(r"^gen-(\d{6,})$")

# What libsndfile (and so soundfile) decodes; matched case-insensitively.
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                    ".au", ".snd", ".caf", ".w64", ".rf64")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_SCHEMA_SQL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tracks (
    row            INTEGER PRIMARY KEY,   -- row in tracks.npy
    path           TEXT NOT NULL UNIQUE,  -- relative to the root, '/' separators
    size           INTEGER NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    content_sha256 TEXT NOT NULL,
    duration       REAL,                  -- seconds; NULL for pages
    window_offset  INTEGER NOT NULL,
    window_count   INTEGER NOT NULL,
    moods          TEXT NOT NULL,         -- JSON {mood: probability}, label order
    top_mood       TEXT NOT NULL,
    genres         TEXT,                  -- JSON {genre: probability}; pages only
    status         TEXT NOT NULL DEFAULT 'ok'
);
CREATE INDEX tracks_sha ON tracks(content_sha256);
CREATE TABLE failures (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason   TEXT NOT NULL
);
"""


# -- concepts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LibraryMeta:
    """Facts about a whole library, from its ``meta`` table."""

    schema_version: int
    kind: str
    bundle_fingerprint: str
    model_name: str
    embed_dim: int
    root: Path  # resolved absolute root of the stored relative paths
    created: str
    updated: str
    precision: str
    count: int


@dataclass(frozen=True)
class TrackInfo:
    """One indexed file (a track, or a page in a pages index)."""

    row: int
    path: Path  # absolute
    relpath: str
    size: int
    mtime_ns: int
    sha256: str
    duration: float | None
    window_offset: int
    window_count: int
    moods: tuple[tuple[str, float], ...]
    top_mood: str
    genres: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class Failure:
    """A file the indexer could not use, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class BuildReport:
    """What one ``build_library`` run did."""

    library: Path
    kind: str
    tracks: int
    windows: int
    new: int
    changed: int
    unchanged: int
    moved: int  # same content found under a new path: embeddings reused
    removed: int
    failures: tuple[Failure, ...]
    seconds_embedded: float  # audio seconds embedded this run (music); 0 for pages
    wall_seconds: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def label_distribution(emb: np.ndarray, labels, scale: float) -> tuple[tuple[str, float], ...]:
    """softmax(scale * cos(emb, label embeddings)) as (class, probability) in label order."""
    p = softmax(scale * (np.asarray(labels.embeddings, np.float32) @ np.asarray(emb, np.float32)))
    return tuple((c, float(v)) for c, v in zip(labels.classes, p))


def _dist_json(dist) -> str:
    return json.dumps({k: round(v, 6) for k, v in dist}, ensure_ascii=False)


def _dist_from_json(text: str | None):
    if text is None:
        return None
    return tuple((k, float(v)) for k, v in json.loads(text).items())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- reading ---------------------------------------------------------------------------------
def _read_current(lib_dir: Path) -> Path:
    cur = lib_dir / CURRENT_NAME
    try:
        name = cur.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise LibraryError(f"{lib_dir}: not a manga-music library (no {CURRENT_NAME} file); "
                           f"build one with `python -m runtime.index MUSIC_DIR --out {lib_dir}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LibraryError(f"{lib_dir}: cannot read {CURRENT_NAME} ({exc})") from None
    if not _GEN_RE.match(name):
        raise LibraryError(f"{cur}: names {name!r}, not a generation folder; the library is damaged")
    return lib_dir / name


def _resolve_root(lib_dir: Path, stored: str) -> Path:
    """The music root: "REL|ABS" prefers REL (the library moved with its music, e.g. a fresh
    clone of the shipped demo) and falls back to ABS (the library moved on its own)."""
    rel, _, absolute = stored.partition("|")
    p = Path(rel)
    if p.is_absolute():
        return p
    candidate = (lib_dir / p).resolve()
    return candidate if candidate.exists() or not absolute else Path(absolute)


def _store_root(lib_dir: Path, root: Path) -> str:
    lib_dir, root = lib_dir.resolve(), root.resolve()
    return f"{os.path.relpath(root, lib_dir)}|{root}"


@dataclass(frozen=True)
class Library:
    """An open library generation: memory-mapped arrays plus a read-only SQLite handle."""

    dir: Path
    generation: Path
    meta: LibraryMeta
    tracks: np.ndarray = field(repr=False)  # float32 [N, D] memmap
    windows: np.ndarray = field(repr=False)  # float16 [W, D] memmap
    starts: np.ndarray = field(repr=False)  # float64 [W] memmap
    db: sqlite3.Connection = field(repr=False, compare=False)

    @classmethod
    def open(cls, path: str | Path, bundle=None) -> "Library":
        """Open ``path``; with ``bundle``, refuse a library built with another bundle."""
        lib_dir = Path(path)
        if not lib_dir.is_dir():
            raise LibraryError(f"{lib_dir}: no library here; build one with "
                               f"`python -m runtime.index MUSIC_DIR --out {lib_dir}`")
        gen = _read_current(lib_dir)
        if not gen.is_dir():
            # An indexer may have just published a newer generation and removed this one.
            gen = _read_current(lib_dir)
        lib = cls._open_generation(lib_dir, gen)
        if bundle is not None:
            lib.check_bundle(bundle)
        return lib

    @classmethod
    def _open_generation(cls, lib_dir: Path, gen: Path) -> "Library":
        dbp = gen / DB_NAME
        if not dbp.is_file():
            raise LibraryError(f"{gen}: {DB_NAME} is missing; the library is damaged (rebuild it)")
        try:
            # immutable: a published generation never changes, so no locks or journals needed.
            db = sqlite3.connect(f"{dbp.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            meta_rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
            count, max_end = db.execute("SELECT COUNT(*), COALESCE(MAX(window_offset + window_count), 0) "
                                        "FROM tracks").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"{dbp}: not a readable library database ({exc})") from None
        try:
            version = int(meta_rows.get("schema_version", -1))
            if version != LIBRARY_SCHEMA_VERSION:
                raise LibraryError(f"{lib_dir}: library schema version {version} is not the one this runtime "
                                   f"reads ({LIBRARY_SCHEMA_VERSION}); rebuild it with --rebuild")
            meta = LibraryMeta(version, meta_rows["kind"], meta_rows["bundle_fingerprint"], meta_rows["model_name"],
                               int(meta_rows["embed_dim"]), _resolve_root(lib_dir.resolve(), meta_rows["root"]),
                               meta_rows["created"], meta_rows["updated"], meta_rows.get("precision", ""), int(count))
        except KeyError as exc:
            raise LibraryError(f"{dbp}: meta table lacks {exc}; the library is damaged") from None
        try:
            tracks = np.load(gen / TRACKS_NAME, mmap_mode="r")
            windows = np.load(gen / WINDOWS_NAME, mmap_mode="r")
            starts = np.load(gen / STARTS_NAME, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise LibraryError(f"{gen}: embedding arrays are missing or unreadable ({exc})") from None
        d = meta.embed_dim
        if tracks.shape != (count, d) or windows.ndim != 2 or windows.shape[1] != d \
                or windows.shape[0] < max_end or starts.shape != (windows.shape[0],):
            raise LibraryError(f"{gen}: arrays do not match the metadata (tracks {tracks.shape}, windows "
                               f"{windows.shape}, {count} rows of dim {d}); the library is damaged")
        return cls(lib_dir, gen, meta, tracks, windows, starts, db)

    def check_bundle(self, bundle) -> None:
        """Refuse (``LibraryError``) when ``bundle`` (a Bundle or its folder) is not the one
        the library was built with."""
        bundle = load_bundle(bundle)
        if self.meta.bundle_fingerprint != bundle.fingerprint:
            raise LibraryError(
                f"{self.dir} was built with another bundle ({self.meta.model_name}, "
                f"{self.meta.bundle_fingerprint[:12]}) than the one in use ({bundle.manifest.model.name}, "
                f"{bundle.fingerprint[:12]}); its embeddings are not comparable. Rebuild it: "
                f"python -m runtime.index {self.meta.root} --out {self.dir} --bundle {bundle.dir} --rebuild")

    # -- lookups ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta.count

    @property
    def kind(self) -> str:
        return self.meta.kind

    _COLUMNS = ("row, path, size, mtime_ns, content_sha256, duration, window_offset, window_count, "
                "moods, top_mood, genres")

    def _info(self, r) -> TrackInfo:
        return TrackInfo(int(r[0]), self.meta.root / r[1], r[1], int(r[2]), int(r[3]), r[4],
                         None if r[5] is None else float(r[5]), int(r[6]), int(r[7]),
                         _dist_from_json(r[8]), r[9], _dist_from_json(r[10]))

    def track(self, row: int) -> TrackInfo:
        r = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks WHERE row = ?", (int(row),)).fetchone()
        if r is None:
            raise LibraryError(f"{self.dir}: no track at row {row}")
        return self._info(r)

    def all_tracks(self) -> Iterator[TrackInfo]:
        for r in self.db.execute(f"SELECT {self._COLUMNS} FROM tracks ORDER BY row"):
            yield self._info(r)

    def find(self, path: str | Path) -> TrackInfo | None:
        """The entry for a file path (absolute or relative to the cwd), or None."""
        p = Path(path).resolve()
        try:
            rel = p.relative_to(self.meta.root).as_posix()
        except ValueError:
            return None
        r = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks WHERE path = ?", (rel,)).fetchone()
        return None if r is None else self._info(r)

    def failures(self) -> list[Failure]:
        return [Failure(str(self.meta.root / p), reason)
                for p, reason in self.db.execute("SELECT path, reason FROM failures ORDER BY path")]

    @cached_property
    def index(self):
        """The search index over pooled rows (exact, or FAISS for large catalogues)."""
        return make_index(self.tracks, self.generation / FAISS_NAME)

    def best_window(self, info: TrackInfo, query: np.ndarray) -> tuple[float, float]:
        """(start seconds, cosine) of the track's window closest to ``query``."""
        lo, hi = info.window_offset, info.window_offset + info.window_count
        if hi <= lo:
            return 0.0, float("nan")
        scores = np.asarray(self.windows[lo:hi], dtype=np.float32) @ np.asarray(query, np.float32)
        best = int(np.argmax(scores))
        return float(self.starts[lo + best]), float(scores[best])

    def close(self) -> None:
        self.db.close()


# -- building --------------------------------------------------------------------------------
def scan(root: Path, kind: str = "music", skip: Iterable[Path] = ()) -> list[Path]:
    """Files under ``root`` with the kind's extensions, sorted; hidden files and folders
    (and the library folder itself, if it sits inside) are skipped."""
    exts = AUDIO_EXTENSIONS if kind == "music" else IMAGE_EXTENSIONS
    skip = {Path(s).resolve() for s in skip}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in skip)
        for n in sorted(filenames):
            if not n.startswith(".") and n.lower().endswith(exts):
                found.append(d / n)
    return found


class _Lock:
    """An exclusive advisory lock on LIBRARY/.lock, released by the OS if we die."""

    def __init__(self, lib_dir: Path):
        self.path = lib_dir / LOCK_NAME
        self.fh = None

    def __enter__(self) -> "_Lock":
        self.fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent indexers are the user's lookout
            return self
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise LibraryError(f"{self.path.parent}: another indexer is updating this library right now") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _next_generation(lib_dir: Path) -> Path:
    nums = [int(m.group(1)) for p in lib_dir.iterdir() if (m := _GEN_RE.match(p.name))]
    return lib_dir / f"gen-{max(nums, default=0) + 1:06d}"


def _live_generation(lib_dir: Path) -> Path | None:
    """The generation CURRENT names, or None when there is none (or CURRENT is unreadable)."""
    if not (lib_dir / CURRENT_NAME).exists():
        return None
    try:
        return _read_current(lib_dir)
    except LibraryError:
        return None


def _remove_stale_generations(lib_dir: Path, keep: Path | None) -> None:
    for p in lib_dir.iterdir():
        if _GEN_RE.match(p.name) and p.is_dir() and (keep is None or p.name != keep.name):
            # ignore_errors: on Windows a reader may still hold files open; next build retries.
            shutil.rmtree(p, ignore_errors=True)


@dataclass(frozen=True)
class _Planned:
    """One scanned file and what the old library knows of it."""

    path: Path
    relpath: str
    size: int
    mtime_ns: int
    old: TrackInfo | None = None  # same path, size and mtime: reuse without reading
    failed_reason: str = ""  # same path, size and mtime failed before: skip again


@dataclass(frozen=True)
class _Entry:
    """One track of the new generation: reused from the old one, or embedded now."""

    plan: _Planned
    sha256: str
    window_count: int
    old: TrackInfo | None = None  # embeddings copied from this old track
    scratch_offset: int = -1  # else: first window row in the scratch files ...
    scratch_row: int = -1  # ... and the pooled row
    duration: float | None = None


class _Scratch:
    """Append-only raw files for the embeddings of this run, so memory stays flat however
    many tracks are new; ``_assemble`` copies them into the final .npy files."""

    def __init__(self, gen: Path, d: int):
        self.gen, self.d = gen, d
        self.files = {k: open(gen / f"{k}.scratch", "wb") for k in ("windows", "starts", "pooled")}
        self.windows = 0
        self.rows = 0

    def add(self, windows: np.ndarray, starts: np.ndarray, pooled: np.ndarray) -> tuple[int, int]:
        at = (self.windows, self.rows)
        self.files["windows"].write(np.ascontiguousarray(windows, dtype=WINDOW_DTYPE).tobytes())
        self.files["starts"].write(np.ascontiguousarray(starts, dtype=np.float64).tobytes())
        self.files["pooled"].write(np.ascontiguousarray(pooled, dtype=np.float32).tobytes())
        self.windows += len(windows)
        self.rows += 1
        return at

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def arrays(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        if not self.rows:
            return None, None, None
        mm = lambda k, dt, shape: np.memmap(self.gen / f"{k}.scratch", dtype=dt, mode="r", shape=shape)  # noqa: E731
        return (mm("windows", WINDOW_DTYPE, (self.windows, self.d)), mm("starts", np.float64, (self.windows,)),
                mm("pooled", np.float32, (self.rows, self.d)))

    def remove(self) -> None:
        for k in self.files:
            (self.gen / f"{k}.scratch").unlink(missing_ok=True)


def build_library(source: str | Path, out: str | Path, encoders, kind: str = "music", mode: str | None = None,
                  rebuild: bool = False, progress: bool | None = None,
                  on_file: Callable[[Path], None] | None = None) -> BuildReport:
    """Index every file of ``kind`` under ``source`` into the library folder ``out``.

    Incremental against the library already at ``out``: a file with the same path, size
    and mtime is not read again; one whose content hash matches an indexed file reuses
    its embeddings; everything else is embedded; files gone from ``source`` are dropped.
    Undecodable files are recorded in ``failures`` and skipped (and not retried until they
    change). The result is published atomically (see the module docstring); on any error
    the previous library is untouched. ``on_file`` is called before each file is embedded
    (tests use it to fail mid-build).
    """
    t0 = time.monotonic()
    if kind not in KINDS:
        raise InputError(f"unknown library kind {kind!r} (choose from {', '.join(KINDS)})")
    src = Path(source)
    if not src.exists():
        raise InputError(f"{src}: no such folder")
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    src = src.resolve()
    lib_dir = Path(out)
    if lib_dir.exists() and not lib_dir.is_dir():
        raise InputError(f"{lib_dir}: exists and is not a folder")
    if lib_dir.is_dir() and not (lib_dir / CURRENT_NAME).exists() and any(
            p.name != LOCK_NAME and not _GEN_RE.match(p.name) for p in lib_dir.iterdir()):
        # Never write into (and later clean up) a folder that holds someone else's files.
        raise InputError(f"{lib_dir}: exists, is not empty and is not a manga-music library; choose another --out")
    files = scan(src, kind, skip=[lib_dir])
    if not files:
        exts = AUDIO_EXTENSIONS if kind == "music" else IMAGE_EXTENSIONS
        what = "audio" if kind == "music" else "image"
        raise InputError(f"{src}: no {what} files found (looked for {', '.join(e[1:] for e in exts[:8])}, ...)")
    bundle = encoders.bundle
    # Resolve now: a precision the bundle lacks fails before any work, not after an hour.
    precision = encoders.precision("audio" if kind == "music" else "image").precision
    lib_dir.mkdir(parents=True, exist_ok=True)

    with _Lock(lib_dir):
        old: Library | None = None
        if (lib_dir / CURRENT_NAME).exists() and not rebuild:
            old = Library.open(lib_dir)
            try:
                if old.meta.bundle_fingerprint != bundle.fingerprint:
                    raise LibraryError(f"{lib_dir} was built with another bundle ({old.meta.model_name}, "
                                       f"{old.meta.bundle_fingerprint[:12]}); pass --rebuild to re-embed everything "
                                       f"with {bundle.manifest.model.name} ({bundle.fingerprint[:12]})")
                if old.kind != kind:
                    raise LibraryError(f"{lib_dir} is a {old.kind} index, not a {kind} one; choose another --out")
            except LibraryError:
                old.close()
                raise
        try:
            return _build(files, src, lib_dir, old, encoders, kind, mode, precision, progress, on_file, t0)
        finally:
            if old is not None:
                old.close()


def _plan(files: list[Path], src: Path, old: Library | None, old_infos: list[TrackInfo]) -> list[_Planned]:
    by_path = {info.path: info for info in old_infos}
    failed: dict[Path, tuple[int, int, str]] = {}
    if old is not None:
        for p, size, mtime, reason in old.db.execute("SELECT path, size, mtime_ns, reason FROM failures"):
            failed[old.meta.root / p] = (int(size), int(mtime), reason)
    plan = []
    for f in files:
        st = f.stat()
        rel = f.relative_to(src).as_posix()
        prev = by_path.get(f)
        if prev is not None and (prev.size, prev.mtime_ns) == (st.st_size, st.st_mtime_ns):
            plan.append(_Planned(f, rel, st.st_size, st.st_mtime_ns, old=prev))
            continue
        fail = failed.get(f)
        if fail is not None and fail[:2] == (st.st_size, st.st_mtime_ns):
            plan.append(_Planned(f, rel, st.st_size, st.st_mtime_ns, failed_reason=fail[2]))
            continue
        plan.append(_Planned(f, rel, st.st_size, st.st_mtime_ns))
    return plan


def _build(files, src, lib_dir, old, encoders, kind, mode, precision, progress, on_file, t0) -> BuildReport:
    from .cli import Progress

    old_infos = list(old.all_tracks()) if old is not None else []
    plan = _plan(files, src, old, old_infos)
    old_by_sha: dict[str, TrackInfo] = {}
    for info in old_infos:
        old_by_sha.setdefault(info.sha256, info)
    old_paths = {info.path for info in old_infos}

    gen = _next_generation(lib_dir)
    _remove_stale_generations(lib_dir, keep=_live_generation(lib_dir))
    gen.mkdir()
    published = False
    scratch = _Scratch(gen, encoders.dim)
    try:
        entries: list[_Entry] = []
        failures: list[tuple[_Planned, str]] = []
        counts = {"new": 0, "changed": 0, "unchanged": 0, "moved": 0}
        seconds = 0.0
        moved_from: set[Path] = set()
        todo = sum(1 for p in plan if p.old is None and not p.failed_reason)
        with Progress(todo, "indexing music" if kind == "music" else "indexing pages", enabled=progress) as bar:
            for p in plan:
                if p.failed_reason:
                    failures.append((p, p.failed_reason))
                    continue
                if p.old is not None:
                    counts["unchanged"] += 1
                    entries.append(_Entry(p, p.old.sha256, p.old.window_count, old=p.old))
                    continue
                sha = sha256_file(p.path)
                reuse = old_by_sha.get(sha)
                if reuse is not None:
                    # Touched or moved, same bytes: the embeddings are still right.
                    counts["unchanged" if p.path in old_paths else "moved"] += 1
                    if p.path not in old_paths:
                        moved_from.add(reuse.path)
                    entries.append(_Entry(p, sha, reuse.window_count, old=reuse))
                    bar.update(1, p.relpath)
                    continue
                if on_file is not None:
                    on_file(p.path)
                try:
                    if kind == "music":
                        te = encoders.embed_track(p.path)
                        win, starts, pooled, duration = te.windows, te.starts, te.pooled, te.duration
                        seconds += duration
                    else:
                        pooled = encoders.embed_images([p.path], mode=mode)[0]
                        win, starts, duration = pooled[None, :], np.zeros(1), None
                except InputError as exc:
                    failures.append((p, _reason(exc, p.path)))
                    bar.update(1, p.relpath)
                    continue
                counts["changed" if p.path in old_paths else "new"] += 1
                w_at, row_at = scratch.add(win, starts, pooled)
                entries.append(_Entry(p, sha, len(win), scratch_offset=w_at, scratch_row=row_at, duration=duration))
                bar.update(1, p.relpath)
        scratch.close()
        if not entries:
            p, reason = failures[0]
            raise InputError(f"{src}: none of the {len(plan)} files could be indexed ({p.relpath}: {reason})")
        layout = _assemble(gen, entries, old, scratch, encoders.dim)
        scratch.remove()
        _write_db(gen, entries, layout, failures, old, encoders.bundle, kind, precision, src, lib_dir)
        if len(entries) >= FAISS_THRESHOLD:
            _maybe_faiss(gen)
        for name in (DB_NAME, TRACKS_NAME, WINDOWS_NAME, STARTS_NAME):
            _fsync(gen / name)
        _write_atomic_text(lib_dir / CURRENT_NAME, gen.name + "\n")  # the commit point
        published = True
    finally:
        scratch.close()
        if not published:
            shutil.rmtree(gen, ignore_errors=True)
    _remove_stale_generations(lib_dir, keep=gen)
    removed = len(old_paths - {p.path for p in plan} - moved_from)
    return BuildReport(lib_dir, kind, len(entries), sum(e.window_count for e in entries), counts["new"],
                       counts["changed"], counts["unchanged"], counts["moved"], removed,
                       tuple(Failure(str(p.path), r) for p, r in failures), seconds, time.monotonic() - t0)


def _maybe_faiss(gen: Path) -> None:
    if faiss_available():
        FaissIndex.build(np.load(gen / TRACKS_NAME, mmap_mode="r")).save(gen / FAISS_NAME)


def _reason(exc: BaseException, path: Path) -> str:
    # InputErrors start with the path; the failures table already has it.
    text = " ".join(str(exc).split())
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _assemble(gen: Path, entries: list[_Entry], old: Library | None, scratch: _Scratch, d: int) -> list[int]:
    """Write tracks/windows/starts .npy in entry order; return each entry's window offset."""
    from numpy.lib.format import open_memmap

    total_w = sum(e.window_count for e in entries)
    tracks = open_memmap(gen / TRACKS_NAME, mode="w+", dtype=np.float32, shape=(len(entries), d))
    windows = open_memmap(gen / WINDOWS_NAME, mode="w+", dtype=WINDOW_DTYPE, shape=(total_w, d))
    starts = open_memmap(gen / STARTS_NAME, mode="w+", dtype=np.float64, shape=(total_w,))
    s_windows, s_starts, s_pooled = scratch.arrays()
    offsets = []
    off = 0
    for row, e in enumerate(entries):
        n = e.window_count
        if e.old is not None:
            lo = e.old.window_offset
            windows[off:off + n], starts[off:off + n] = old.windows[lo:lo + n], old.starts[lo:lo + n]
            tracks[row] = old.tracks[e.old.row]
        else:
            lo = e.scratch_offset
            windows[off:off + n], starts[off:off + n] = s_windows[lo:lo + n], s_starts[lo:lo + n]
            tracks[row] = s_pooled[e.scratch_row]
        offsets.append(off)
        off += n
    for a in (tracks, windows, starts):
        a.flush()
    return offsets


def _write_db(gen, entries, offsets, failures, old, bundle, kind, precision, src, lib_dir) -> None:
    m = bundle.manifest
    moods = m.label_set("moods")
    genres = m.label_set("genres") if kind == "pages" else None
    # A track is tagged the way AudioCLIP classifies audio (audio-text scale); a page the
    # way it classifies images (image-text scale).
    scale = m.logit_scales.audio_text if kind == "music" else m.logit_scales.image_text
    tracks = np.load(gen / TRACKS_NAME, mmap_mode="r")
    meta = {
        "schema_version": str(LIBRARY_SCHEMA_VERSION),
        "kind": kind,
        "bundle_fingerprint": bundle.fingerprint,
        "model_name": m.model.name,
        "embed_dim": str(bundle.embed_dim),
        "root": _store_root(lib_dir, src),
        "created": old.meta.created if old is not None else _now(),
        "updated": _now(),
        "precision": precision,
        "window_dtype": np.dtype(WINDOW_DTYPE).name,
    }
    values = []
    for row, (e, off) in enumerate(zip(entries, offsets)):
        mood_dist = label_distribution(tracks[row], moods, scale)
        genre_json = _dist_json(label_distribution(tracks[row], genres, scale)) if genres is not None else None
        duration = e.old.duration if e.old is not None else e.duration
        values.append((row, e.plan.relpath, e.plan.size, e.plan.mtime_ns, e.sha256, duration, off, e.window_count,
                       _dist_json(mood_dist), max(mood_dist, key=lambda kv: kv[1])[0], genre_json, "ok"))
    db = sqlite3.connect(gen / DB_NAME)
    try:
        db.executescript(_SCHEMA_SQL)
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        db.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        db.executemany("INSERT INTO failures VALUES (?, ?, ?, ?)",
                       [(p.relpath, p.size, p.mtime_ns, reason) for p, reason in failures])
        db.commit()
    finally:
        db.close()


def open_library(path: str | Path | Library | None = None, bundle=None) -> Library:
    """A ``Library`` from a path, an open ``Library``, or None (the shipped demo library),
    checked against ``bundle`` when one is given."""
    if isinstance(path, Library):
        if bundle is not None:
            path.check_bundle(bundle)
        return path
    if path is None:
        from .defaults import default_library

        path = default_library()
    return Library.open(path, bundle=bundle)


__all__ = ["Library", "LibraryMeta", "TrackInfo", "Failure", "BuildReport", "build_library", "open_library",
           "scan", "label_distribution", "softmax", "AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS"]
