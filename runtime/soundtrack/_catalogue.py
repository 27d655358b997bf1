"""The music catalogue a soundtrack is planned from, and the one adapter to ``runtime.library``.

The planner needs, per track: how well a page fits it (a score for any page and any track,
or only for some tracks), its window embeddings with their start seconds, its duration, and
a name to show. ``Catalogue`` holds them behind a small interface; ``Catalogue.from_library``
fills it from an open ``runtime.library.Library`` through its public reading API only
(``len``, ``scores``, ``windows_of``, ``track``, ``meta``, ``generation``): this module is
the only code in ``runtime.soundtrack`` that touches the library. ``Catalogue.from_arrays``
builds one from plain arrays (tests, and evaluation of a model that has no library on disk).

Which score: the library's ranking score, ``lib.scores(pages)``: the hub-corrected (centred)
cosine ``(q.t - q.c) / |t - c|`` for a library built with the correction (the default), the
plain cosine for one built with ``--no-hub-correction``. Not always the plain cosine,
because the planner's per-page z-score removes each page's offset but not each track's
spread, and the spread is what makes a hub: a track off the library's narrow cone swings
more from page to page, so by plain cosine it is the best fit for a large share of pages
(README, "Hubs"). Measured on the Wesnoth library (40 real tracks, the hub benchmark's) with
40 synthetic chapters (2,112 pages): planned by plain cosine, the known hub opened 25 % of
all 126 segments and 10 distinct tracks were used; by the centred score the most used track
opened 20 % and 13 were used, at the same boundary precision and recall (1.00 / 0.99). It
also keeps the soundtrack consistent with ``python -m runtime.query``: a page's best track
here is its first hit there. (On the demo library, 14 synthetic tracks with no cone, it
costs a little fit: README, "A soundtrack for a whole chapter".) Window offsets inside a
track still use plain cosines: windows are not centred (as in ``Library.best_window``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import LibraryError
# Page files a chapter may hold: the list the library indexes pages from (re-exported for
# chapter.py, so the library package is imported here only).
from ..library import IMAGE_EXTENSIONS  # noqa: F401

# (pages float32 [Q, D], rows int64 [C] or None) -> float32 [Q, C] (or [Q, M] for all rows)
ScoreFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class TrackRef:
    """A track as a cue sheet names it."""

    row: int  # the track's row in the catalogue (the library's row)
    path: str
    duration: float  # seconds


# -- the adapter: everything the soundtrack reads from a runtime.library.Library -------------
def library_scores(lib) -> ScoreFn:
    """The library's ranking scores (hub-corrected where the library is; see above)."""
    def scores(pages: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return lib.scores(pages, rows=rows)
    return scores


def windows_of(lib, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(window embeddings float32 [W, D], window starts float64 [W] seconds) of one track."""
    emb, starts = lib.windows_of(row)
    return np.asarray(emb, dtype=np.float32), np.asarray(starts, dtype=np.float64)


def track_info(lib, row: int) -> TrackRef:
    info = lib.track(row)
    return TrackRef(int(info.row), str(info.path), float(info.duration or 0.0))


def library_identity(lib) -> str:
    """A short id that changes whenever the tracks (or their rows) may have changed: rows
    are those of one generation, so a new generation is another catalogue."""
    meta = lib.meta
    text = f"{meta.bundle_fingerprint}|{meta.count}|{meta.updated}|{meta.generation}|{lib.generation.name}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the catalogue ----------------------------------------------------------------------------
class Catalogue:
    """Tracks to plan with: ``scores(pages, rows)`` plus per-track windows, durations and names.

    Per-track lookups are cached: a chapter touches a few dozen tracks, never all of them.
    """

    def __init__(self, count: int, dim: int, scores: ScoreFn,
                 windows: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 info: Callable[[int], TrackRef], identity: str):
        if count <= 0:
            raise LibraryError(f"a soundtrack needs at least one track (library holds {count})")
        self._count, self._dim = int(count), int(dim)
        self._scores = scores
        self._windows = windows
        self._info = info
        self.identity = identity
        self._win_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._info_cache: dict[int, TrackRef] = {}

    def __len__(self) -> int:
        return self._count

    @property
    def dim(self) -> int:
        return self._dim

    def scores(self, pages: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 [Q, M] fit scores of the pages (unit rows [Q, D]) with every track, in row
        order, or [Q, len(rows)] with the tracks ``rows`` only. A track whose stored vector
        is unusable scores -inf (it never fits)."""
        pages = np.asarray(pages, dtype=np.float32).reshape(-1, self._dim)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.asarray(self._scores(pages, rows), dtype=np.float32)
        out = out if out.flags.writeable else out.copy()
        out[~np.isfinite(out)] = -np.inf
        return out

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
        return cls(len(lib), lib.meta.embed_dim, library_scores(lib), lambda r: windows_of(lib, r),
                   lambda r: track_info(lib, r), library_identity(lib))

    @classmethod
    def from_arrays(cls, pooled: np.ndarray, windows: Sequence[np.ndarray], starts: Sequence[np.ndarray],
                    durations: Sequence[float], paths: Sequence[str] | None = None) -> "Catalogue":
        """In-memory tracks, scored by plain cosine with ``pooled`` [M, D] (unit rows):
        ``windows[i]`` [W_i, D] and ``starts[i]`` [W_i] seconds per track."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2:
            raise ValueError(f"pooled must be [M, D], got shape {pooled.shape}")
        n = pooled.shape[0]
        if not (len(windows) == len(starts) == len(durations) == n):
            raise ValueError("pooled, windows, starts and durations must describe the same tracks")
        paths = list(paths) if paths is not None else [f"track{i:04d}" for i in range(n)]
        wins = [np.asarray(w, dtype=np.float32) for w in windows]
        sts = [np.asarray(s, dtype=np.float64) for s in starts]
        digest = hashlib.sha256(pooled.tobytes() + "|".join(paths).encode()).hexdigest()[:16]

        def scores(pages: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
            return pages @ (pooled if rows is None else pooled[rows]).T

        return cls(n, pooled.shape[1], scores, lambda r: (wins[r], sts[r]),
                   lambda r: TrackRef(r, paths[r], float(durations[r])), digest)
