"""A music library served from Qdrant: where a collection is, how it is laid out, publishing.

Where (``parse_target``)::

    qdrant://HOST[:PORT]/NAME          a Qdrant server or cluster over HTTP (port 6333 by default)
    qdrants://HOST[:PORT]/NAME         the same over HTTPS; the API key, if any, from $QDRANT_API_KEY
    qdrant+local://DIR/NAME            Qdrant's embedded local mode (qdrant-client, no server): the
                                       collection NAME stored in the folder DIR (absolute: ///DIR)
    ...?exact=1 / ?hnsw_ef=N           server only: exact search, or the HNSW beam width

Layout of a collection: one point per ranked track, its id the UUID5 of the track's stored
path (so publishing again replaces, never duplicates), with three named vectors::

    pooled   [D]     float32, dot   the pooled unit embedding (plain cosine, TrackHit.cosine)
    centred  [D]     float32, dot   (t - c) / max(|t - c|, floor): its dot product with a unit
                                    query IS the library's hub-corrected score (hubs.py), so
                                    Qdrant ranks exactly as the local library does
    windows  [W, D]  float16 multivector (max_sim), no HNSW graph: the window embeddings, read
                                    back for the hits only, to say where the best part starts

and the payload ``path`` (relative to the music root), ``size``, ``mtime_ns``, ``sha256``,
``duration``, ``moods`` {class: probability}, ``top_mood``, ``starts`` (window starts, s) and
``bundle`` (the bundle fingerprint). One more point, ``META_ID``, has no vector (so it is never
a hit) and holds the collection's facts: kind, bundle fingerprint and model, dimension, the
music root, the centre ``c`` and its hash, the mood classes in order, the library generation
it mirrors. A reader refuses a collection whose bundle is not its own, as it refuses a library.

Publishing (``publish_library``) is a sync, in batches: points whose track is new or changed
(path, content hash, size, mtime) are upserted, points whose track is gone are deleted, and
when the library's centre moved (tracks were added or removed) every other point's ``centred``
vector is rewritten (only that vector: D floats per track). The facts point is written last.
Publishing the same library again writes nothing. A publish that stops half-way leaves a mix
of old and new points that readers can still use; running it again completes it.

The client (``qdrant-client``, ``pip install 'manga-music[qdrant]'``) is imported only here and
in ``qdrant_reader.py``, only when a Qdrant URL is used.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import InputError, LibraryError, MangaMusicError
from .hubs import MIN_CENTRED_NORM, centred_rows

log = logging.getLogger("manga_music")

SCHEMES = ("qdrant://", "qdrants://", "qdrant+local://")
DEFAULT_PORT = 6333
COLLECTION_FORMAT = "manga-music-collection"
COLLECTION_SCHEMA = 1
POOLED, CENTRED, WINDOWS = "pooled", "centred", "windows"
_NAMESPACE = uuid.UUID("5e0d5c1e-6d61-6e67-612d-6d7573696321")  # fixed forever: point ids derive from it
META_ID = str(uuid.uuid5(_NAMESPACE, "manga-music collection facts"))
BATCH_POINTS = 64  # points per upsert request ...
BATCH_FLOATS = 1 << 20  # ... or this many vector values (a 30 MB JSON body, under a server's 32 MB default)


def point_id(relpath: str) -> str:
    """A track's point id: the same path always maps to the same point."""
    return str(uuid.uuid5(_NAMESPACE, "track:" + relpath))


def is_qdrant_url(text) -> bool:
    return isinstance(text, str) and text.startswith(SCHEMES)


@dataclass(frozen=True)
class Target:
    """One collection: on a server (``url``) or in an embedded local folder (``path``)."""

    collection: str
    url: str | None = None
    path: str | None = None
    exact: bool = False
    hnsw_ef: int | None = None

    @property
    def local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return f"qdrant+local://{self.path}/{self.collection}" if self.local else f"{self.url}/{self.collection}"


def _bad(url: str, why: str) -> InputError:
    return InputError(f"{url}: {why} (expected qdrant://HOST[:PORT]/NAME, qdrants://HOST[:PORT]/NAME or "
                      f"qdrant+local://DIR/NAME)")


