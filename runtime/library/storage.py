"""Files of a library folder: atomic writes, the writer lock, reader leases, garbage collection.

Writers: one indexer at a time holds ``.lock`` (an OS lock, released if the process dies).
Everything it writes goes to a temporary name, is fsynced, then renamed; ``CURRENT`` is
replaced last, which is the commit point of a new generation.

Readers: a reader takes a lease on the generation it opened, a file in ``leases/`` that it
keeps locked until it closes (flock on POSIX, msvcrt on Windows). Garbage collection keeps
every file that the current generation, a leased generation or an unfinished build's
journal names, and deletes the rest; a lease whose lock can be taken belongs to a dead
process and is removed. A reader takes its lease under a shared ``.gc.lock`` while it reads
``CURRENT``, and collection runs under the exclusive one, so a generation cannot be
collected between the moment a reader reads its name and the moment it leases it. A file
that cannot be deleted (Windows: still open somewhere) is left for the next collection.
A library folder the reader cannot write (a package installed read-only) gets no lease;
nobody can collect there either.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
import weakref
from pathlib import Path
from typing import IO, Iterator

from ..errors import LibraryError
from .schema import (CURRENT_NAME, GC_LOCK_NAME, GEN_RE, JOURNAL_NAME, LEASES_DIR, LOCK_NAME, OLD_GEN_RE,
                     SEGMENTS_DIR, GenerationManifest, Journal)

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None


# -- OS locks -------------------------------------------------------------------------------
def try_lock(fh: IO, exclusive: bool = True) -> bool:
    """Lock an open file without waiting; False if another holder has it. Windows has
    only exclusive locks (of byte 0), which is all leases and the writer lock need."""
    if fcntl is not None:
        try:
            fcntl.flock(fh.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
    if msvcrt is not None:  # pragma: no cover - Windows
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    return True  # no locking primitive at all: behave as a single-process platform


def lock_waiting(fh: IO, exclusive: bool, timeout: float = 30.0) -> None:
    """Lock, waiting up to ``timeout`` seconds (GC and lease taking hold it for milliseconds)."""
    deadline = time.monotonic() + timeout
    while not try_lock(fh, exclusive):
        if time.monotonic() > deadline:
            raise LibraryError(f"{fh.name}: still locked after {timeout:.0f} s")
        time.sleep(0.01)


class WriterLock:
    """``LIBRARY/.lock``, held exclusively by the one indexer allowed to write."""

    def __init__(self, lib_dir: Path):
        self.path = lib_dir / LOCK_NAME
        self.fh: IO | None = None

    def __enter__(self) -> "WriterLock":
        self.fh = open(self.path, "a+")
        if not try_lock(self.fh, exclusive=True):
            self.fh.close()
            raise LibraryError(f"{self.path.parent}: another indexer is updating this library right now")
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


@contextlib.contextmanager
def gc_lock(lib_dir: Path, exclusive: bool) -> Iterator[bool]:
    """Hold ``.gc.lock``; yields False (and holds nothing) where the folder is read-only."""
    try:
        fh = open(lib_dir / GC_LOCK_NAME, "a+")
    except OSError:
        yield False
        return
    try:
        lock_waiting(fh, exclusive)
        yield True
    finally:
        fh.close()


# -- atomic files --------------------------------------------------------------------------
def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); Windows has no directory handles to sync."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def write_atomic(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename; returns bytes."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def write_json_atomic(path: Path, obj: dict) -> int:
    return write_atomic(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: Path, what: str, limit: int = 64 << 20) -> dict:
    """A JSON object from a library file: size-capped, one-line errors."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise LibraryError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise LibraryError(f"{path}: {what} is larger than {limit >> 20} MB; the library is damaged")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LibraryError(f"{path}: {what} is not valid JSON ({exc}); the library is damaged") from None
    if not isinstance(obj, dict):
        raise LibraryError(f"{path}: {what} is not a JSON object; the library is damaged")
    return obj


