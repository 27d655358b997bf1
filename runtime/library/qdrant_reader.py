"""``QdrantLibrary``: a published collection (``qdrant_store.py``), read the way ``Retriever`` reads a library.

``open_library("qdrant://HOST:PORT/NAME")`` (or ``qdrant+local://DIR/NAME``) returns one, so
``Retriever(library=URL)`` and ``python -m runtime.query --library URL`` search Qdrant with the
same results and output as the local library it was published from: the collection ranks by
the stored centred vectors (the library's hub-corrected score) or, with ``correct=False``, by
the pooled ones (the plain cosine), and one request per batch of queries brings back the hits'
payload and window embeddings, from which the best window is found exactly as locally.

It implements the part of ``Library``'s reading API that retrieval uses: ``kind``, ``meta``,
``len``, ``check_bundle``, ``index.search``, ``track``, ``pooled``, ``windows_of``,
``best_window``, ``find``, ``close``. Rows are handles to hits this object has seen (the
last ``CACHE_TRACKS``): a collection has no row order. ``scores`` over every track (the
chapter soundtrack planner's need) is refused: plan soundtracks from a local library.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LibraryError
from ..search import SearchHits, _as_queries
from .qdrant_store import (CENTRED, POOLED, WINDOWS, Target, connect, is_qdrant_url, parse_target, point_id,
                           qdrant_errors, qdrant_models, read_facts)
from .reader import Library
from .records import LibraryMeta, TrackInfo, check_relpath, under_root
from .schema import SCHEMA_VERSION

log = logging.getLogger("manga_music")

CACHE_TRACKS = 4096


@dataclass(frozen=True)
class _Hit:
    info: TrackInfo
    pooled: np.ndarray  # float32 [D]
    windows: np.ndarray  # float32 [W, D]
    starts: np.ndarray  # float64 [W]


class _Index:
    """``lib.index`` of a ``QdrantLibrary``: ``search(queries, k, correct=True)``."""

    def __init__(self, lib: "QdrantLibrary"):
        self.lib = lib

    def __len__(self) -> int:
        return len(self.lib)

    def search(self, queries: np.ndarray, k: int, correct: bool = True) -> SearchHits:
        return self.lib.search(queries, k, correct=correct)


class QdrantLibrary:
    """A manga-music collection in Qdrant, opened for reading (see the module docstring)."""

    def __init__(self, target: Target, client, facts: dict, close_client: bool = True):
        self.target, self.client, self.facts = target, client, facts
        self.dir = str(target)  # where error messages say the library is
        self._close_client = close_client
        self._moods = tuple(facts.get("moods") or ())
        self._root = Path(str(facts.get("root", "/")))
        self._hits: OrderedDict[int, _Hit] = OrderedDict()
        self._rows: dict[str, int] = {}  # point id -> handle, for the hits in the cache
        self._next_row = 0
        self.index = _Index(self)
        self.meta = LibraryMeta(SCHEMA_VERSION, str(facts.get("kind")), str(facts.get("bundle_fingerprint")),
                                str(facts.get("model_name")), int(facts.get("embed_dim", 0)), self._root,
                                str(facts.get("created", "")), str(facts.get("updated", "")),
                                str(facts.get("precision", "")), int(facts.get("count", 0)),
                                int(facts.get("generation", 0)), str(facts.get("hub_correction", "")))
        c = facts.get("centre")
        self.centre = None if c is None else np.asarray(c, np.float32)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, bundle=None) -> "QdrantLibrary":
        """Open the collection at ``url``; with ``bundle``, refuse one built with another."""
        target = parse_target(url)
        with qdrant_errors(target):
            client = connect(target)
            try:
                facts = read_facts(client, target)
                if facts is None:
                    raise LibraryError(f"{target}: no such collection; publish a library there first "
                                       f"(python -m runtime.publish LIBRARY --qdrant ... --collection "
                                       f"{target.collection})")
                lib = cls(target, client, facts)
                if bundle is not None:
                    lib.check_bundle(bundle)
            except BaseException:
                client.close()
                raise
        return lib

    # Library's methods that read only meta, dir, close and windows_of serve here unchanged.
    check_bundle = Library.check_bundle
    __enter__, __exit__, __len__, kind = Library.__enter__, Library.__exit__, Library.__len__, Library.kind

    def _rebuild_hint(self, bundle) -> str:
        return "Rebuild the library with this bundle and publish it again with --recreate"

    def close(self) -> None:
        if self._close_client:
            self.client.close()

    # -- search ----------------------------------------------------------------------------------
    def _requests(self, q: np.ndarray, k: int, correct: bool, with_vectors) -> list:
        m = qdrant_models()
        using = CENTRED if correct and self.centre is not None else POOLED
        params = None
        if not self.target.local and (self.target.exact or self.target.hnsw_ef):
            params = m.SearchParams(exact=self.target.exact, hnsw_ef=self.target.hnsw_ef)
        return [m.QueryRequest(query=row.tolist(), using=using, limit=k, with_payload=True, with_vector=with_vectors,
                               params=params) for row in q]

    def _query(self, queries: np.ndarray, k: int, correct: bool, with_vectors) -> list:
        q = _as_queries(queries, self.meta.embed_dim)
        if k <= 0 or not len(q):
            return [[] for _ in q]
        with qdrant_errors(self.target):
            answers = self.client.query_batch_points(self.target.collection,
                                                     requests=self._requests(q, k, correct, with_vectors))
        return [a.points for a in answers]

    def search(self, queries: np.ndarray, k: int, correct: bool = True) -> SearchHits:
        """Top-k per query, best first; ids are this object's row handles for ``track`` and co."""
        points = self._query(queries, k, correct, [POOLED, WINDOWS])
        scores = np.full((len(points), max(k, 0)), -np.inf, np.float32)
        ids = np.full((len(points), max(k, 0)), -1, np.int64)
        for i, pts in enumerate(points):
            for j, p in enumerate(pts):
                try:
                    ids[i, j] = self._remember(p)
                except LibraryError as exc:  # a damaged point: the other hits still stand
                    log.warning(str(exc))
                    continue
                scores[i, j] = p.score
        return SearchHits(scores, ids)

    def search_paths(self, queries: np.ndarray, k: int, correct: bool = True) -> list[list[str]]:
        """Stored paths of the top-k per query, payload only (recall measurement)."""
        return [[(p.payload or {}).get("path") for p in pts] for pts in self._query(queries, k, correct, False)]

    # -- hits ------------------------------------------------------------------------------------
    def _remember(self, point) -> int:
        pid = str(point.id)
        row = self._rows.get(pid, self._next_row)
        hit = self._hit_of(point, row)  # a damaged point raises here, before it takes a row
        if row == self._next_row:
            self._next_row += 1
        self._rows[pid] = row
        self._hits[row] = hit
        self._hits.move_to_end(row)
        while len(self._hits) > CACHE_TRACKS:
            _, gone = self._hits.popitem(last=False)
            self._rows.pop(point_id(gone.info.relpath), None)
        return row

    def _hit_of(self, point, row: int) -> _Hit:
        """A point checked as a segment's record is checked when read: never a path outside
        the root, a vector of the wrong shape, or a tag that is not a probability."""
        pl, vec = point.payload or {}, point.vector or {}
        d = self.meta.embed_dim
        try:
            rel = check_relpath(pl.get("path"))
            pooled = np.asarray(vec[POOLED], np.float32)
            windows = np.asarray(vec[WINDOWS], np.float32).reshape(-1, d)
            starts = np.asarray(pl.get("starts"), np.float64).reshape(-1)
            moods = pl.get("moods")
            dist = tuple((name, float(moods[name])) for name in (self._moods or tuple(moods)))
            ok = (pooled.shape == (d,) and len(windows) == len(starts) and len(starts) > 0
                  and all(0.0 <= p <= 1.0 for _, p in dist) and pl.get("top_mood") in moods)
        except (KeyError, TypeError, ValueError, AttributeError, LibraryError):
            ok = False
        if not ok:
            raise LibraryError(f"{self.dir}: point {point.id} is not a valid track; publish the library again")
        duration = pl.get("duration")
        info = TrackInfo(row, under_root(self._root, rel), rel, int(pl.get("size", 0)), int(pl.get("mtime_ns", 0)),
                         str(pl.get("sha256", "")), None if duration is None else float(duration), 0, len(starts),
                         dist, pl["top_mood"])
        return _Hit(info, pooled, windows, starts)

    def _get(self, row: int) -> _Hit:
        hit = self._hits.get(int(row))
        if hit is None:
            raise LibraryError(f"{self.dir}: no track at row {row} (rows are the hits of recent searches)")
        return hit

    def track(self, row: int) -> TrackInfo:
        return self._get(row).info

    def pooled(self, row: int) -> np.ndarray:
        return self._get(row).pooled

    def windows_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._get(row)
        return hit.windows, hit.starts

    best_window = Library.best_window  # the same window a local library would choose

    def find(self, path) -> TrackInfo | None:
        """The entry for a file path (absolute or relative to the cwd), or None."""
        try:
            rel = Path(path).resolve().relative_to(self._root.resolve()).as_posix()
        except ValueError:
            return None
        with qdrant_errors(self.target):
            found = self.client.retrieve(self.target.collection, [point_id(rel)], with_payload=True,
                                         with_vectors=[POOLED, WINDOWS])
        if not found or (found[0].payload or {}).get("path") != rel:
            return None
        return self.track(self._remember(found[0]))

    def failures(self) -> list:
        return []  # not published: see the local library

    def silent(self) -> list:
        return []

    def _local_only(self, *args, **kwargs):
        raise LibraryError(f"{self.dir}: a Qdrant collection answers top-k searches (runtime.query); scoring every "
                           f"track (the chapter soundtrack) needs the local library it was published from")

    # What only a local library has: the chapter soundtrack reads these first.
    scores = _local_only
    generation = property(_local_only)


__all__ = ["QdrantLibrary", "is_qdrant_url"]