def parse_target(url: str, collection: str | None = None) -> Target:
    """A Qdrant URL (see the module docstring) -> ``Target``. ``collection`` names the
    collection when the URL does not (``runtime.publish --qdrant URL --collection NAME``);
    ``http(s)://HOST:PORT`` is accepted there too."""
    if not isinstance(url, str) or not url.startswith(SCHEMES + ("http://", "https://")):
        raise _bad(str(url), "not a Qdrant URL")
    if url.startswith("qdrant+local://"):
        rest = url[len("qdrant+local://"):].rstrip("/")
        # With --collection the URL is the storage folder; without, its last part names the collection.
        folder, name = (rest, collection) if collection is not None else rest.rpartition("/")[::2]
        if not folder:
            raise _bad(url, "no storage folder")
        return Target(_check_name(url, name), path=folder)
    parts = urlsplit(url)
    if not parts.hostname:
        raise _bad(url, "no host")
    name = parts.path.strip("/")
    if collection is not None and name and name != collection:
        raise InputError(f"{url} names collection {name!r} but --collection says {collection!r}")
    name = name or collection
    scheme = "https" if parts.scheme in ("qdrants", "https") else "http"
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise _bad(url, "bad port") from None
    query = parse_qs(parts.query)
    exact = query.get("exact", ["0"])[-1].lower() in ("1", "true", "yes")
    try:
        ef = int(query["hnsw_ef"][-1]) if "hnsw_ef" in query else None
    except ValueError:
        raise _bad(url, "hnsw_ef must be an integer") from None
    return Target(_check_name(url, name), url=f"{scheme}://{parts.hostname}:{port}", exact=exact, hnsw_ef=ef)


def _check_name(url: str, name: str | None) -> str:
    if not name or "/" in name or len(name) > 255 or name.strip() != name:
        raise _bad(url, "no collection name" if not name else f"bad collection name {name!r}")
    return name


def qdrant_models():
    """``qdrant_client.models``, or an ``InputError`` that says how to install it."""
    try:
        from qdrant_client import models
    except ImportError:
        raise InputError("Qdrant needs its client: pip install 'manga-music[qdrant]' (or 'qdrant-client')") from None
    return models


@contextlib.contextmanager
def qdrant_errors(target: Target) -> Iterator[None]:
    """The client's errors (HTTP, gRPC, a local folder held by another process, ...) as one
    ``LibraryError`` line naming the collection; our own errors pass unchanged."""
    try:
        yield
    except MangaMusicError:
        raise
    except Exception as exc:  # noqa: BLE001 - the client raises many types, each a problem of the store
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise LibraryError(f"{target}: {type(exc).__name__}: {text}") from None


def connect(target: Target, create: bool = False):
    """A ``QdrantClient`` for the target (call inside ``qdrant_errors``). A local folder that
    does not exist is an error unless ``create``."""
    qdrant_models()
    from qdrant_client import QdrantClient

    if target.local:
        folder = Path(target.path)
        if not create and not folder.is_dir():
            raise LibraryError(f"{target}: no Qdrant storage folder {folder}; publish a library there first "
                               f"(python -m runtime.publish LIBRARY --qdrant qdrant+local://{folder} "
                               f"--collection {target.collection})")
        return QdrantClient(path=str(folder))
    return QdrantClient(url=target.url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=60)


def read_facts(client, target: Target) -> dict | None:
    """The collection's facts (the META_ID point's payload), or None when the collection does
    not exist; ``LibraryError`` when it exists but is not one of ours."""
    if not client.collection_exists(target.collection):
        return None
    found = client.retrieve(target.collection, [META_ID], with_payload=True, with_vectors=False)
    facts = found[0].payload if found else None
    if not isinstance(facts, dict) or facts.get("format") != COLLECTION_FORMAT:
        raise LibraryError(f"{target}: this collection was not written by manga-music (no facts point); "
                           f"choose another collection")
    if facts.get("schema") != COLLECTION_SCHEMA:
        raise LibraryError(f"{target}: collection schema {facts.get('schema')!r} is not the one this version "
                           f"reads ({COLLECTION_SCHEMA}); publish the library again with --recreate")
    return facts


def centre_key(centre: np.ndarray | None) -> str | None:
    return None if centre is None else hashlib.sha256(np.asarray(centre, np.float32).tobytes()).hexdigest()


# -- publishing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishReport:
    """What one ``publish_library`` run did."""

    target: str
    tracks: int  # points of tracks in the collection now
    upserted: int  # new or changed tracks written whole
    recentred: int  # unchanged tracks whose 'centred' vector was rewritten (the centre moved)
    deleted: int  # points of tracks no longer in the library
    unchanged: int
    requests: int  # write requests sent
    seconds: float
    recall_at_10: float | None  # of the collection's top-10 against the library's exact search
    recall_queries: int


