"""Building a library: scan, plan, embed (committing as it goes), then publish.

``build_library`` is incremental against the live generation: a file whose path, size and
mtime match a record is not read; one whose content hash matches a ranked record is
copied (a move, a touch); everything else goes through ``embed_file`` — the ONE place a
file becomes a ``TrackEmbedding``, so a faster embedder can be swapped in without touching
any of this. Whatever ``embed_file`` raises for one file becomes that file's failure
record with a one-line reason, and the build goes on; a file with nothing audible becomes a
'silent' record (listed, never ranked).

An ``embed_file`` with a ``plan(paths)`` method is told, before the first call, every file
it may be asked for, in order (the Ray engine starts its cluster-wide pipeline with it).

Progress is committed every ``commit_every`` files or ``commit_seconds`` seconds: the
records so far are written as a segment and named in the build journal (``build.json``).
A build killed at any instant leaves ``CURRENT`` naming the previous, complete generation;
the next run finds the journal and reuses every committed record instead of embedding the
file again. Only when every file has been handled is the next generation published
(``publishing.py``); a run that finds nothing to do writes nothing.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..audio_preprocess import check_regular_file
from ..hashing import sha256_file
from ..encoders import TrackEmbedding
from ..errors import InputError, LibraryError, SilentAudioError, one_line
from .publishing import BuildRun, merge_new_segments, publish
from .records import BuildReport, check_relpath
from .schema import (CURRENT_NAME, GC_LOCK_NAME, GEN_RE, JOURNAL_NAME, KINDS, LEASES_DIR, LOCK_NAME, OLD_GEN_RE,
                     SEGMENTS_DIR, GenerationManifest, RootRef, SegmentRef)
from .scanning import extensions, scan_entries
from .segments import EmbeddingCheckError, NewRecord, OpenSegment, check_embeddings, sound_copy
from .storage import WriterLock, read_journal, read_manifest

log = logging.getLogger("manga_music")

EmbedFile = Callable[[Path], TrackEmbedding]
ProgressFn = Callable[[int, int, str], None]

COMMIT_EVERY = 32  # files per committed segment while building ...
COMMIT_SECONDS = 60.0  # ... or this long, whichever comes first: at most this much work is lost to a kill


def default_embedder(encoders, kind: str, mode: str | None = None) -> EmbedFile:
    """``embed_file`` for a kind: a track's audible windows (music), or a page as one window."""
    if kind == "music":
        from .prefetch import PrefetchingEmbedder

        return PrefetchingEmbedder(encoders)

    def embed_page(path: Path) -> TrackEmbedding:
        emb = encoders.embed_images([path], mode=mode)[0]
        return TrackEmbedding(emb[None, :], np.zeros(1), emb, 0.0)

    return embed_page


# -- what the old state holds -------------------------------------------------------------------
@dataclass(frozen=True)
class _Rec:
    """A record of the base generation or the journal, as planning sees it."""

    seg: OpenSegment
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    status: str
    vec: int
    from_journal: bool


@dataclass
class _Todo:
    path: Path
    rel: str
    in_base: bool


