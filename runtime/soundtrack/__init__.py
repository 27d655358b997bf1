"""Music for a whole chapter, not a page: planned at once, or decided page turn by page turn.

    from runtime import Retriever
    from runtime.soundtrack import plan_chapter, ReadingSession

    r = Retriever(library="my_library")
    sheet = plan_chapter(r, "chapter-01.cbz")        # Soundtrack: segments, tracks, offsets, times
    session = ReadingSession(r)
    cue = session.turn("page-001.jpg")               # Cue: keep, or switch (track, offset, crossfade)
    session.save("reading.json"); ReadingSession.load(r, "reading.json")

How it decides is in ``planner.py`` (the whole chapter) and ``online.py`` (page by page);
both use the same rules (``settings.py``, ``plays.py``). The command line is
``python -m runtime.soundtrack`` (``cli.py``, the only module here that prints). No torch.
"""
from __future__ import annotations

from ._catalogue import Catalogue, TrackRef
from .chapter import Chapter, ChapterLimits, Skipped, natural_key, open_chapter
from .online import Cue, OnlinePlanner
from .planner import Segment, Soundtrack, plan_chapter, plan_soundtrack
from .playlist import m3u8_text
from .plays import Play
from .session import ReadingSession
from .settings import SoundtrackSettings

__all__ = ["Catalogue", "TrackRef", "Chapter", "ChapterLimits", "Skipped", "natural_key", "open_chapter", "Cue",
           "OnlinePlanner", "Segment", "Soundtrack", "plan_chapter", "plan_soundtrack", "m3u8_text", "Play",
           "ReadingSession", "SoundtrackSettings"]