def _create(client, target: Target, dim: int) -> None:
    m = qdrant_models()
    dense = m.VectorParams(size=dim, distance=m.Distance.DOT)
    client.create_collection(target.collection, vectors_config={
        POOLED: dense,
        CENTRED: dense,
        # Read back for the hits only (the best window), never searched: no graph, kept on disk.
        WINDOWS: m.VectorParams(size=dim, distance=m.Distance.DOT, datatype=m.Datatype.FLOAT16, on_disk=True,
                                hnsw_config=m.HnswConfigDiff(m=0),
                                multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM)),
    })
    if not target.local:  # the embedded mode has no payload indexes (and warns)
        client.create_payload_index(target.collection, "path", m.PayloadSchemaType.KEYWORD)


def _existing(client, target: Target) -> dict[str, tuple]:
    """point id -> (path, sha256, size, mtime_ns) of every track point."""
    out, offset = {}, None
    while True:
        points, offset = client.scroll(target.collection, limit=1024, offset=offset, with_vectors=False,
                                       with_payload=["path", "sha256", "size", "mtime_ns"])
        for p in points:
            if str(p.id) != META_ID:
                pl = p.payload or {}
                out[str(p.id)] = (pl.get("path"), pl.get("sha256"), pl.get("size"), pl.get("mtime_ns"))
        if offset is None:
            return out


def _point(lib, info, centre: np.ndarray | None, fingerprint: str):
    m = qdrant_models()
    pooled = lib.pooled(info.row)
    windows, starts = lib.windows_of(info.row)
    vectors = {POOLED: pooled.tolist(), WINDOWS: windows.tolist()}
    if centre is not None:
        vectors[CENTRED] = centred_rows(pooled[None, :], centre)[0].tolist()
    payload = {"path": info.relpath, "size": info.size, "mtime_ns": info.mtime_ns, "sha256": info.sha256,
               "duration": info.duration, "moods": dict(info.moods), "top_mood": info.top_mood,
               "starts": starts.tolist(), "bundle": fingerprint}
    return m.PointStruct(id=point_id(info.relpath), vector=vectors, payload=payload), (2 + len(starts)) * len(pooled)


def _batches(items, batch_points: int, batch_floats: int) -> Iterator[list]:
    """Lists of (item, size) at most ``batch_points`` long and ``batch_floats`` in total size
    (a single larger item goes alone)."""
    batch, floats = [], 0
    for item, size in items:
        if batch and (len(batch) >= batch_points or floats + size > batch_floats):
            yield batch
            batch, floats = [], 0
        batch.append(item)
        floats += size
    if batch:
        yield batch


def _facts(lib, centre: np.ndarray | None, count: int) -> dict:
    meta = lib.meta
    moods = [name for name, _ in next(iter(lib.all_tracks())).moods] if count else []
    return {"format": COLLECTION_FORMAT, "schema": COLLECTION_SCHEMA, "kind": meta.kind,
            "bundle_fingerprint": meta.bundle_fingerprint, "model_name": meta.model_name,
            "embed_dim": meta.embed_dim, "precision": meta.precision, "root": str(meta.root), "count": count,
            "library": str(Path(lib.dir).resolve()), "generation": meta.generation, "created": meta.created,
            "updated": meta.updated, "moods": moods, "hub_correction": meta.hub_correction,
            "centre": None if centre is None else np.asarray(centre, np.float32).tolist(),
            "centre_sha256": centre_key(centre), "min_centred_norm": MIN_CENTRED_NORM}


def _check_same_bundle(facts: dict, lib, target: Target) -> None:
    meta = lib.meta
    if facts.get("kind") != meta.kind or facts.get("embed_dim") != meta.embed_dim \
            or facts.get("bundle_fingerprint") != meta.bundle_fingerprint:
        raise LibraryError(f"{target} holds embeddings of another bundle ({facts.get('model_name')}, "
                           f"{str(facts.get('bundle_fingerprint'))[:12]}) than {lib.dir} ({meta.model_name}, "
                           f"{meta.bundle_fingerprint[:12]}); they are not comparable: pass --recreate to replace "
                           f"the collection, or choose another")


def publish_library(library, url: str, collection: str | None = None, *, batch_points: int = BATCH_POINTS,
                    recreate: bool = False, recall_queries: int = 200,
                    progress: Callable[[int, int], None] | None = None) -> PublishReport:
    """Make the collection at ``url`` (see ``parse_target``) hold exactly the ranked tracks
    of ``library`` (a folder or an open ``Library``), writing only what differs; then, with
    ``recall_queries`` > 0, measure recall@10 of the collection's search against the
    library's exact search. ``recreate``: drop the collection first (needed to replace one
    built with another bundle). ``progress(done, total)``: tracks written so far, after each request.
    """
    from .reader import Library

    if batch_points < 1:
        raise InputError(f"batch size must be >= 1, got {batch_points}")
    target = parse_target(url, collection)
    lib = library if isinstance(library, Library) else Library.open(library)
    try:
        if lib.kind != "music":
            raise InputError(f"{lib.dir} is a {lib.kind} index; only music libraries are published to Qdrant")
        with qdrant_errors(target):
            client = connect(target, create=True)
            try:
                return _publish(client, target, lib, batch_points, recreate, recall_queries, progress)
            finally:
                client.close()
    finally:
        if lib is not library:
            lib.close()