# -- the entry point -----------------------------------------------------------------------------
def build_library(source: str | Path, out: str | Path, encoders, kind: str = "music", mode: str | None = None,
                  rebuild: bool = False, progress: ProgressFn | bool | None = None,
                  on_file: Callable[[Path], None] | None = None, *, embed_file: EmbedFile | None = None,
                  hub_correction: bool = True, commit_every: int = COMMIT_EVERY,
                  commit_seconds: float = COMMIT_SECONDS) -> BuildReport:
    """Index every file of ``kind`` under ``source`` into the library folder ``out``.

    ``progress``: a callable ``(done, total, note)`` called before each file to embed with
    the files done so far and the file about to be worked on, and once when all are done
    with ``(total, total, "")`` (the CLI draws its bar with it); False/None: silent. ``on_file``: called with each path just before it
    is embedded (tests use it to fail or stop mid-build). ``embed_file``: path ->
    ``TrackEmbedding`` (default: ``default_embedder``). ``hub_correction``: store the
    library's centre so tracks are ranked by their centred cosine (music only; see
    ``hubs.py``). Raises ``InputError`` for a bad source or output folder, and
    ``LibraryError`` for a library built with another bundle (unless ``rebuild``); nothing
    else a single file does stops the build.
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
    if lib_dir.is_dir() and not _looks_like_library(lib_dir):
        # Never write into (and later clean up) a folder that holds someone else's files.
        raise InputError(f"{lib_dir}: exists, is not empty and is not a manga-music library; choose another --out")
    # Before any work: where paths will be stored from (a Windows relpath across drives
    # fails here, not after hours of embedding).
    root = root_ref(lib_dir, src)
    files, problems = scan_entries(src, kind, skip=[lib_dir])
    if any(rel == "." for rel, _ in problems):
        raise InputError(f"{src}: {dict(problems)['.']}")
    if not files:
        exts = extensions(kind)
        what = "audio" if kind == "music" else "image"
        raise InputError(f"{src}: no {what} files found (looked for {', '.join(e[1:] for e in exts[:8])}, ...)")
    bundle = encoders.bundle
    # Resolve now: a precision the bundle lacks fails before any work, not after an hour.
    precision = encoders.precision("audio" if kind == "music" else "image").precision
    embed = embed_file or default_embedder(encoders, kind, mode)
    report_progress = progress if callable(progress) else None
    lib_dir.mkdir(parents=True, exist_ok=True)
    (lib_dir / SEGMENTS_DIR).mkdir(exist_ok=True)
    (lib_dir / LEASES_DIR).mkdir(exist_ok=True)
    if not (lib_dir / GC_LOCK_NAME).exists():
        (lib_dir / GC_LOCK_NAME).touch()

    with WriterLock(lib_dir):
        base, base_name = _load_base(lib_dir, rebuild)
        if rebuild:
            # Embed everything again: nothing of the live generation is reused (it stays
            # live, for its readers, until the new one is published).
            base, base_name = None, None
        if base is not None:
            if base.bundle_fingerprint != bundle.fingerprint:
                raise LibraryError(f"{lib_dir} was built with another bundle ({base.model_name}, "
                                   f"{base.bundle_fingerprint[:12]}); pass --rebuild to re-embed everything "
                                   f"with {bundle.manifest.model.name} ({bundle.fingerprint[:12]})")
            if base.kind != kind:
                raise LibraryError(f"{lib_dir} is a {base.kind} index, not a {kind} one; choose another --out")
        journal = read_journal(lib_dir)
        if journal is not None and (rebuild or journal.kind != kind or journal.bundle_fingerprint != bundle.fingerprint
                                    or journal.root_absolute != root.absolute):
            journal = None  # another build's leftovers: collected after publishing
        run = BuildRun(lib_dir, lib_dir / SEGMENTS_DIR, kind, bundle.embed_dim, bundle.fingerprint, bundle,
                   hub_correction and kind == "music", list(journal.segments) if journal else [],
                   _next_segment_id(lib_dir, base, journal), root.absolute)
        try:
            return _build(run, src, files, problems, base, base_name, journal, embed, on_file, report_progress,
                          commit_every, commit_seconds, precision, root, t0)
        finally:
            run.close()


def _looks_like_library(lib_dir: Path) -> bool:
    known = {CURRENT_NAME, JOURNAL_NAME, SEGMENTS_DIR, LEASES_DIR, LOCK_NAME, GC_LOCK_NAME}
    return (lib_dir / CURRENT_NAME).exists() or all(
        p.name in known or GEN_RE.match(p.name) or OLD_GEN_RE.match(p.name) or ".tmp-" in p.name
        for p in lib_dir.iterdir())


def root_ref(lib_dir: Path, src: Path) -> RootRef:
    """The music root as stored: absolute, plus relative to the library folder when there is
    a relative path (none across Windows drives: ``relpath`` raises ValueError there)."""
    lib_abs = (lib_dir if lib_dir.is_absolute() else Path.cwd() / lib_dir).resolve()
    try:
        rel = Path(os.path.relpath(src, lib_abs)).as_posix()
    except ValueError:
        rel = None
    return RootRef(rel, str(src))


def _load_base(lib_dir: Path, rebuild: bool) -> tuple[GenerationManifest | None, str | None]:
    """The live generation to update, or None: no library yet, a library of the old format
    (rebuilt in the new one), or, with ``rebuild``, one that does not even load."""
    cur = lib_dir / CURRENT_NAME
    if not cur.exists():
        return None, None
    try:
        name = cur.read_bytes()[:256].decode("utf-8", "replace").strip()
        if OLD_GEN_RE.match(name):
            return None, None
        if not GEN_RE.match(name):
            raise LibraryError(f"{cur}: names {name!r}, not a generation manifest; the library is damaged "
                               f"(pass --rebuild to index it again)")
        return read_manifest(lib_dir, name), name
    except (LibraryError, OSError):
        if rebuild:
            return None, None
        raise


def _next_segment_id(lib_dir: Path, base, journal) -> int:
    n = max(base.next_segment if base else 0, journal.next_segment if journal else 0)
    for p in (lib_dir / SEGMENTS_DIR).iterdir():  # orphans of a killed run: never reuse their ids
        if p.name.startswith("s") and p.name[1:7].isdigit():
            n = max(n, int(p.name[1:7]) + 1)
    return n


# -- planning ------------------------------------------------------------------------------------
def _records_of(run: BuildRun, refs: Sequence[SegmentRef], from_journal: bool, damaged: list[str]) -> list[_Rec]:
    out = []
    for ref in refs:
        try:
            seg = run.open(ref)
        except LibraryError as exc:
            # Its files are embedded again; the damaged segment is left out of the new generation.
            damaged.append(str(exc))
            log.warning(f"{run.lib_dir}: {exc}; its files will be indexed again")
            continue
        for r in seg.live_records("id, path, size, mtime_ns, content_sha256, status, vec"):
            out.append(_Rec(seg, int(r[0]), r[1], int(r[2]), int(r[3]), r[4], r[5], int(r[6]), from_journal))
    return out


def _stat_key(path: Path | str) -> tuple[int, int]:
    """(size, mtime_ns) of what the path points to; (0, 0) when it cannot be stat'ed (a
    link loop, a dangling link), which is also how its failure record is stored."""
    try:
        st = os.stat(path)
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


# -- per file -------------------------------------------------------------------------------------
def _reason(exc: BaseException, path: Path) -> str:
    """A file's failure as its record stores it: one line, without the path (the record
    names the file already), with the exception's class when it is not one of ours."""
    text = one_line(exc, 500)
    prefix = f"{path}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    if not isinstance(exc, (InputError, OSError, EmbeddingCheckError)):
        text = f"{type(exc).__name__}: {text}"
    return text[:500]


