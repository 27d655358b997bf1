"""``python -m runtime.index``: build or update a music library (or a pages index).

    python -m runtime.index MUSIC_DIR --out LIBRARY [--bundle B] [--rebuild]
    python -m runtime.index PAGES_DIR --out PAGES --kind pages

Scans the folder recursively, embeds what is new or changed, drops what was deleted,
records undecodable files with their reason (and silent ones as silent), and publishes the
result atomically: an interrupted run leaves the previous library as it was, and the next
run resumes where it stopped. See ``runtime/library/__init__.py`` for the folder format.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .cli import (Parser, Progress, UsageError, add_common_options, encoder_options, positive_int, run_main,
                  shown_path)
from .library import KINDS

PROG = "python -m runtime.index"
DEFAULT_OUT_NAME = ".manga-music-library"


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Index a folder of music (every file libsndfile decodes: wav, flac, ogg, mp3, ...) into a "
                    "library that `python -m runtime.query` searches: each track is cut into windows, every "
                    "window embedded, plus one pooled embedding and the track's mood distribution. Re-running "
                    "it updates the library incrementally. With --kind pages it indexes manga pages instead, "
                    "for music -> pages search.",
        epilog="Progress is saved every few files: an interrupted run (Ctrl-C, a crash, a power cut) resumes "
               "where it stopped when run again, and never leaves a half-built library. "
               "Exit status: 0 on success (files that could not be decoded, and silent ones, are listed and "
               "skipped), 2 on bad input (no such folder, no audio in it, a bad bundle) with one line on stderr, "
               "130 when interrupted (progress kept).")
    p.add_argument("source", metavar="MUSIC_DIR", help="folder to scan (recursively; hidden files are skipped)")
    p.add_argument("--out", metavar="LIBRARY", default=None,
                   help=f"library folder to create or update (default: MUSIC_DIR/{DEFAULT_OUT_NAME})")
    p.add_argument("--bundle", metavar="B", default=None,
                   help="model bundle folder (default: the bundle shipped with the package)")
    p.add_argument("--kind", choices=KINDS, default="music",
                   help="what the folder holds: 'music' (default) or 'pages' (manga page images)")
    p.add_argument("--mode", choices=("center_crop", "letterbox", "tiles"), default=None,
                   help="pages only: how a page is fitted to the image encoder (default: the bundle's, "
                        "centre crop)")
    p.add_argument("--rebuild", action="store_true",
                   help="ignore the existing library and embed everything again (needed after changing bundle)")
    p.add_argument("--no-hub-correction", action="store_true",
                   help="music only: rank tracks by the plain cosine. By default the library stores the mean "
                        "embedding of its tracks and ranks each track by its direction away from it, so that no "
                        "track comes first for most pages (see the README, 'Hubs')")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    # Issue 16: the same build with the embedding on a Ray cluster (runtime/library/ray_engine.py).
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where files are embedded: 'local' (this process, default) or 'ray' (Ray Data workers, one "
                        "ONNX Runtime session each, --threads threads each; needs pip install 'manga-music[ray]'; "
                        "every worker must read MUSIC_DIR and the bundle at the same paths)")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="with --engine ray: the cluster, 'auto' (the one running on this machine) or "
                        "ray://HOST:10001 (default: start a local Ray on this machine's cores)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="with --engine ray: embedding workers (default: the cluster's CPUs / --threads)")
    add_common_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine != "ray" and (args.address or args.workers):
        raise UsageError("--address and --workers are options of --engine ray")
    from .encoders import Encoders
    from .library import build_library

    build = build_library
    if args.engine == "ray":  # imported only when asked for: the local engine never loads Ray
        from functools import partial

        from .library.ray_engine import build_library_ray

        build = partial(build_library_ray, address=args.address, workers=args.workers)

    out = Path(args.out) if args.out else Path(args.source) / DEFAULT_OUT_NAME
    if args.mode and args.kind != "pages":
        raise UsageError("--mode applies to --kind pages (how a page is fitted to the image encoder)")
    if args.no_hub_correction and args.kind != "music":
        raise UsageError("--no-hub-correction applies to music libraries (pages have no hub correction)")
    encoders = Encoders(args.bundle, **encoder_options(args))
    bars: list[Progress] = []

    def progress(done: int, total: int, note: str) -> None:
        if not bars:  # the total is known once the library has planned the run
            bars.append(Progress(total, "indexing music" if args.kind == "music" else "indexing pages",
                                 enabled=False if args.quiet else None))
        bar = bars[0]
        if done > bar.n:
            bar.update(done - bar.n)
        if note:  # the file now being read and embedded
            bar.start(Path(note).name)

    try:
        report = build(args.source, out, encoders, kind=args.kind, mode=args.mode, rebuild=args.rebuild,
                       progress=progress, hub_correction=not args.no_hub_correction)
    finally:
        for bar in bars:
            bar.close()
    for f in report.failures:
        sys.stderr.write(f"skipped {shown_path(f.path)}: {f.reason}\n")
    for f in report.silent:
        sys.stderr.write(f"silent {shown_path(f.path)}: {f.reason}\n")
    if not args.quiet:
        what = "tracks" if report.kind == "music" else "pages"
        print(f"{shown_path(report.library)}: {report.tracks} {what}, {report.windows} windows "
              f"({report.new} new, {report.changed} changed, {report.unchanged} unchanged, {report.moved} moved, "
              f"{report.removed} removed, {len(report.failures)} skipped, {len(report.silent)} silent"
              + (f", {report.resumed} from an interrupted run" if report.resumed else "")
              + f") in {report.wall_seconds:.1f} s")
        if not report.published:
            print("nothing changed: no new generation written")
        if report.seconds_embedded:
            print(f"embedded {report.seconds_embedded:.1f} s of audio at "
                  f"{report.seconds_embedded / max(report.wall_seconds, 1e-9):.1f}x real time")
        if report.ann_recall_at_10 is not None:
            print(f"approximate index: recall@10 {report.ann_recall_at_10:.3f} against exact search")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
