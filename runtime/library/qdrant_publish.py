"""Publishing a music library to a Qdrant collection (the layout is in ``qdrant_store.py``)
and measuring the collection's recall against the library's exact search."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError, LibraryError
from .hubs import MIN_CENTRED_NORM, centred_rows
from .qdrant_reader import QdrantLibrary
from .qdrant_store import (BATCH_FLOATS, BATCH_POINTS, CENTRED, COLLECTION_FORMAT, COLLECTION_SCHEMA, META_ID, POOLED,
                           WINDOWS, Target, centre_key, connect, parse_target, point_id, qdrant_errors, qdrant_models,
                           read_facts)
from .reader import Library
from .search_index import SegmentedIndex, recall_queries

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
    # Exact even where the library would search through its approximate (FAISS) indexes.
    index = SegmentedIndex(lib.index_parts(with_ann=False), lib.meta.embed_dim, lib.centre)
    queries = recall_queries(index, n)
    exact = index.search(queries, k).ids
    store = QdrantLibrary(target, client, read_facts(client, target), close_client=False)
    got = store.search_paths(queries, k)
    rel = [[lib.track(int(r)).relpath for r in row if r >= 0] for row in exact]
    hits = [len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(got, rel)]
    return float(np.mean(hits)) if hits else 1.0

