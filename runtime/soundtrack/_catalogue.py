"""The music catalogue a soundtrack is planned from, and the one adapter to ``runtime.library``.

The planner needs four facts per track: its pooled embedding, its window embeddings with
their start seconds, its duration, and a name to show. ``Catalogue`` holds them behind a
small interface; ``Catalogue.from_library`` fills it from an open ``Library`` through the
three functions below, which are the only code in ``runtime.soundtrack`` that touches the
library's layout (it is being rewritten into segment files: a merge changes this adapter
and nothing else). ``Catalogue.from_arrays`` builds one from plain arrays (tests, and
evaluation of a model that has no library on disk).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import LibraryError
# Page files a chapter may hold: the list the library indexes pages from (re-exported for
# chapter.py, so the library module is imported here only).
from ..library import IMAGE_EXTENSIONS  # noqa: F401


@dataclass(frozen=True)
class TrackRef:
    """A track as a cue sheet names it."""

    row: int  # row in the catalogue's pooled matrix
    path: str
    duration: float  # seconds


# -- the adapter: everything the soundtrack reads from a runtime.library.Library -------------
def pooled_matrix(lib) -> np.ndarray:
    """float32 [M, D] unit rows, one per track, in row order (may be a memmap)."""
    return lib.tracks


def windows_of(lib, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(window embeddings float32 [W, D], window starts float64 [W] seconds) of one track."""
    info = lib.track(row)
    lo, hi = info.window_offset, info.window_offset + info.window_count
    return np.asarray(lib.windows[lo:hi], dtype=np.float32), np.asarray(lib.starts[lo:hi], dtype=np.float64)


def track_info(lib, row: int) -> TrackRef:
    info = lib.track(row)
    return TrackRef(int(info.row), str(info.path), float(info.duration or 0.0))


def library_identity(lib) -> str:
    """A short id that changes whenever the tracks (or their rows) may have changed."""
    meta = lib.meta
    text = f"{meta.bundle_fingerprint}|{meta.count}|{meta.updated}|{lib.generation.name}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the catalogue ----------------------------------------------------------------------------
class Catalogue:
    """Tracks to plan with: ``pooled`` [M, D] plus per-track windows, durations and names.

    Per-track lookups are cached: a chapter touches a few dozen tracks, never all of them.
    """

    def __init__(self, pooled: np.ndarray, windows: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 info: Callable[[int], TrackRef], identity: str):
        if pooled.ndim != 2 or pooled.shape[0] == 0:
            raise LibraryError(f"a soundtrack needs at least one track (library holds {pooled.shape[0]})")
        self.pooled = pooled
        self._windows = windows
        self._info = info
        self.identity = identity
        self._win_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._info_cache: dict[int, TrackRef] = {}

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    @property
    def dim(self) -> int:
        return int(self.pooled.shape[1])

    def windows(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        row = int(row)
        if row not in self._win_cache:
            self._win_cache[row] = self._windows(row)
        return self._win_cache[row]

    def track(self, row: int) -> TrackRef:
        row = int(row)
        if row not in self._info_cache:
            self._info_cache[row] = self._info(row)
        return self._info_cache[row]

    @classmethod
    def from_library(cls, lib) -> "Catalogue":
        if lib.kind != "music":
            raise LibraryError(f"{lib.dir} is a {lib.kind} index, not a music library")
        return cls(pooled_matrix(lib), lambda r: windows_of(lib, r), lambda r: track_info(lib, r),
                   library_identity(lib))

    @classmethod
    def from_arrays(cls, pooled: np.ndarray, windows: Sequence[np.ndarray], starts: Sequence[np.ndarray],
                    durations: Sequence[float], paths: Sequence[str] | None = None) -> "Catalogue":
        """In-memory tracks: ``windows[i]`` [W_i, D] and ``starts[i]`` [W_i] seconds per track."""
        pooled = np.asarray(pooled, dtype=np.float32)
        n = pooled.shape[0]
        if not (len(windows) == len(starts) == len(durations) == n):
            raise ValueError("pooled, windows, starts and durations must describe the same tracks")
        paths = list(paths) if paths is not None else [f"track{i:04d}" for i in range(n)]
        wins = [np.asarray(w, dtype=np.float32) for w in windows]
        sts = [np.asarray(s, dtype=np.float64) for s in starts]
        digest = hashlib.sha256(pooled.tobytes() + "|".join(paths).encode()).hexdigest()[:16]
        return cls(pooled, lambda r: (wins[r], sts[r]), lambda r: TrackRef(r, paths[r], float(durations[r])), digest)
