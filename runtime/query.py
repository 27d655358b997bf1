"""``python -m runtime.query``: music for manga pages, and the other directions.

    python -m runtime.query page1.png page2.jpg [--library L] [--top-k 5] [--json]
    python -m runtime.query --text "sad piano"
    python -m runtime.query --audio song.flac [--pages-index P]

For each page: the genre distribution (top 3), the mood distribution (all 7) and the
top-k tracks of the library with their score, where the best part starts (mm:ss) and the
track's own top mood. For a track: its moods, the library's most similar tracks and, with
--pages-index, the pages that fit it. With no --bundle / --library, the defaults shipped
with the package.

A bad item (a truncated page, a text file named .mp3) does not stop the others: every good
result is printed (and is in --json), each bad item gets one line on stderr (and an
``error`` entry in --json), and the exit status is 2 when any item failed.
"""
from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .cli import (EXIT_BAD_INPUT, EXIT_OK, Parser, Progress, UsageError, add_common_options, encoder_options, mmss,
                  positive_int, run_main, shown_path)
from .defaults import EXPORT_COMMAND
from .errors import InputError

PROG = "python -m runtime.query"
MODES = ("center_crop", "letterbox", "tiles")


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Find music from your library that fits a manga page, using AudioCLIP's shared "
                    "image/text/audio embedding space. Also: --text for words -> music, --audio for a "
                    "track's moods and the library's most similar tracks (and, with --pages-index, the pages "
                    "that fit it).",
        epilog="Exit status: 0 on success; 2 on bad input (a missing or corrupt file, a bad bundle, a library "
               "built with another bundle), with one line on stderr per problem: a bad page among many does not "
               "stop the others, whose results are still printed. --debug shows tracebacks. "
               "The model that ships with the package is a small demo: its picks are illustrative only. "
               f"For the real one, export the published AudioCLIP weights (`{EXPORT_COMMAND}`, needs the "
               "[export] extra), index your music with it (`python -m runtime.index MUSIC_DIR --out LIBRARY "
               "--bundle my-bundle`) and pass --bundle my-bundle --library LIBRARY.")
    p.add_argument("pages", nargs="*", metavar="PAGE", help="manga page images (any format Pillow reads)")
    p.add_argument("--library", metavar="L", default=None,
                   help="music library built by `python -m runtime.index` (default: the demo library), or a "
                        "collection published by `python -m runtime.publish`: qdrant://HOST:PORT/NAME, "
                        "qdrant+local://DIR/NAME")
    p.add_argument("--bundle", metavar="B", default=None, help="model bundle folder (default: the shipped one)")
    p.add_argument("--top-k", type=positive_int, default=10, metavar="K",
                   help="tracks (and pages, with --pages-index) per query (default: 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of results instead of text")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help='describe the music in words, e.g. --text "sad piano" (repeatable)')
    p.add_argument("--audio", action="append", default=[], metavar="TRACK",
                   help="a music file: print its moods and the library's most similar tracks, and with "
                        "--pages-index the pages that fit it (repeatable)")
    p.add_argument("--pages-index", metavar="P", default=None,
                   help="pages index (`python -m runtime.index PAGES_DIR --out P --kind pages`) for --audio")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="how a PAGE is fitted to the encoder's square input: center_crop (the paper's, default), "
                        "letterbox (whole page on white), tiles (average of square tiles along the page)")
    add_common_options(p)
    return p


@dataclass(frozen=True)
class Item:
    """One thing to query, as the user named it."""

    kind: str  # "page" | "text" | "track" (the result's type)
    source: str


@dataclass(frozen=True)
class Failed:
    """An item that could not be queried, and why (one line)."""

    item: Item
    error: str

    def to_dict(self) -> dict:
        key = "text" if self.item.kind == "text" else "source"
        return {"type": self.item.kind, key: self.item.source, "error": self.error}


def _check_usage(args) -> list[Item]:
    """The items to query, after refusing options that would not apply to them."""
    if not (args.pages or args.text or args.audio):
        raise UsageError("nothing to query: give PAGE files, --text or --audio (see --help)")
    if args.pages_index and not args.audio:
        raise UsageError("--pages-index is used with --audio (music -> pages)")
    if args.mode and not args.pages:
        raise UsageError("--mode applies to PAGE files (how a page is fitted to the image encoder)")
    for t in args.text:
        if not t.strip():
            raise UsageError('--text is empty: describe the music in words, e.g. --text "sad piano"')
    return ([Item("page", p) for p in args.pages] + [Item("text", t) for t in args.text]
            + [Item("track", a) for a in args.audio])


