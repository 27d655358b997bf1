"""``ReadingSession``: the soundtrack decided online, one page turn at a time, for apps.

    session = ReadingSession(retriever)            # or ReadingSession(retriever, settings)
    cue = session.turn(page)                       # path, bytes, PIL image or uint8 array
    if cue.action == "switch":
        player.crossfade_to(cue.play.track.path, at=cue.play.offset_seconds,
                            seconds=cue.play.crossfade_seconds)
    for play in cue.queued:                        # the current track runs out before the next turn
        player.queue(play.track.path, at=play.offset_seconds, when=play.start_seconds)
    session.save("reading.json")                   # the app may be killed now ...
    session = ReadingSession.load(retriever, "reading.json")   # ... and resume identically

Rules and state: ``online.py``. Saved state is JSON, written atomically, and validated on
load (version, the library it was made with, every field), so a stale or damaged file is
refused with a clear ``InputError`` instead of resuming wrong.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ._catalogue import Catalogue
from ._files import write_text_atomic
from .online import Cue, OnlinePlanner
from .settings import SoundtrackSettings


class ReadingSession:
    """Music for a reader turning pages; ``turn`` returns what to do at each turn."""

    def __init__(self, retriever, settings: SoundtrackSettings | None = None, mode: str | None = None,
                 _planner: OnlinePlanner | None = None):
        self.retriever = retriever
        self.mode = mode
        self.planner = _planner or OnlinePlanner(Catalogue.from_library(retriever.library), settings)

    @property
    def settings(self) -> SoundtrackSettings:
        return self.planner.settings

    @property
    def pages_seen(self) -> int:
        return self.planner.pages_seen

    def turn(self, page: Any, at_seconds: float | None = None) -> Cue:
        """The reader turned to ``page``; ``at_seconds``: when, on the reading timeline
        (default: ``seconds_per_page`` after the previous turn). A page that cannot be read
        raises InputError and leaves the session as it was."""
        emb = self.retriever.encoders.embed_images([page], mode=self.mode)[0]
        return self.planner.turn(emb, at_seconds)

    def turn_embedding(self, embedding: np.ndarray, at_seconds: float | None = None) -> Cue:
        """As ``turn``, for a page the app has already embedded."""
        return self.planner.turn(embedding, at_seconds)

    # -- saving and restoring --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": "manga-music reading session", "mode": self.mode, **self.planner.to_dict()}

    @classmethod
    def from_dict(cls, retriever, state: dict) -> "ReadingSession":
        if not isinstance(state, dict) or state.get("type") != "manga-music reading session":
            raise InputError("not a saved manga-music reading session")
        mode = state.get("mode")
        if mode not in (None, "center_crop", "letterbox", "tiles"):
            raise InputError(f"saved reading session: unknown image mode {mode!r}")
        catalogue = Catalogue.from_library(retriever.library)
        planner = OnlinePlanner.from_dict(catalogue, {k: v for k, v in state.items() if k not in ("type", "mode")})
        return cls(retriever, mode=mode, _planner=planner)

    def save(self, path: str | Path) -> Path:
        """Write the state as JSON, atomically (a crash mid-write keeps the previous file)."""
        return write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, retriever, path: str | Path) -> "ReadingSession":
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable reading session ({exc})") from None
        try:
            return cls.from_dict(retriever, state)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
