"""``Library``: one generation of a library folder, opened for reading.

Opening takes a lease on the generation (so no indexer collects it while it is open),
validates the manifest, then opens each segment and checks it against its manifest entry.
A segment that fails (a file missing, truncated, of the wrong shape, a database edited out
of its schema) is left out with a warning and listed in ``Library.damaged``: the library
keeps answering with everything else, and the next ``build_library`` run embeds the files
the damaged segment held again. A manifest that fails is a ``LibraryError``.
"""
from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from ..bundle import load_bundle
from ..errors import LibraryError
from .records import Failure, LibraryMeta, SilentTrack, TrackInfo, check_relpath, dist_from_json, under_root
from .schema import SEGMENTS_DIR, GenerationManifest, RootRef, SCHEMA_VERSION
from .search_index import IndexPart, SegmentedIndex, should_use_ann
from .segments import OpenSegment, verify_files
from .storage import Lease, gc_lock, read_current_name, read_manifest

log = logging.getLogger("manga_music")

_COLUMNS = ("id, path, size, mtime_ns, content_sha256, duration, window_offset, window_count, moods, top_mood, "
            "genres, vec")


def resolve_root(lib_dir: Path, root: RootRef) -> Path:
    """The music root: the stored relative form when it exists (the library moved with its
    music, e.g. a fresh clone of the shipped demo), else the absolute one."""
    if root.relative is not None:
        candidate = (lib_dir.resolve() / root.relative).resolve()
        if candidate.is_dir() or not Path(root.absolute).is_dir():
            return candidate
    return Path(root.absolute)


def _describe_hub(m: GenerationManifest) -> str:
    if m.hub is None:
        return ""
    return f"{m.hub.method} (centre of {m.hub.count} tracks)"


