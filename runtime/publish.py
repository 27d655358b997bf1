"""``python -m runtime.publish``: serve a music library from Qdrant.

    python -m runtime.publish LIBRARY --qdrant qdrant://HOST:6333 --collection NAME
    python -m runtime.publish LIBRARY --qdrant qdrant+local://DIR --collection NAME   (embedded, no server)
    python -m runtime.query PAGE --library qdrant://HOST:6333/NAME

Upserts the library's ranked tracks into the collection in batches (pooled, centred and
window embeddings, path, duration, tags and the bundle fingerprint as payload), deletes what
the library no longer holds, and measures recall@10 of the collection's search against the
library's exact search. Running it again writes only what changed. Layout and URL forms:
``runtime/library/qdrant_store.py``.
"""
from __future__ import annotations

import sys
from typing import Sequence

from .cli import Parser, Progress, positive_int, run_main

PROG = "python -m runtime.publish"


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Publish a music library (built by `python -m runtime.index`) to a Qdrant collection, so "
                    "`python -m runtime.query --library qdrant://HOST:PORT/NAME` (and apps, through "
                    "Retriever(library=URL)) search it there with the same results as the library itself. "
                    "Idempotent: only new, changed and removed tracks are written.",
        epilog="The API key of a server, if it needs one, is read from $QDRANT_API_KEY. Exit status: 0 on success, "
               "2 on bad input (no library, a collection holding another bundle's embeddings, an unreachable "
               "server, qdrant-client not installed) with one line on stderr.")
    p.add_argument("library", metavar="LIBRARY", help="music library folder")
    p.add_argument("--qdrant", metavar="URL", required=True,
                   help="the Qdrant to publish to: qdrant://HOST[:PORT] or http(s)://HOST[:PORT] for a server or "
                        "cluster (port 6333 by default), or qdrant+local://DIR for the embedded local mode "
                        "(a folder; no server, one process at a time)")
    p.add_argument("--collection", metavar="NAME", required=True, help="collection to create or update")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="tracks per upsert request (default: 64, fewer when their windows are many)")
    p.add_argument("--recreate", action="store_true",
                   help="drop the collection first (needed to replace one built with another bundle)")
    p.add_argument("--recall-queries", type=int, default=200, metavar="N",
                   help="queries for measuring recall@10 against exact local search after publishing "
                        "(0: skip; default: 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .library.qdrant_publish import BATCH_POINTS, publish_library, qdrant_models

    qdrant_models()  # not installed: say so before opening anything
    bars: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(Progress(total, "publishing", unit="track", enabled=False if args.quiet else None))
        bars[0].update(done - bars[0].n)

    try:
        report = publish_library(args.library, args.qdrant, args.collection, batch_points=args.batch_size or BATCH_POINTS,
                                 recreate=args.recreate, recall_queries=max(0, args.recall_queries),
                                 progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if not args.quiet:
        print(f"{args.library} -> {report.target}: {report.tracks} tracks ({report.upserted} upserted, "
              f"{report.recentred} re-centred, {report.deleted} deleted, {report.unchanged} unchanged) in "
              f"{report.requests} write requests, {report.seconds:.1f} s")
        if report.recall_at_10 is not None:
            print(f"recall@10 against exact search of the library: {report.recall_at_10:.3f} "
                  f"({report.recall_queries} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
