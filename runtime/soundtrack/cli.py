"""``python -m runtime.soundtrack``: a cue sheet of music for a whole chapter.

    python -m runtime.soundtrack CHAPTER [--library L] [--bundle B] [--seconds-per-page S]
                                 [--switch-cost C] [--json] [--m3u8 FILE]

CHAPTER is a folder of page images or a .cbz/.zip comic archive. The only module of
``runtime.soundtrack`` that parses arguments or prints; the planning is ``planner.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..cli import Parser, Progress, add_common_options, encoder_options, mmss, positive_int, shown_path
from ..errors import InputError

PROG = "python -m runtime.soundtrack"

EXAMPLES = """examples:
  python -m runtime.soundtrack chapter-01.cbz
  python -m runtime.soundtrack my_pages/ --library my_library --seconds-per-page 12
  python -m runtime.soundtrack chapter-01.cbz --json > cues.json
  python -m runtime.soundtrack chapter-01.cbz --m3u8 chapter-01.m3u8 --switch-cost 8

how it decides: pages are matched to every track of the library; a dynamic programme picks
the segments (runs of at least --min-pages pages) and one track each, maximising the total
fit minus --switch-cost per change, so the music changes only where the story does; every
segment gets a different track while unused fitting ones remain; each track starts on its
best-matching part, and where it runs out the next one is planned to crossfade in.

Exit status: 0 on success (unreadable pages are listed and skipped), 2 on bad input (no such
chapter, not a folder or archive, an archive over its limits, a bad bundle or library) with
one line on stderr; --debug shows the traceback."""


def _number(minimum: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum) or value != value or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {minimum:g}, got {text}")
        return value

    return parse


def build_parser() -> Parser:
    from .settings import SoundtrackSettings

    d = SoundtrackSettings()
    p = Parser(
        prog=PROG,
        description="Plan music for a whole manga chapter: a cue sheet of segments (page ranges), the track "
                    "for each, where in the track to start, when on the reading timeline, and the crossfades.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapter", metavar="CHAPTER",
                   help="a folder of page images, or a .cbz/.zip archive (pages in natural name order)")
    p.add_argument("--library", metavar="L", default=None,
                   help="music library built by `python -m runtime.index` (default: the demo library)")
    p.add_argument("--bundle", metavar="B", default=None, help="model bundle folder (default: the shipped one)")
    p.add_argument("--seconds-per-page", type=_number(0, True), default=d.seconds_per_page, metavar="S",
                   help=f"reading time of one page (default: {d.seconds_per_page:g})")
    p.add_argument("--switch-cost", type=_number(0, False), default=d.switch_cost, metavar="C",
                   help=f"what a change of track must gain, in per-page fit standard deviations summed over "
                        f"the pages after it; higher means fewer changes (default: {d.switch_cost:g})")
    p.add_argument("--min-pages", type=positive_int, default=d.min_pages, metavar="K",
                   help=f"shortest segment, in pages: a change must last this long (default: {d.min_pages})")
    p.add_argument("--story-weight", type=_number(0, False), default=d.story_weight, metavar="W",
                   help=f"how much a change in the pages' look counts even where the fitting music stays the "
                        f"same; 0 = music fit alone (default: {d.story_weight:g})")
    p.add_argument("--crossfade", type=_number(0, False), default=d.crossfade_seconds, metavar="SECONDS",
                   help=f"crossfade between tracks (default: {d.crossfade_seconds:g})")
    p.add_argument("--json", action="store_true", help="print the cue sheet as JSON instead of text")
    p.add_argument("--m3u8", metavar="FILE", default=None,
                   help="also write the plan as an .m3u8 playlist (start/stop times for VLC)")
    p.add_argument("--mode", choices=("center_crop", "letterbox", "tiles"), default=None,
                   help="how a page is fitted to the image encoder (default: the bundle's, centre crop)")
    add_common_options(p)
    return p


def _print(track) -> None:
    spp = track.settings.seconds_per_page
    note = f"; {len(track.skipped)} page(s) skipped" if track.skipped else ""
    print(f"chapter: {shown_path(track.source)}  ({len(track.pages)} pages at {spp:g} s: {mmss(track.seconds)} of reading{note})")
    for i, seg in enumerate(track.segments, 1):
        print(f"segment {i}: pages {seg.first_page + 1}-{seg.last_page + 1}  "
              f"({mmss(seg.start_seconds)}-{mmss(seg.end_seconds)})")
        for p in seg.plays:
            fade = f"  crossfade {p.crossfade_seconds:.1f} s" if p.crossfade_seconds else ""
            print(f"  {mmss(p.start_seconds)}  {shown_path(p.track.path)}  from {mmss(p.offset_seconds)}{fade}  "
                  f"({p.reason})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..retrieval import Retriever
    from ._files import write_text_atomic
    from .chapter import open_chapter
    from .planner import plan_chapter
    from .playlist import m3u8_text
    from .settings import SoundtrackSettings

    settings = SoundtrackSettings(seconds_per_page=args.seconds_per_page, switch_cost=args.switch_cost,
                                  min_pages=args.min_pages, story_weight=args.story_weight,
                                  crossfade_seconds=args.crossfade)
    if args.m3u8 and Path(args.m3u8).is_dir():
        raise InputError(f"{args.m3u8}: is a folder; give a playlist file name")
    # A missing or unreadable chapter fails before any model is loaded.
    with open_chapter(args.chapter) as chapter:
        total = len(chapter)
    retriever = Retriever(bundle=args.bundle, library=args.library, **encoder_options(args))
    _ = retriever.library  # open and check it now, before embedding anything
    with Progress(total, "pages", unit="page") as bar:
        track = plan_chapter(retriever, args.chapter, settings, mode=args.mode, on_page=lambda name: bar.update(1, name))
    for s in track.skipped:
        sys.stderr.write(f"skipped {s.name}: {s.reason}\n")
    if not track.pages:
        raise InputError(f"{args.chapter}: none of its {total} pages could be read")
    if args.m3u8:
        out = Path(args.m3u8)
        write_text_atomic(out, m3u8_text(track, out.resolve().parent))
    if args.json:
        json.dump(track.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print(track)
    retriever.close()
    return 0
