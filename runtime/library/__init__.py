"""The music library (and pages index): immutable segments, generations that name them.

Layout of a library folder ``LIBRARY/``::

    CURRENT                 the live generation's manifest name, one line (replaced atomically)
    gen-000007.json         a generation: the segments that make up the library, every file's
                            size and sha256, the music root, hub correction, approximate index
    segments/               immutable segment files (see ``segments.py``) and sidecars
    build.json              journal of an unfinished build: the segments it committed so far
    leases/                 one locked file per open reader: its generation is not collected
    .lock                   held by the one running indexer; .gc.lock: see ``storage.py``

A segment is written once and never modified; a generation is a list of segments (plus
deletion sidecars), so adding k tracks writes k tracks' worth of bytes and a manifest of a
few KB, however large the library. Publishing a generation is one atomic rename of
``CURRENT``; a reader that opened the previous one keeps it (leased) until it closes. A
build commits its progress as segments named in ``build.json`` and resumes from them when
killed; it never publishes a half-built generation.

Reading (``Library``, from ``open_library`` or ``Library.open``), the API apps and the
chapter soundtrack planner use::

    lib = open_library("LIBRARY")
    n = len(lib)                         # ranked tracks; rows are 0..n-1
    info = lib.track(row)                # TrackInfo: path, duration, moods, top_mood, ...
    pooled = lib.pooled_matrix()         # float32 [n, D], row-aligned (alias: lib.tracks)
    emb, starts = lib.windows_of(row)    # float32 [W, D] window embeddings, float64 [W] seconds
    hits = lib.index.search(q, k)        # SearchHits: hub-corrected top-k rows
    s = lib.scores(q)                    # float32 [Q, n]: every row's ranking score; rows=[...]: some
    lib.silent(), lib.failures()         # files not ranked, and why
    lib.close()

A pages index (``kind="pages"``) is read through ``PagesIndex`` (``open_pages_index``),
whose rows are ``PageInfo`` pages rather than tracks.

Building: ``build_library(MUSIC_DIR, LIBRARY, encoders)``; every file becomes a
``TrackEmbedding`` through one callable (``embed_file``, default ``default_embedder``).
``ray_engine.build_library_ray`` is the same build with that callable served by Ray Data
workers (``python -m runtime.index --engine ray``; optional extra ``[ray]``).

Past one machine: ``qdrant_publish.publish_library(LIBRARY, URL, NAME)`` publishes a music
library to a Qdrant collection, and ``open_library("qdrant://HOST:PORT/NAME")`` (or
``qdrant+local://DIR/NAME``) returns a ``qdrant_reader.QdrantLibrary`` that retrieval
searches like a library (optional extra ``[qdrant]``).

Stored paths are relative to the music root, checked to stay under it (no ``..``, no
absolute or drive paths) when read; the root is stored both relative to the library
folder (a library moved together with its music, like the shipped demo, keeps working)
and absolute, as JSON (no separator that a folder name could contain).
"""
from __future__ import annotations

from .builder import COMMIT_EVERY, COMMIT_SECONDS, EmbedFile, build_library, default_embedder
from .pages import PageInfo, PagesIndex, open_pages_index
from .publishing import plan_merges
from .opening import open_library
from .reader import Library, resolve_root
from .records import (BuildReport, Failure, LibraryMeta, SilentTrack, TrackInfo, label_distribution, softmax,
                      tag_block)
from .scanning import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, scan, scan_tree
from .schema import KINDS, SCHEMA_VERSION as LIBRARY_SCHEMA_VERSION, WINDOW_DTYPE
from .storage import collect_garbage

__all__ = ["Library", "LibraryMeta", "TrackInfo", "PagesIndex", "PageInfo", "open_pages_index", "Failure", "SilentTrack", "BuildReport", "build_library",
           "open_library", "collect_garbage", "default_embedder", "EmbedFile", "scan", "scan_tree",
           "label_distribution", "softmax", "tag_block", "plan_merges", "resolve_root", "AUDIO_EXTENSIONS",
           "IMAGE_EXTENSIONS", "KINDS", "LIBRARY_SCHEMA_VERSION", "WINDOW_DTYPE", "COMMIT_EVERY",
           "COMMIT_SECONDS"]