# -- generations ---------------------------------------------------------------------------
def read_current_name(lib_dir: Path) -> str:
    """The live generation's manifest name from ``CURRENT``."""
    cur = lib_dir / CURRENT_NAME
    try:
        with open(cur, "rb") as f:
            raw = f.read(256)
        name = raw.decode("utf-8").strip()
    except FileNotFoundError:
        raise LibraryError(f"{lib_dir}: not a manga-music library (no {CURRENT_NAME} file); "
                           f"build one with `python -m runtime.index MUSIC_DIR --out {lib_dir}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LibraryError(f"{lib_dir}: cannot read {CURRENT_NAME} ({exc})") from None
    if OLD_GEN_RE.match(name):
        raise LibraryError(f"{lib_dir}: built by an older version of manga-music (library format 1); "
                           f"re-run `python -m runtime.index MUSIC_DIR --out {lib_dir}` to upgrade it")
    if not GEN_RE.match(name):
        raise LibraryError(f"{cur}: names {name!r}, not a generation manifest; the library is damaged")
    return name


def read_manifest(lib_dir: Path, name: str) -> GenerationManifest:
    path = lib_dir / name
    try:
        d = read_json(path, "generation manifest")
    except FileNotFoundError:
        raise LibraryError(f"{path}: generation manifest is missing; the library is damaged") from None
    m = GenerationManifest.from_dict(d, name)
    if GEN_RE.match(name).group(1) != f"{m.generation:06d}":
        raise LibraryError(f"{path}: names generation {m.generation}, not the one its file name says")
    return m


def read_journal(lib_dir: Path) -> Journal | None:
    """The unfinished build's journal, or None (none, or unreadable: then it is discarded)."""
    path = lib_dir / JOURNAL_NAME
    try:
        return Journal.from_dict(read_json(path, "build journal"), JOURNAL_NAME)
    except FileNotFoundError:
        return None
    except LibraryError:
        return None


# -- reader leases ---------------------------------------------------------------------------
class Lease:
    """A reader's claim on one generation, held (locked) until ``release``, or until the
    process ends: a reader that never closes its library (a script, an app's last query)
    still removes its lease file at a normal exit, so readers leave no litter behind."""

    def __init__(self, path: Path | None, fh: IO | None):
        self.path, self.fh = path, fh
        self._finalizer = weakref.finalize(self, _drop_lease, path, fh) if fh is not None else None

    @classmethod
    def take(cls, lib_dir: Path, generation: str) -> "Lease":
        folder = lib_dir / LEASES_DIR
        path = folder / f"{generation[:-len('.json')]}.{os.getpid()}.{secrets.token_hex(6)}.lease"
        try:
            folder.mkdir(exist_ok=True)
            fh = open(path, "w+")
            fh.write(generation)  # byte 0 exists for Windows' byte-range lock
            fh.flush()
        except OSError:
            return cls(None, None)  # read-only library: nobody can collect it either
        if not try_lock(fh, exclusive=fcntl is None):
            fh.close()
            return cls(None, None)
        return cls(path, fh)

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.fh = None


def _drop_lease(path: Path, fh: IO) -> None:
    fh.close()
    with contextlib.suppress(OSError):
        path.unlink()


def leased_generations(lib_dir: Path) -> set[str]:
    """Generations some live reader holds; stale leases (their process died) are removed."""
    held: set[str] = set()
    folder = lib_dir / LEASES_DIR
    if not folder.is_dir():
        return held
    for p in folder.iterdir():
        parts = p.name.split(".")
        if len(parts) != 4 or parts[-1] != "lease" or not GEN_RE.match(parts[0] + ".json"):
            continue
        try:
            fh = open(p, "r+")
        except OSError:
            held.add(parts[0] + ".json")  # cannot even open it (Windows: in use): assume alive
            continue
        try:
            alive = not try_lock(fh, exclusive=True)
        finally:
            fh.close()
        if alive:
            held.add(parts[0] + ".json")
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    return held


# -- garbage collection ----------------------------------------------------------------------------
def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except OSError:  # Windows: open in a reader; permission: leave it for next time
        return False


def collect_garbage(lib_dir: str | Path) -> list[str]:
    """Delete every generation and segment file nothing needs any more; returns what was
    deleted. Needed: the current generation, generations readers hold, and the unfinished
    build's segments. Refused (``LibraryError``) while an indexer is running: the files it
    is writing are named by nothing yet. ``build_library`` collects after publishing."""
    lib_dir = Path(lib_dir)
    with WriterLock(lib_dir):
        return collect_unlocked(lib_dir)


def collect_unlocked(lib_dir: Path) -> list[str]:
    """``collect_garbage`` for the holder of the writer lock."""
    removed: list[str] = []
    with gc_lock(lib_dir, exclusive=True):
        try:
            current = read_current_name(lib_dir)
        except LibraryError:
            return removed  # never collect a library whose live generation is unknown
        keep_gens = {current} | leased_generations(lib_dir)
        keep_files: set[str] = set()
        for name in sorted(keep_gens):
            try:
                m = read_manifest(lib_dir, name)
            except LibraryError:
                continue
            for s in m.segments:
                keep_files.update(f.name for f in s.all_files())
            if m.hub is not None:
                keep_files.add(m.hub.centre.name)
        journal = read_journal(lib_dir)
        if journal is not None:
            for s in journal.segments:
                keep_files.update(f.name for f in s.all_files())
        # Manifests first: a reader that finds a manifest finds its segments.
        for p in sorted(lib_dir.iterdir()):
            if (GEN_RE.match(p.name) and p.name not in keep_gens) or OLD_GEN_RE.match(p.name) \
                    or ".tmp-" in p.name:
                if _remove(p):
                    removed.append(p.name)
        seg_dir = lib_dir / SEGMENTS_DIR
        if seg_dir.is_dir():
            for p in sorted(seg_dir.iterdir()):
                if p.name not in keep_files and _remove(p):
                    removed.append(f"{SEGMENTS_DIR}/{p.name}")
    return removed
