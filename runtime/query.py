"""``python -m runtime.query``: music for manga pages, and the other directions.

    python -m runtime.query page1.png page2.jpg [--library L] [--top-k 5] [--json]
    python -m runtime.query --text "sad piano"
    python -m runtime.query --audio song.flac [--pages-index P]

For each page: the genre distribution (top 3), the mood distribution (all 7) and the
top-k tracks of the library with their score, where the best part starts (mm:ss) and the
track's own top mood. With no --bundle / --library, the defaults shipped with the package.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from .cli import Parser, Progress, UsageError, add_common_options, mmss, positive_int, run_main
from .errors import InputError

PROG = "python -m runtime.query"


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Find music from your library that fits a manga page, using AudioCLIP's shared "
                    "image/text/audio embedding space. Also: --text for words -> music, --audio for a "
                    "track's moods (and, with --pages-index, the pages that fit it).",
        epilog="Exit status: 0 on success, 2 on bad input (missing or corrupt file, bad bundle, library "
               "built with another bundle) with one line on stderr; --debug shows the traceback.")
    p.add_argument("pages", nargs="*", metavar="PAGE", help="manga page images (any format Pillow reads)")
    p.add_argument("--library", metavar="L", default=None,
                   help="music library built by `python -m runtime.index` (default: the demo library), or a "
                        "collection published by `python -m runtime.publish`: qdrant://HOST:PORT/NAME, "
                        "qdrant+local://DIR/NAME")
    p.add_argument("--bundle", metavar="B", default=None, help="model bundle folder (default: the shipped one)")
    p.add_argument("--top-k", type=positive_int, default=10, metavar="K", help="tracks per query (default: 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of results instead of text")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help='describe the music in words, e.g. --text "sad piano" (repeatable)')
    p.add_argument("--audio", action="append", default=[], metavar="TRACK",
                   help="a music file: print its moods, and with --pages-index the pages that fit it (repeatable)")
    p.add_argument("--pages-index", metavar="P", default=None,
                   help="pages index (`python -m runtime.index PAGES_DIR --out P --kind pages`) for --audio")
    p.add_argument("--mode", choices=("center_crop", "letterbox", "tiles"), default=None,
                   help="how a page is fitted to the encoder's square input: center_crop (the paper's, default), "
                        "letterbox (whole page on white), tiles (average of square tiles along the page)")
    add_common_options(p)
    return p


def _pct(dist, n: int | None = None) -> str:
    return ", ".join(f"{name} {p * 100:.1f}%" for name, p in dist[:n])


def _shown(path) -> str:
    """A path as the text output shows it: relative to the working directory when it is
    under it (shorter, and what the user typed), else as stored. --json keeps it as stored."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_tracks(tracks) -> None:
    if not tracks:
        print("  no tracks in the library")
    for i, t in enumerate(tracks, 1):
        print(f"  {i:>3}. {t.score:+.3f}  from {mmss(t.best_start_seconds)}  [{t.top_mood}]  {_shown(t.path)}")


def _print(result) -> None:
    kind = type(result).__name__
    if kind == "PageResult":
        print(f"page: {result.source}")
        print(f"  genres: {_pct(result.genres)}")
        print(f"  moods:  {_pct(result.moods)}")
        _print_tracks(result.tracks)
    elif kind == "TextResult":
        print(f"text: {result.text!r}")
        _print_tracks(result.tracks)
    else:
        print(f"track: {result.source}")
        print(f"  moods:  {_pct(result.moods)}")
        for i, pg in enumerate(result.pages, 1):
            print(f"  {i:>3}. {pg.score:+.3f}  [{pg.top_genre} / {pg.top_mood}]  {_shown(pg.path)}")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.pages or args.text or args.audio):
        raise UsageError("nothing to query: give PAGE files, --text or --audio (see --help)")
    if args.pages_index and not args.audio:
        raise UsageError("--pages-index is used with --audio (music -> pages)")
    # Missing files fail before any model is loaded.
    for f in [*args.pages, *args.audio]:
        if not Path(f).is_file():
            raise InputError(f"{f}: no such file" if not Path(f).exists() else f"{f}: not a file")

    from .retrieval import Retriever
    from .defaults import demo_notice

    retriever = Retriever(bundle=args.bundle, library=args.library, device=args.device,
                          precision=args.precision, threads=args.threads,
                          selfcheck=False if args.no_selfcheck else None, cache_dir=args.cache_dir)
    if retriever.bundle.is_demo:
        sys.stderr.write(demo_notice(retriever.bundle.dir) + "\n")
    if args.pages or args.text:
        _ = retriever.library  # open and check it now, before embedding anything
    if args.pages_index:
        retriever.pages_index(args.pages_index)

    results = []
    if args.pages:
        with Progress(len(args.pages), "pages", unit="page") as bar:
            for page in args.pages:
                results.append(retriever.query(page, top_k=args.top_k, mode=args.mode))
                bar.update(1, Path(page).name)
    results += [retriever.query_text(t, top_k=args.top_k) for t in args.text]
    results += [retriever.query_audio(a, pages_index=args.pages_index, top_k=args.top_k) for a in args.audio]

    if args.json:
        json.dump([r.to_dict() for r in results], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for r in results:
            _print(r)
    retriever.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
