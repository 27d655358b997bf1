"""The chapter planner's rules, one page turn at a time (the numpy core of ``ReadingSession``).

At each turn the new page joins the pages read since the current segment began, and the
same dynamic programme the chapter planner uses (``segments.segment``, same switching cost,
same minimum segment length) is run on them. If the best plan for those pages now has a
boundary, the story has changed: the music switches, at this turn, to the best unused
fitting track for the pages after the boundary, and those pages become the new segment.
Because the pages after a boundary must number ``min_pages`` before the programme can place
it, a switch comes ``min_pages - 1`` turns after the change, and one odd page never causes
one. Between switches the music keeps; when the playing track will run out before the next
turn (expected ``seconds_per_page`` later), the next fitting track is queued to crossfade in.

The state is small and exact: the current segment's page embeddings (at most
``HISTORY_PAGES``), what plays and what is queued, and when each track was last used. It
round-trips through JSON (floats as written by ``repr``, embeddings as base64 float32), so a
restored planner continues exactly as the original would have.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ._catalogue import Catalogue
from .fit import fits, page_stats
from .plays import START, STORY_CHANGE, TRACK_ENDED, Play, TrackPicker
from .segments import last_page_agrees, segment
from .settings import SoundtrackSettings

STATE_VERSION = 1
HISTORY_PAGES = 64  # pages of the current segment kept; older ones add nothing a switch needs
KEEP, SWITCH = "keep", "switch"


@dataclass(frozen=True)
class Cue:
    """What the app should do at a page turn."""

    page: int  # 0-based index of the page just turned to
    at_seconds: float  # the turn, on the reading timeline
    action: str  # KEEP or SWITCH
    play: Play  # what plays now (for a switch: the new track, crossfading in at ``at_seconds``)
    queued: tuple[Play, ...]  # tracks planned to crossfade in as the current one runs out
    reason: str  # for a switch: "start" or "story change"; "" for keep
    segment_first_page: int  # 0-based first page of the current segment

    def to_dict(self) -> dict:
        return {"type": "cue", "page": self.page + 1, "at_seconds": round(self.at_seconds, 3),
                "action": self.action, "reason": self.reason, "segment_first_page": self.segment_first_page + 1,
                "play": self.play.to_dict(), "queued": [p.to_dict() for p in self.queued]}


@dataclass(frozen=True)
class _Page:
    emb: np.ndarray  # float32 [D], unit
    mean: float
    std: float
    top: tuple[int, ...]  # best catalogue rows for this page


class OnlinePlanner:
    """Decides the music page by page from page embeddings; see the module docstring."""

    def __init__(self, catalogue: Catalogue, settings: SoundtrackSettings | None = None):
        self.catalogue = catalogue
        self.settings = settings or SoundtrackSettings()
        self.picker = TrackPicker(catalogue, self.settings)
        self.pages_seen = 0
        self.last_at = -math.inf
        self.segment_first_page = 0
        self.history: list[_Page] = []
        self.current: Play | None = None
        self.queue: list[Play] = []

    # -- one turn -----------------------------------------------------------------------------
    def turn(self, emb: np.ndarray, at_seconds: float | None = None) -> Cue:
        page = self._page(emb)
        spp = self.settings.seconds_per_page
        at = (0.0 if self.pages_seen == 0 else self.last_at + spp) if at_seconds is None else float(at_seconds)
        if not math.isfinite(at) or at < self.last_at:
            raise InputError(f"page turn at {at} s comes before the previous one ({self.last_at} s)")
        self.history.append(page)
        del self.history[:-HISTORY_PAGES]
        while self.queue and self.queue[0].start_seconds <= at:
            self.current = self.queue.pop(0)

        rows, z = self._fits(self.history)
        action, reason = KEEP, ""
        if self.current is None:
            action, reason = SWITCH, START
            row = self.picker.choose(rows, z.mean(axis=0))
            self.current = self.picker.start(row, _direction(self.history), at, 0.0, START)
            self.segment_first_page = self.pages_seen
        else:
            first = self._story_change(z)
            if first:
                action, reason = SWITCH, STORY_CHANGE
                self.history = self.history[first:]
                rows, z = rows, z[first:]
                row = self.picker.choose(rows, z.mean(axis=0), avoid={self.current.track.row})
                play = self.picker.start(row, _direction(self.history), at, 0.0, STORY_CHANGE)
                fade = self.picker.crossfade(play.runs_out_seconds - at)
                self.current = replace(play, crossfade_seconds=fade)
                self.queue.clear()
                self.segment_first_page = self.pages_seen - len(self.history) + 1
        last = self.queue[-1] if self.queue else self.current
        self.queue += self.picker.continue_until(last, at + spp + self.settings.crossfade_seconds, rows,
                                                 z.mean(axis=0), _direction(self.history))
        cue = Cue(self.pages_seen, at, action, self.current, tuple(self.queue), reason, self.segment_first_page)
        self.pages_seen += 1
        self.last_at = at
        return cue

    def _story_change(self, z: np.ndarray) -> int:
        """Index into the history where a new segment has begun and lasted ``min_pages``, or 0.

        The programme sees the history as a chapter still being read (``open_end``): its last
        segment may be short, so a change is placed where it happened, and acted on once it
        has persisted for ``min_pages`` pages, up to and including the page just turned to.
        """
        k, w = self.settings.min_pages, self.settings.story_weight
        embs = np.stack([p.emb for p in self.history])
        bounds = segment(z, self.settings.switch_cost, k, embs, w, open_end=True)
        if len(bounds) < 2 or bounds[-1][1] - bounds[-1][0] < k:
            return 0
        # The newest page must side with the new segment: two odd pages followed by a
        # page of the old story also make min_pages, but the story has not changed.
        return bounds[-1][0] if last_page_agrees(z, embs, w, bounds[-2], bounds[-1]) else 0

    def _page(self, emb: np.ndarray) -> _Page:
        e = np.asarray(emb, dtype=np.float32).reshape(-1)
        if e.shape[0] != self.catalogue.dim or not np.all(np.isfinite(e)):
            raise InputError(f"a page embedding must be {self.catalogue.dim} finite numbers, got shape {np.shape(emb)}")
        e = e / max(float(np.linalg.norm(e)), 1e-12)
        st = page_stats(e[None, :], self.catalogue, self.settings.candidates_per_page)
        return _Page(e, float(st.mean[0]), float(st.std[0]), tuple(int(r) for r in st.top[0]))

    def _fits(self, pages: list[_Page]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.unique(np.array([r for p in pages for r in p.top], dtype=np.int64))
        embs = np.stack([p.emb for p in pages])
        _, z = fits(embs, np.array([p.mean for p in pages]), np.array([p.std for p in pages]),
                    self.catalogue, rows)
        return rows, z

    # -- state ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "catalogue": self.catalogue.identity,
            "settings": self.settings.to_dict(),
            "pages_seen": self.pages_seen,
            "last_at": None if self.pages_seen == 0 else self.last_at,
            "segment_first_page": self.segment_first_page,
            "history": [{"embedding": base64.b64encode(p.emb.astype("<f4").tobytes()).decode("ascii"),
                         "mean": p.mean, "std": p.std, "top": list(p.top)} for p in self.history],
            "current": None if self.current is None else _play_state(self.current),
            "queue": [_play_state(p) for p in self.queue],
            "last_used": [[r, t] for r, t in sorted(self.picker.last_used.items())],
        }

    @classmethod
    def from_dict(cls, catalogue: Catalogue, state: dict) -> "OnlinePlanner":
        """Rebuild a planner from ``to_dict()``; InputError names what is wrong with the state."""
        try:
            return cls._from_dict(catalogue, state)
        except InputError as exc:
            raise InputError(f"saved reading session: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise InputError(f"saved reading session is malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_dict(cls, catalogue: Catalogue, state: dict) -> "OnlinePlanner":
        if not isinstance(state, dict):
            raise InputError("not a JSON object")
        if state.get("version") != STATE_VERSION:
            raise InputError(f"version {state.get('version')!r} is not {STATE_VERSION}")
        if state["catalogue"] != catalogue.identity:
            raise InputError("it was made with another music library (or another version of it)")
        self = cls(catalogue, SoundtrackSettings.from_dict(state["settings"]))
        self.pages_seen = _int(state["pages_seen"], "pages_seen")
        self.last_at = -math.inf if self.pages_seen == 0 else _num(state["last_at"], "last_at")
        self.segment_first_page = _int(state["segment_first_page"], "segment_first_page")
        d, n = catalogue.dim, len(catalogue)
        history = state["history"]
        if not isinstance(history, list) or len(history) > HISTORY_PAGES:
            raise InputError(f"history must be a list of at most {HISTORY_PAGES} pages")
        for h in history:
            emb = np.frombuffer(base64.b64decode(h["embedding"], validate=True), dtype="<f4").astype(np.float32)
            if emb.shape != (d,) or not np.all(np.isfinite(emb)):
                raise InputError(f"a page embedding is not {d} finite float32 values")
            top = tuple(_row(r, n) for r in h["top"])
            if not top:
                raise InputError("a page has no candidate tracks")
            self.history.append(_Page(emb, _num(h["mean"], "mean"), _num(h["std"], "std"), top))
        self.current = None if state["current"] is None else _play_from_state(catalogue, state["current"])
        self.queue = [_play_from_state(catalogue, p) for p in state["queue"]]
        for r, t in state["last_used"]:
            self.picker.last_used[_row(r, n)] = _num(t, "last_used")
        if self.pages_seen and (self.current is None or not self.history):
            raise InputError("pages were seen but nothing plays")
        return self


def _direction(pages: list[_Page]) -> np.ndarray:
    m = np.mean([p.emb for p in pages], axis=0, dtype=np.float64)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def _play_state(p: Play) -> dict:
    # Exact floats (json writes repr), unlike Play.to_dict's rounded ones for people.
    return {"row": p.track.row, "path": p.track.path, "offset": p.offset_seconds, "start": p.start_seconds,
            "end": p.end_seconds, "crossfade": p.crossfade_seconds, "reason": p.reason}


def _play_from_state(catalogue: Catalogue, d: dict) -> Play:
    row = _row(d["row"], len(catalogue))
    track = catalogue.track(row)
    if track.path != d["path"]:
        raise InputError(f"track row {row} is {track.path!r} in this library, not {d['path']!r}")
    if d["reason"] not in (START, STORY_CHANGE, TRACK_ENDED):
        raise InputError(f"unknown play reason {d['reason']!r}")
    return Play(track, _num(d["offset"], "offset"), _num(d["start"], "start"), _num(d["end"], "end"),
                _num(d["crossfade"], "crossfade"), d["reason"])


def _num(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InputError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def _int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise InputError(f"{name} must be an integer >= 0, got {x!r}")
    return x


def _row(x, n: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n:
        raise InputError(f"track row {x!r} is not in this library (0..{n - 1})")
    return x
