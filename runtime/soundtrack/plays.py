"""Tracks on the reading timeline: which track next, where in it to start, when it ends.

Shared by the chapter planner and ``ReadingSession`` so both follow the same rules:

- a track *fits* a stretch of pages when its mean fit there is within ``fit_tolerance`` of
  the best track's; among fitting tracks an unused one is always taken before any repeat,
  and a repeat is the fitting track heard longest ago (never the one playing);
- a track starts at its window closest to the pages (its best-matching part), among the
  windows that leave at least ``min_play_seconds`` (or half the track) to play;
- when a track runs out before the pages do, the next fitting track is planned to start
  ``crossfade_seconds`` before the end, so the music always lasts the reading time.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._catalogue import Catalogue, TrackRef
from .settings import SoundtrackSettings

# Why a play starts.
START, STORY_CHANGE, TRACK_ENDED = "start", "story change", "track ended"
_MIN_DURATION = 1.0  # seconds; guards against a library entry without a usable duration


@dataclass(frozen=True)
class Play:
    """One track sounding on the reading timeline."""

    track: TrackRef
    offset_seconds: float  # where in the track it starts
    start_seconds: float  # when, on the reading timeline
    end_seconds: float  # when it has faded out (its natural end unless the plan cuts it)
    crossfade_seconds: float  # fade-in, overlapping the previous play's fade-out
    reason: str  # START, STORY_CHANGE or TRACK_ENDED

    @property
    def runs_out_seconds(self) -> float:
        """When the track itself ends, on the reading timeline."""
        return self.start_seconds + max(self.track.duration, _MIN_DURATION) - self.offset_seconds

    def to_dict(self) -> dict:
        return {"track": self.track.path, "row": self.track.row, "track_duration": _r(self.track.duration),
                "offset_seconds": _r(self.offset_seconds), "start_seconds": _r(self.start_seconds),
                "end_seconds": _r(self.end_seconds), "crossfade_seconds": _r(self.crossfade_seconds),
                "reason": self.reason}


def _r(x: float) -> float:
    return round(float(x), 3)


class TrackPicker:
    """The no-repeat rule and start offsets, with the memory of what has played."""

    def __init__(self, catalogue: Catalogue, settings: SoundtrackSettings):
        self.catalogue = catalogue
        self.settings = settings
        self.last_used: dict[int, float] = {}  # row -> timeline seconds it last started

    def fitting(self, rows: np.ndarray, profile: np.ndarray) -> np.ndarray:
        """The rows that fit, best first (ties: lower row)."""
        order = np.lexsort((rows, -profile))
        keep = profile[order] >= profile[order[0]] - self.settings.fit_tolerance
        return np.asarray(rows)[order[keep]]

    def choose(self, rows: np.ndarray, profile: np.ndarray, avoid: set[int] = frozenset()) -> int:
        """Best unused fitting track; else the fitting one heard longest ago, not in ``avoid``."""
        fit = [int(r) for r in self.fitting(rows, profile)]
        for r in fit:
            if r not in self.last_used and r not in avoid:
                return r
        pool = [r for r in fit if r not in avoid] or fit
        # Never used counts as heard longest ago; among equals the better fit (earlier in pool).
        return min(pool, key=lambda r: (self.last_used.get(r, -np.inf), pool.index(r)))

    def mark(self, row: int, at: float) -> None:
        self.last_used[int(row)] = float(at)

    def offset(self, row: int, query: np.ndarray) -> float:
        """Start of the track's window closest to ``query``, leaving enough of it to play."""
        emb, starts = self.catalogue.windows(row)
        if len(starts) == 0:
            return 0.0
        duration = max(self.catalogue.track(row).duration, _MIN_DURATION)
        latest = duration - min(self.settings.min_play_seconds, duration / 2)
        ok = starts <= latest + 1e-9
        if not ok.any():
            return 0.0
        scores = np.where(ok, emb @ np.asarray(query, dtype=np.float32), -np.inf)
        return float(starts[int(np.argmax(scores))])

    def start(self, row: int, query: np.ndarray, at: float, crossfade: float, reason: str) -> Play:
        offset = self.offset(row, query)
        track = self.catalogue.track(row)
        self.mark(row, at)
        play = Play(track, offset, float(at), 0.0, crossfade, reason)
        return replace(play, end_seconds=play.runs_out_seconds)

    def crossfade(self, *plays_or_lengths: float) -> float:
        """The crossfade, at most half of either side's playable length."""
        return float(min([self.settings.crossfade_seconds, *(x / 2 for x in plays_or_lengths)]))

    def continue_until(self, current: Play, until: float, rows: np.ndarray, profile: np.ndarray,
                       query: np.ndarray) -> list[Play]:
        """Plays that follow ``current`` (each as its predecessor runs out) until ``until``."""
        out: list[Play] = []
        while current.runs_out_seconds < until:
            row = self.choose(rows, profile, avoid={current.track.row})
            nxt = self.start(row, query, current.runs_out_seconds, 0.0, TRACK_ENDED)
            fade = self.crossfade(current.runs_out_seconds - current.start_seconds,
                                  nxt.runs_out_seconds - nxt.start_seconds)
            nxt = replace(nxt, start_seconds=nxt.start_seconds - fade, end_seconds=nxt.end_seconds - fade,
                          crossfade_seconds=fade)
            self.mark(row, nxt.start_seconds)
            out.append(nxt)
            current = nxt
        return out