def _missing(item: Item) -> str | None:
    if item.kind == "text":
        return None
    p = Path(item.source)
    if not p.exists():
        return f"{item.source}: no such file"
    if not p.is_file():
        return f"{item.source}: not a file"
    return None


def _pct(dist, n: int | None = None) -> str:
    return ", ".join(f"{name} {p * 100:.1f}%" for name, p in dist[:n])


def _print_tracks(tracks, indent: str = "  ") -> None:
    if not tracks:
        print(f"{indent}no tracks in the library")
    for i, t in enumerate(tracks, 1):
        print(f"{indent}{i:>3}. {t.score:+.3f}  from {mmss(t.best_start_seconds)}  [{t.top_mood}]  "
              f"{shown_path(t.path)}")


def _print(result) -> None:
    kind = type(result).__name__
    if kind == "PageResult":
        print(f"page: {shown_path(result.source)}")
        print(f"  genres: {_pct(result.genres)}")
        print(f"  moods:  {_pct(result.moods)}")
        _print_tracks(result.tracks)
    elif kind == "TextResult":
        print(f"text: {result.text!r}")
        _print_tracks(result.tracks)
    else:
        print(f"track: {shown_path(result.source)}")
        print(f"  moods:  {_pct(result.moods)}")
        if result.library is None:
            print("  similar tracks: none searched (no library built with this bundle: give --library)")
        else:
            print("  similar tracks:")
            _print_tracks(result.tracks, "    ")
        if result.pages:
            print("  pages that fit it:")
        for i, pg in enumerate(result.pages, 1):
            print(f"    {i:>3}. {pg.score:+.3f}  [{pg.top_genre} / {pg.top_mood}]  {shown_path(pg.path)}")
    print()


def _query(retriever, item: Item, args) -> Any:
    if item.kind == "page":
        return retriever.query(item.source, top_k=args.top_k, mode=args.mode)
    if item.kind == "text":
        return retriever.query_text(item.source, top_k=args.top_k)
    return retriever.query_audio(item.source, pages_index=args.pages_index, top_k=args.top_k)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    items = _check_usage(args)
    options = encoder_options(args)
    outcomes: list[Any] = [None] * len(items)
    # A missing file is known without a model: it is not loaded at all when nothing else is left.
    for i, item in enumerate(items):
        why = _missing(item)
        if why is not None:
            outcomes[i] = Failed(item, why)
    todo = [i for i, o in enumerate(outcomes) if o is None]

    if todo:
        from .retrieval import Retriever

        retriever = Retriever(bundle=args.bundle, library=args.library, **options)
        try:
            # Whatever every item needs is opened and checked before any is embedded: a bad
            # bundle or library is one error, not one per item. (Tracks alone need no
            # library unless one is named: their similar tracks come from the default one
            # only when it was built with this bundle.)
            if args.library or any(items[i].kind != "track" for i in todo):
                _ = retriever.library
            if args.pages_index:
                retriever.pages_index(args.pages_index)
            for kind, modality in (("page", "image"), ("text", "text")):
                if any(items[i].kind == kind for i in todo):
                    retriever.encoders.encoder(modality)
            with Progress(len(todo), "querying", unit="item") as bar:
                for i in todo:
                    bar.start(Path(items[i].source).name if items[i].kind != "text" else items[i].source)
                    try:
                        outcomes[i] = _query(retriever, items[i], args)
                    except InputError as exc:  # this item's problem: the others go on
                        if args.debug:
                            traceback.print_exc()
                        outcomes[i] = Failed(items[i], str(exc))
                    bar.update(1)
        finally:
            retriever.close()

    failed = [o for o in outcomes if isinstance(o, Failed)]
    if args.json:
        json.dump([o.to_dict() for o in outcomes], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for o in outcomes:
            if not isinstance(o, Failed):
                _print(o)
    sys.stdout.flush()
    for f in failed:
        sys.stderr.write(f"{PROG}: error: {' '.join(f.error.split())}\n")
    return EXIT_BAD_INPUT if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
