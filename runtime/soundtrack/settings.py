"""The knobs of soundtrack planning, shared by the chapter planner and ``ReadingSession``.

One frozen dataclass, validated once, stored in a session's saved state (so a resumed
session keeps the rules it started with). Fit units: a page's fit to a track is the score
the library ranks by (the cosine of the page and the track's pooled embedding, hub-corrected
where the library is; ``_catalogue.py``), standardised over the catalogue for that page
(z-score: 0 is an average track for the page, 1 one standard deviation better).
``switch_cost`` and ``fit_tolerance`` are in those units; ``story_weight`` multiplies a
segment's spread of page embeddings measured in the chapter's typical page-to-page change
(``segments.py``). The defaults were tuned on synthetic chapters of one seed and measured on
another (README, "A soundtrack for a whole chapter").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import InputError


@dataclass(frozen=True)
class SoundtrackSettings:
    seconds_per_page: float = 8.0  # reading time of one page
    # What a track change must gain, summed over the pages after it, in per-page fit
    # standard deviations. Higher: fewer, longer segments.
    switch_cost: float = 4.0
    # How much a segment pays for mixing pages that look different (the story changed even
    # where the music that fits did not); 0: music fit alone decides.
    story_weight: float = 0.2
    # A segment is at least this many pages: a change must persist to count.
    min_pages: int = 3
    # Overlap of the outgoing and the incoming track, seconds.
    crossfade_seconds: float = 2.0
    # A track "fits" a stretch of pages when its mean fit there is within this many fit
    # standard deviations of the best track's; unused fitting tracks are used before any
    # track repeats.
    fit_tolerance: float = 0.1
    # A track is started no later than where this much of it is still left to play (or
    # half the track, if shorter), so its best part is not its last two seconds.
    min_play_seconds: float = 30.0
    # Tracks considered per page (the best ones by fit); bounds the work on big catalogues.
    candidates_per_page: int = 32

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(f"{name} must be {why}, got {getattr(self, name)!r}")

        for name in ("seconds_per_page", "min_play_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(name, "a positive number of seconds")
        for name in ("switch_cost", "story_weight", "fit_tolerance", "crossfade_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "a number >= 0")
        for name in ("min_pages", "candidates_per_page"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "an integer >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SoundtrackSettings":
        if not isinstance(d, dict):
            raise InputError("soundtrack settings must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown soundtrack setting(s): {', '.join(unknown)}")
        return cls(**d)