def _process(todo: _Todo, embed: EmbedFile, on_file, ok_by_sha: dict[str, _Rec], kind: str,
             stats: dict) -> tuple[NewRecord, str, _Rec | None]:
    """One file -> (its record, what happened, the record it was copied from). Never raises
    for a problem of the file itself (Exception); interruptions (BaseException) pass."""
    path, rel = todo.path, todo.rel
    try:
        st = check_regular_file(path)
    except InputError as exc:
        size, mtime = _stat_key(path)
        return NewRecord(rel, size, mtime, "", "failed", _reason(exc, path)), "failed", None
    size, mtime = st.st_size, st.st_mtime_ns
    try:
        sha = sha256_file(path)
        reuse = ok_by_sha.get(sha)
        if reuse is not None and not sound_copy(reuse.seg, reuse.vec):
            reuse = None  # its stored embedding is damaged: embed the file instead
        if reuse is not None:
            rec = NewRecord(rel, size, mtime, sha, "ok", duration=_duration_of(reuse), copy_from=(reuse.seg, reuse.vec),
                            tags=_tags_of(reuse))
            outcome = "copied"
        else:
            if on_file is not None:
                on_file(path)
            te = embed(path)
            check_embeddings(np.asarray(te.pooled, np.float32)[None, :], "pooled embedding")
            check_embeddings(np.asarray(te.windows, np.float32), "window embeddings")
            if len(te.windows) == 0 or len(te.windows) != len(te.starts):
                raise EmbeddingCheckError("the embedder returned no windows")
            rec = NewRecord(rel, size, mtime, sha, "ok", duration=float(te.duration) if kind == "music" else None,
                            windows=te.windows, starts=te.starts, pooled=te.pooled)
            stats["seconds"] += float(te.duration) if kind == "music" else 0.0
            outcome = "embedded"
    except SilentAudioError as exc:
        rec, outcome, reuse = NewRecord(rel, size, mtime, sha, "silent", _reason(exc, path)), "silent", None
    except Exception as exc:  # noqa: BLE001 - one file's problem, whatever it is, is that file's failure
        return NewRecord(rel, size, mtime, "", "failed", _reason(exc, path)), "failed", None
    if _stat_key(path) != (size, mtime):
        # Read while it was being written (a download, a tag editor): what we embedded may be
        # neither version. Recorded with the old size and mtime, so the next run retries it.
        return NewRecord(rel, size, mtime, "", "failed", "the file changed while it was read; the next run retries "
                         "it"), "failed", None
    return rec, outcome, reuse


