"""A whole chapter's soundtrack, planned at once.

1. Fit (``fit.py``): each page against the catalogue, as per-page z-scores; each page's best
   ``candidates_per_page`` tracks are the candidates.
2. Segments (``segments.py``): the exact dynamic programme that maximises total fit minus
   ``switch_cost`` per change, with segments of at least ``min_pages``.
3. One track per segment (``assign.py``): an optimal assignment over the segments' summed
   fits, every segment a different track among those that fit it; a segment left without
   one repeats the fitting track heard longest ago.
4. The timeline (``plays.py``): each segment starts on its track's best-matching window;
   where a track runs out inside its segment, the next unused fitting track is planned to
   crossfade in, so each segment's music lasts its reading time.

``plan_soundtrack`` works on embeddings (numpy only); ``plan_chapter`` reads a chapter
(folder or archive), embeds its pages and plans it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._catalogue import Catalogue
from .assign import assign_distinct
from .chapter import Skipped
from .fit import candidates, fits, page_stats
from .plays import START, STORY_CHANGE, Play, TrackPicker
from .segments import segment
from .settings import SoundtrackSettings


@dataclass(frozen=True)
class Segment:
    """A run of pages with one kind of music: its track, then any track that follows it."""

    first_page: int  # 0-based, inclusive
    last_page: int  # 0-based, inclusive
    start_seconds: float
    end_seconds: float
    plays: tuple[Play, ...]
    fit: float  # mean z-score of the segment's pages with its (first) track

    @property
    def pages(self) -> int:
        return self.last_page - self.first_page + 1

    def to_dict(self) -> dict:
        return {"first_page": self.first_page + 1, "last_page": self.last_page + 1, "pages": self.pages,
                "start_seconds": round(self.start_seconds, 3), "end_seconds": round(self.end_seconds, 3),
                "fit": round(self.fit, 4), "plays": [p.to_dict() for p in self.plays]}


@dataclass(frozen=True)
class Soundtrack:
    """The cue sheet of a chapter."""

    source: str
    pages: tuple[str, ...]  # names of the pages on the timeline, in reading order
    segments: tuple[Segment, ...]
    settings: SoundtrackSettings
    skipped: tuple[Skipped, ...] = ()
    ignored: int = 0  # members or files that are not pages (not images, nested, hidden)
    page_rows: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    @property
    def plays(self) -> tuple[Play, ...]:
        return tuple(p for s in self.segments for p in s.plays)

    @property
    def seconds(self) -> float:
        return len(self.pages) * self.settings.seconds_per_page

    def track_at(self, seconds: float) -> int:
        """Row of the track that has taken over at ``seconds`` (the later one during a crossfade)."""
        row = -1
        for p in self.plays:
            if p.start_seconds <= seconds:
                row = p.track.row
        return row

    def to_dict(self) -> dict:
        return {"type": "soundtrack", "source": self.source, "pages": len(self.pages),
                "seconds": round(self.seconds, 3), "settings": self.settings.to_dict(),
                "segments": [s.to_dict() for s in self.segments],
                "page_names": list(self.pages),
                "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
                "ignored": self.ignored}


def plan_soundtrack(embs: np.ndarray, catalogue: Catalogue, settings: SoundtrackSettings | None = None,
                    pages: tuple[str, ...] | None = None, source: str = "") -> Soundtrack:
    """Plan music for pages ``embs`` [N, D] (unit rows, reading order) from ``catalogue``."""
    settings = settings or SoundtrackSettings()
    embs = np.asarray(embs, dtype=np.float32)
    n = embs.shape[0]
    pages = tuple(pages) if pages is not None else tuple(f"page {i + 1}" for i in range(n))
    if len(pages) != n:
        raise ValueError(f"{len(pages)} page names for {n} embeddings")
    if n == 0:
        return Soundtrack(source, pages, (), settings)
    stats = page_stats(embs, catalogue, settings.candidates_per_page)
    rows = candidates(stats)
    _, z = fits(embs, stats.mean, stats.std, catalogue, rows)
    bounds = segment(z, settings.switch_cost, settings.min_pages, embs, settings.story_weight)

    picker = TrackPicker(catalogue, settings)
    sums = np.stack([z[a:b].sum(axis=0) for a, b, _ in bounds])
    profiles = sums / np.array([[b - a] for a, b, _ in bounds])
    allowed = profiles >= profiles.max(axis=1, keepdims=True) - settings.fit_tolerance
    primary = assign_distinct(sums, allowed)
    spp = settings.seconds_per_page
    for s, (a, _, _) in enumerate(bounds):
        if primary[s] >= 0:
            # Reserved from the start: a continuation elsewhere must not take a segment's track.
            picker.mark(int(rows[primary[s]]), a * spp)

    segments: list[Segment] = []
    previous: Play | None = None
    for s, (a, b, _) in enumerate(bounds):
        query = _mean_direction(embs[a:b])
        avoid = {previous.track.row} if previous is not None else set()
        row = int(rows[primary[s]]) if primary[s] >= 0 else picker.choose(rows, profiles[s], avoid)
        fade = 0.0 if previous is None else settings.crossfade_seconds
        first = picker.start(row, query, a * spp, fade, START if previous is None else STORY_CHANGE)
        if previous is not None:
            fade = picker.crossfade(first.runs_out_seconds - first.start_seconds)
            first = replace(first, crossfade_seconds=fade)
            segments[-1] = _cut_last(segments[-1], a * spp + fade)
        last_segment = b == n
        until = b * spp + (0.0 if last_segment else settings.crossfade_seconds)
        plays = [first, *picker.continue_until(first, until, rows, profiles[s], query)]
        col = int(np.searchsorted(rows, row))
        fit = float(z[a:b, col].mean()) if col < len(rows) and rows[col] == row else float("nan")
        segments.append(Segment(a, b - 1, a * spp, b * spp, tuple(plays), fit))
        previous = plays[-1]
    segments[-1] = _cut_last(segments[-1], n * spp)
    track = Soundtrack(source, pages, tuple(segments), settings)
    mid = (np.arange(n) + 0.5) * spp
    return replace(track, page_rows=np.array([track.track_at(t) for t in mid], dtype=np.int64))


def _cut_last(seg: Segment, end: float) -> Segment:
    """The segment's last play stops at ``end`` (a story change, or the chapter's end)."""
    last = seg.plays[-1]
    return replace(seg, plays=seg.plays[:-1] + (replace(last, end_seconds=min(last.end_seconds, end)),))


def _mean_direction(embs: np.ndarray) -> np.ndarray:
    m = np.asarray(embs, dtype=np.float64).mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def plan_chapter(retriever, chapter: str | Path, settings: SoundtrackSettings | None = None,
                 mode: str | None = None, on_page: Callable[[str], Any] | None = None, limits=None) -> Soundtrack:
    """Read a chapter (folder of pages, or .cbz/.zip), embed its pages with the retriever's
    image encoder and plan its soundtrack from the retriever's library.

    Pages that cannot be read are skipped and listed in ``Soundtrack.skipped``; ``on_page``
    is called with each page's name after it is embedded (a progress bar).
    """
    from .chapter import ChapterLimits, open_chapter
    from .embedding import embed_chapter

    catalogue = Catalogue.from_library(retriever.library)
    with open_chapter(chapter, limits or ChapterLimits()) as ch:
        embs, names, skipped = embed_chapter(retriever.encoders, ch, mode=mode, on_page=on_page)
        ignored = ch.ignored
    track = plan_soundtrack(embs, catalogue, settings, names, str(chapter))
    return replace(track, skipped=skipped, ignored=ignored)