def _publish(client, target: Target, lib, batch_points: int, recreate: bool, recall_queries: int,
             progress) -> PublishReport:
    m = qdrant_models()
    t0 = time.monotonic()
    if recreate and client.collection_exists(target.collection):
        client.delete_collection(target.collection)
    facts = read_facts(client, target)
    if facts is not None:
        _check_same_bundle(facts, lib, target)
    else:
        _create(client, target, lib.meta.embed_dim)
    existing = _existing(client, target)
    centre = lib.centre
    moved = facts is None or facts.get("centre_sha256") != centre_key(centre)
    fingerprint = lib.meta.bundle_fingerprint

    tracks = list(lib.all_tracks())
    wanted = {point_id(t.relpath): t for t in tracks}
    changed_ids = {pid for pid, t in wanted.items() if existing.get(pid) != (t.relpath, t.sha256, t.size, t.mtime_ns)}
    changed = [t for pid, t in wanted.items() if pid in changed_ids]
    same = [t for pid, t in wanted.items() if pid not in changed_ids] if moved else []
    gone = [pid for pid in existing if pid not in wanted]

    # Points are made a batch at a time (never all: a million tracks' windows as lists of
    # floats would not fit in memory); progress counts tracks written, requests are counted.
    total, done, requests = len(changed) + len(same) + len(gone) + 1, 0, 0

    def sent(n: int) -> None:
        nonlocal done, requests
        done, requests = done + n, requests + 1
        if progress is not None:
            progress(done, total)

    for batch in _batches((_point(lib, t, centre, fingerprint) for t in changed), batch_points, BATCH_FLOATS):
        client.upsert(target.collection, points=batch, wait=True)
        sent(len(batch))
    for lo in range(0, len(same), batch_points):
        chunk = same[lo:lo + batch_points]
        if centre is None:  # the library has no centre any more: the points must not keep a stale one
            client.delete_vectors(target.collection, vectors=[CENTRED], points=[point_id(t.relpath) for t in chunk],
                                  wait=True)
        else:
            pooled = np.stack([lib.pooled(t.row) for t in chunk])
            rows = centred_rows(pooled, centre)
            client.update_vectors(target.collection, points=[
                m.PointVectors(id=point_id(t.relpath), vector={CENTRED: r.tolist()}) for t, r in zip(chunk, rows)],
                wait=True)
        sent(len(chunk))
    for lo in range(0, len(gone), 1024):
        client.delete(target.collection, points_selector=m.PointIdsList(points=gone[lo:lo + 1024]), wait=True)
        sent(len(gone[lo:lo + 1024]))
    new_facts = _facts(lib, centre, len(tracks))
    if facts is None or {k: v for k, v in facts.items() if k != "updated"} != \
            {k: v for k, v in new_facts.items() if k != "updated"}:
        client.upsert(target.collection, points=[m.PointStruct(id=META_ID, vector={}, payload=new_facts)], wait=True)
        requests += 1
    if progress is not None:
        progress(total, total)
    recall = measure_recall(client, target, lib, recall_queries) if recall_queries > 0 and tracks else None
    return PublishReport(str(target), len(tracks), len(changed), len(same), len(gone),
                         len(tracks) - len(changed) - len(same), requests, time.monotonic() - t0, recall,
                         recall_queries if recall is not None else 0)


def measure_recall(client, target: Target, lib, n: int = 200, k: int = 10) -> float:
    """Mean share of the library's exact top-k that the collection's search also returns,
    over ``n`` queries near and far from the library's tracks (``recall_queries``)."""
    from .qdrant_reader import QdrantLibrary
    from .search_index import SegmentedIndex, recall_queries

    # Exact even where the library would search through its approximate (FAISS) indexes.
    index = SegmentedIndex(lib.index_parts(with_ann=False), lib.meta.embed_dim, lib.centre)
    queries = recall_queries(index, n)
    exact = index.search(queries, k).ids
    store = QdrantLibrary(target, client, read_facts(client, target), close_client=False)
    got = store.search_paths(queries, k)
    rel = [[lib.track(int(r)).relpath for r in row if r >= 0] for row in exact]
    hits = [len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(got, rel)]
    return float(np.mean(hits)) if hits else 1.0

