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

Publishing (``qdrant_publish.publish_library``) is a sync, in batches: points whose track is new or changed
(path, content hash, size, mtime) are upserted, points whose track is gone are deleted, and
when the library's centre moved (tracks were added or removed) every other point's ``centred``
vector is rewritten (only that vector: D floats per track). The facts point is written last.
Publishing the same library again writes nothing. A publish that stops half-way leaves a mix
of old and new points that readers can still use; running it again completes it.

The client (``qdrant-client``, ``pip install 'manga-music[qdrant]'``) is imported only here,
in ``qdrant_reader.py`` and ``qdrant_publish.py``, only when a Qdrant URL is used. This module
holds what both sides share (where a collection is, its layout, connecting); the reader and
the publisher each import it, never each other's way round.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import InputError, LibraryError, MangaMusicError

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