class Library:
    """An open library generation. Public API (stable for apps and the soundtrack planner):

    - ``len(lib)``, ``lib.kind``, ``lib.meta``: counts and facts;
    - ``lib.track(row)``, ``lib.all_tracks()``, ``lib.find(path)``: ``TrackInfo`` records;
    - ``lib.pooled_matrix()`` (alias ``lib.tracks``): float32 [N, D] pooled embeddings, row
      = ``TrackInfo.row``; ``lib.pooled(row)`` one row;
    - ``lib.windows_of(row)``: (float32 [W, D] window embeddings, float64 [W] start seconds);
    - ``lib.centre``: the hub correction's centre (float32 [D]) or None;
    - ``lib.index.search(queries, k, correct=True)``: top-k rows (hub-corrected ranking);
    - ``lib.scores(queries, correct=True, rows=None)``: float32 [Q, N], every row's score
      (or [Q, len(rows)], the given rows');
    - ``lib.failures()``, ``lib.silent()``: files that were not ranked, and why;
    - ``lib.close()`` (or ``with``): releases the generation's lease.
    """

    def __init__(self, lib_dir: Path, manifest_name: str, manifest: GenerationManifest, root: Path,
                 segments: list[OpenSegment], damaged: list[str], lease: Lease):
        self.dir = lib_dir
        self.generation = lib_dir / manifest_name
        self.manifest = manifest
        self.segments = segments
        self.damaged = tuple(damaged)
        self._lease = lease
        self._by_id = {s.ref.id: s for s in segments}
        self._bases = np.cumsum([0] + [s.live_count for s in segments])
        self.meta = LibraryMeta(SCHEMA_VERSION, manifest.kind, manifest.bundle_fingerprint, manifest.model_name,
                                manifest.embed_dim, root, manifest.created, manifest.updated, manifest.precision,
                                int(self._bases[-1]), manifest.generation, _describe_hub(manifest),
                                None if manifest.ann is None else manifest.ann.recall_at_10)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, bundle=None) -> "Library":
        """Open ``path``'s live generation; with ``bundle``, refuse a library built with another."""
        lib_dir = Path(path)
        if not lib_dir.is_dir():
            raise LibraryError(f"{lib_dir}: no library here; build one with "
                               f"`python -m runtime.index MUSIC_DIR --out {lib_dir}`")
        with gc_lock(lib_dir, exclusive=False):
            name = read_current_name(lib_dir)
            lease = Lease.take(lib_dir, name)
        try:
            lib = cls._open(lib_dir, name, lease)
        except BaseException:
            lease.release()
            raise
        if bundle is not None:
            try:
                lib.check_bundle(bundle)
            except LibraryError:
                lib.close()
                raise
        return lib

    @classmethod
    def _open(cls, lib_dir: Path, name: str, lease: Lease) -> "Library":
        manifest = read_manifest(lib_dir, name)
        root = resolve_root(lib_dir, manifest.root)
        segments, damaged = [], []
        for ref in manifest.segments:
            try:
                segments.append(OpenSegment(lib_dir / SEGMENTS_DIR, ref, kind=manifest.kind, dim=manifest.embed_dim,
                                            bundle_fingerprint=manifest.bundle_fingerprint))
            except LibraryError as exc:
                damaged.append(str(exc))
                log.warning(f"{lib_dir}: {exc}; left out (re-run the indexer to repair)")
        return cls(lib_dir, name, manifest, root, segments, damaged, lease)

    def check_bundle(self, bundle) -> None:
        """Refuse (``LibraryError``) when ``bundle`` (a Bundle or its folder) is not the one
        the library was built with."""
        bundle = load_bundle(bundle)
        if self.meta.bundle_fingerprint != bundle.fingerprint:
            raise LibraryError(
                f"{self.dir} was built with another bundle ({self.meta.model_name}, "
                f"{self.meta.bundle_fingerprint[:12]}) than the one in use ({bundle.manifest.model.name}, "
                f"{bundle.fingerprint[:12]}); its embeddings are not comparable. {self._rebuild_hint(bundle)}")

    def _rebuild_hint(self, bundle) -> str:
        return f"Rebuild it: python -m runtime.index {self.meta.root} --out {self.dir} --bundle {bundle.dir} --rebuild"

    def close(self) -> None:
        for s in self.segments:
            s.close()
        self._lease.release()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- facts --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta.count

    @property
    def kind(self) -> str:
        return self.meta.kind

    # -- rows ----------------------------------------------------------------------------------
    def _locate(self, row: int) -> tuple[OpenSegment, int]:
        row = int(row)
        if not 0 <= row < len(self):
            raise LibraryError(f"{self.dir}: no track at row {row}")
        i = int(np.searchsorted(self._bases, row, side="right") - 1)
        seg = self.segments[i]
        return seg, seg.vec_of_rank(row - int(self._bases[i]))

    def _row_of(self, seg: OpenSegment, vec: int) -> int:
        return int(self._bases[self.segments.index(seg)]) + seg.rank_of_vec(vec)

    def _info(self, seg: OpenSegment, r, row: int) -> TrackInfo:
        # Every stored value is checked as it is read: an edited database can make a
        # record unusable (LibraryError), never a path outside the root or a bogus tag.
        rel = check_relpath(r[1])
        moods = dist_from_json(r[8])
        if moods is None or r[9] not in dict(moods):
            raise LibraryError(f"{self.dir}: record {rel!r} has no valid mood tags; the library is damaged")
        return TrackInfo(row, under_root(self.meta.root, rel), rel, int(r[2]), int(r[3]), str(r[4]),
                         None if r[5] is None else float(r[5]), int(r[6]), int(r[7]), moods, r[9],
                         dist_from_json(r[10]), seg.ref.id)

    def track(self, row: int) -> TrackInfo:
        seg, vec = self._locate(row)
        r = seg.db.execute(f"SELECT {_COLUMNS} FROM records WHERE vec = ? AND status = 'ok'", (vec,)).fetchone()
        if r is None:
            raise LibraryError(f"{self.dir}: no track at row {row}")
        return self._info(seg, r, int(row))

    def all_tracks(self) -> Iterator[TrackInfo]:
        """Every ranked track in row order (records that fail their checks are skipped)."""
        for i, seg in enumerate(self.segments):
            for r in seg.live_records(_COLUMNS, "status = 'ok'"):
                try:
                    yield self._info(seg, r, int(self._bases[i]) + seg.rank_of_vec(r[11]))
                except LibraryError as exc:
                    log.warning(str(exc))

    def find(self, path: str | Path) -> TrackInfo | None:
        """The entry for a file path (absolute or relative to the cwd), or None."""
        p = Path(path).resolve()
        try:
            rel = p.relative_to(self.meta.root.resolve()).as_posix()
        except ValueError:
            return None
        for seg in self.segments:
            r = seg.db.execute(f"SELECT {_COLUMNS} FROM records WHERE path = ? AND status = 'ok'", (rel,)).fetchone()
            if r is not None and not seg.is_deleted(r[0]):
                return self._info(seg, r, self._row_of(seg, r[11]))
        return None

    def _listed(self, status: str) -> list[tuple[str, str]]:
        out = []
        for seg in self.segments:
            for _id, rel, reason in seg.live_records("id, path, reason", f"status = '{status}'"):
                try:
                    out.append((str(under_root(self.meta.root, rel)), reason))
                except LibraryError:
                    continue
        return sorted(out)

    def failures(self) -> list[Failure]:
        return [Failure(p, r) for p, r in self._listed("failed")]

    def silent(self) -> list[SilentTrack]:
        """Files with nothing audible above the loudness floor: never ranked."""
        return [SilentTrack(p, r) for p, r in self._listed("silent")]

    # -- embeddings ---------------------------------------------------------------------------------
    def pooled(self, row: int) -> np.ndarray:
        seg, vec = self._locate(row)
        return np.asarray(seg.pooled[vec], np.float32)

    def pooled_matrix(self) -> np.ndarray:
        """float32 [N, D], row = ``TrackInfo.row``: the segment's memory map itself when the
        library is one segment without deletions, else a copy (N x D x 4 bytes)."""
        return self.tracks

    @cached_property
    def tracks(self) -> np.ndarray:
        if len(self.segments) == 1 and self.segments[0].live_vecs is None:
            return self.segments[0].pooled
        parts = [np.asarray(s.pooled if s.live_vecs is None else s.pooled[s.live_vecs], np.float32)
                 for s in self.segments]
        return np.concatenate(parts) if parts else np.zeros((0, self.meta.embed_dim), np.float32)

    def windows_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [W, D] unit window embeddings, float64 [W] window starts in seconds) of
        the track at ``row``: only its audible windows, in time order."""
        seg, vec = self._locate(row)
        lo, cnt = seg.window_range(vec)
        return np.asarray(seg.windows[lo:lo + cnt], np.float32), np.asarray(seg.starts[lo:lo + cnt], np.float64)

    def best_window(self, info: TrackInfo, query: np.ndarray) -> tuple[float, float]:
        """(start seconds, cosine) of the track's window closest to ``query``."""
        emb, starts = self.windows_of(info.row)
        if not len(starts):
            return 0.0, float("nan")
        scores = emb @ np.asarray(query, np.float32)
        best = int(np.argmax(scores))
        return float(starts[best]), float(scores[best])

    @cached_property
    def centre(self) -> np.ndarray | None:
        """The hub correction's centre: float32 [D] (the mean pooled embedding when this
        generation was published), or None (pages, or correction off). A damaged centre
        file means no correction, with a warning: the library still answers."""
        hub = self.manifest.hub
        if hub is None:
            return None
        try:
            c = np.load(self.dir / SEGMENTS_DIR / hub.centre.name, allow_pickle=False)
            if c.dtype != np.float32 or c.shape != (self.meta.embed_dim,) or not np.all(np.isfinite(c)):
                raise ValueError("wrong type, shape or values")
        except (OSError, ValueError, EOFError) as exc:
            log.warning(f"{self.dir}: hub correction centre unusable ({exc}); ranking by plain cosine")
            return None
        return c

    def index_parts(self, with_ann: bool = True) -> list[IndexPart]:
        from ..search import FaissIndex
        from .hubs import inverse_norms

        parts = []
        c = self.centre
        for i, s in enumerate(self.segments):
            ann = None
            if with_ann and s.ref.ann is not None:
                try:
                    ann = FaissIndex.load(self.dir / SEGMENTS_DIR / s.ref.ann.name)
                except Exception as exc:  # noqa: BLE001 - a damaged index file: search exactly
                    log.warning(f"{self.dir}: approximate index of segment {s.ref.id} unusable ({exc}); "
                                f"searching it exactly")
            inv = None if c is None else inverse_norms(s.pooled, c)
            parts.append(IndexPart(s.pooled, inv, s.deleted_vecs, int(self._bases[i]), ann))
        return parts

    @cached_property
    def index(self) -> SegmentedIndex:
        """The search index: exact per segment, or the saved FAISS indexes for a catalogue
        past ``FAISS_THRESHOLD`` rows whose recorded recall@10 is good enough (never built
        here). Its first use reads the pooled rows once (1 / |t - c| per track for the hub
        correction)."""
        ann = self.manifest.ann
        recall = None if ann is None else ann.recall_at_10
        saved = any(s.ref.ann is not None for s in self.segments)
        use_ann = saved and should_use_ann(len(self), recall)
        if saved and not use_ann and recall is not None and should_use_ann(len(self), 1.0):
            log.warning("%s: its approximate index found %.0f%% of the exact top-10 when it was built; searching "
                        "exactly instead (slower, right)", self.dir, 100 * recall)
        return SegmentedIndex(self.index_parts(with_ann=use_ann), self.meta.embed_dim, self.centre, use_ann=use_ann)

    def scores(self, queries: np.ndarray, correct: bool = True, rows=None) -> np.ndarray:
        """float32 [Q, N]: each query's score for every track, in row order (exact): the
        centred cosine the ranking uses, or with ``correct=False`` the plain cosine. With
        ``rows`` (a sequence of rows): float32 [Q, len(rows)], only those tracks' scores, at
        the cost of reading just their vectors (``LibraryError`` for a row not in the library)."""
        return self.index.scores(queries, correct=correct, rows=rows)

    def verify(self) -> list[str]:
        """Hash every file of this generation against its manifest (reads everything);
        returns the problems found, [] when the library is intact."""
        problems = list(self.damaged)
        seg_dir = self.dir / SEGMENTS_DIR
        for ref in self.manifest.segments:
            problems += [f"segment {ref.id}: {p}" for p in verify_files(seg_dir, ref.all_files())]
        if self.manifest.hub is not None:
            problems += verify_files(seg_dir, [self.manifest.hub.centre])
        return problems

