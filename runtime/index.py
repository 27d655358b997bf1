"""``python -m runtime.index``: build or update a music library (or a pages index).

    python -m runtime.index MUSIC_DIR --out LIBRARY [--bundle B] [--rebuild]
    python -m runtime.index PAGES_DIR --out PAGES --kind pages

Scans the folder recursively, embeds what is new or changed, drops what was deleted,
records undecodable files with their reason, and swaps the result in atomically: an
interrupted run leaves the previous library as it was. See ``runtime/library.py`` for
the folder format.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .cli import Parser, add_common_options, run_main
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
        epilog="Exit status: 0 on success (files that could not be decoded are listed and skipped), "
               "2 on bad input (no such folder, no audio in it, a bad bundle) with one line on stderr.")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    add_common_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .encoders import Encoders
    from .library import build_library

    out = Path(args.out) if args.out else Path(args.source) / DEFAULT_OUT_NAME
    encoders = Encoders(args.bundle, device=args.device, precision=args.precision, threads=args.threads,
                        selfcheck=False if args.no_selfcheck else None, cache_dir=args.cache_dir)
    report = build_library(args.source, out, encoders, kind=args.kind, mode=args.mode, rebuild=args.rebuild,
                           progress=False if args.quiet else None)
    for f in report.failures:
        sys.stderr.write(f"skipped {f.path}: {f.reason}\n")
    if not args.quiet:
        what = "tracks" if report.kind == "music" else "pages"
        print(f"{report.library}: {report.tracks} {what}, {report.windows} windows "
              f"({report.new} new, {report.changed} changed, {report.unchanged} unchanged, {report.moved} moved, "
              f"{report.removed} removed, {len(report.failures)} skipped) in {report.wall_seconds:.1f} s")
        if report.seconds_embedded:
            print(f"embedded {report.seconds_embedded:.1f} s of audio at "
                  f"{report.seconds_embedded / max(report.wall_seconds, 1e-9):.1f}x real time")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