def _duration_of(rec: _Rec) -> float | None:
    r = rec.seg.db.execute("SELECT duration FROM records WHERE id = ?", (rec.id,)).fetchone()
    return None if r is None or r[0] is None else float(r[0])


def _tags_of(rec: _Rec) -> tuple[str, str, str | None] | None:
    r = rec.seg.db.execute("SELECT moods, top_mood, genres FROM records WHERE id = ?", (rec.id,)).fetchone()
    return None if r is None or r[0] is None else (r[0], r[1], r[2])


# -- the build ------------------------------------------------------------------------------------
def _build(run: BuildRun, src: Path, files: list[Path], problems, base, base_name, journal, embed, on_file, progress,
           commit_every, commit_seconds, precision, root: RootRef, t0) -> BuildReport:
    damaged: list[str] = []
    base_refs = list(base.segments) if base is not None else []
    base_recs = _records_of(run, base_refs, False, damaged)
    journal_recs = _records_of(run, run.journal_segments, True, damaged)
    run.journal_segments = [r for r in run.journal_segments if r.id in run.opened]
    by_path: dict[str, list[_Rec]] = defaultdict(list)
    for rec in journal_recs[::-1] + base_recs:  # newest first
        by_path[rec.path].append(rec)
    ok_by_sha: dict[str, _Rec] = {}
    for rec in base_recs + journal_recs:
        if rec.status == "ok":
            ok_by_sha.setdefault(rec.sha256, rec)
    base_paths = {r.path for r in base_recs if r.status == "ok"}  # "changed" vs "new" is about ranked tracks

    # Plan: keep what matches, delete what is gone or replaced, handle the rest.
    keep: list[_Rec] = []
    delete: set[tuple[int, int]] = set()
    todo: list[_Todo] = []
    scanned: set[str] = set()
    pending: list[NewRecord] = []
    for rel, reason in problems:
        scanned.add(rel)
        match = next((r for r in by_path.get(rel, ()) if (r.size, r.mtime_ns) == (0, 0) and r.status == "failed"), None)
        if match is not None:
            keep.append(match)
        else:
            pending.append(NewRecord(rel, 0, 0, "", "failed", reason))
        delete.update((r.seg.ref.id, r.id) for r in by_path.get(rel, ()) if r is not match)
    for f, rel in files:
        try:
            check_relpath(rel)
        except LibraryError:
            continue  # a name no library can store (e.g. a backslash in a POSIX name)
        scanned.add(rel)
        stat_key = _stat_key(f)
        cands = by_path.get(rel, ())
        match = next((r for r in cands if (r.size, r.mtime_ns) == stat_key), None)
        if match is not None:
            keep.append(match)
        else:
            todo.append(_Todo(Path(f), rel, rel in base_paths))
        delete.update((r.seg.ref.id, r.id) for r in cands if r is not match)
    for path, recs in by_path.items():
        if path not in scanned:
            delete.update((r.seg.ref.id, r.id) for r in recs)

    counts = defaultdict(int)
    counts["unchanged"] = sum(1 for r in keep if r.status == "ok" and not r.from_journal)
    counts["resumed"] = sum(1 for r in keep if r.from_journal)
    stats = {"seconds": 0.0}
    moved_from: set[str] = set()
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal pending, last_commit
        if pending:
            ref = run.write(pending)
            run.journal_segments.append(ref)
            run.new_since_start.append(ref)
            pending = []
            merge_new_segments(run)
            run.save_journal()
        last_commit = time.monotonic()

    first_failure = None
    plan = getattr(embed, "plan", None)
    if plan is not None:
        # An embedder that reads ahead (prefetch.py) or works elsewhere (ray_engine.py)
        # learns the order of the files it may be asked for.
        plan([t.path for t in todo])
    try:
        for done, t in enumerate(todo):
            if progress is not None:
                progress(done, len(todo), t.rel)
            rec, outcome, reuse = _process(t, embed, on_file, ok_by_sha, run.kind, stats)
            pending.append(rec)
            counts["ranked_new"] += rec.status == "ok"
            if outcome == "copied":
                if t.in_base:
                    counts["unchanged"] += 1
                else:
                    counts["moved"] += 1
                    moved_from.add(reuse.path)
            elif outcome == "embedded":
                counts["changed" if t.in_base else "new"] += 1
            elif first_failure is None:
                first_failure = f"{rec.path}: {rec.reason}"
            if len(pending) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                commit()
    except BaseException:
        # Interrupted (Ctrl-C, or an error that is not one file's): keep what was done, so
        # the next run resumes from it; the live generation is untouched either way.
        try:
            commit()
        except Exception:  # noqa: BLE001 - the original interruption is what matters
            pass
        raise
    finally:
        close = getattr(embed, "close", None)
        if close is not None:
            close()
    if progress is not None and todo:
        progress(len(todo), len(todo), "")
    commit()
    if not any(r.status == "ok" for r in keep) and not counts["ranked_new"]:
        raise InputError(f"{src}: none of the {len(files)} files could be indexed"
                         + (f" ({first_failure})" if first_failure else ""))

    base_ok_gone = {r.path for r in base_recs if r.status == "ok" and r.path not in scanned}
    removed = len(base_ok_gone - moved_from)
    published, name, m = publish(run, base, base_name, journal, delete, precision, root, damaged)
    return _report(run, m, name, published, counts, removed, stats["seconds"], t0)


def _report(run: BuildRun, m: GenerationManifest | None, name: str | None, published: bool, counts, removed: int,
            seconds: float, t0: float) -> BuildReport:
    from .reader import Library

    lib = Library.open(run.lib_dir)
    try:
        windows = 0
        for seg in lib.segments:
            windows += sum(r[1] for r in seg.live_records("id, window_count", "status = 'ok'"))
        return BuildReport(run.lib_dir, run.kind, len(lib), windows, counts["new"], counts["changed"],
                           counts["unchanged"], counts["moved"], removed, tuple(lib.failures()), seconds,
                           time.monotonic() - t0, tuple(lib.silent()), counts["resumed"], lib.manifest.generation,
                           published, run.bytes_written, len(lib.segments), lib.meta.ann_recall_at_10)
    finally:
        lib.close()


