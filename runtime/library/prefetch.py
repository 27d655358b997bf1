"""Decode the next track while the current one is embedded.

Decoding and resampling a track (libsndfile, soxr) and embedding it (ONNX Runtime) both
release the GIL, so one background thread that decodes file k+1 while file k is embedded
takes the decoder off the indexer's critical path. The builder tells the embedder the
order it will ask for files in (``plan``); a file it skips (unchanged, or copied from an
identical one) just has its decoded samples dropped. One file ahead only: a decoded track
can be 160 MB (15 minutes of float32 at 44.1 kHz), so the look-ahead bounds memory too.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from ..encoders import TrackEmbedding


class PrefetchingEmbedder:
    """``embed_file`` for music: path -> ``TrackEmbedding``, with the next planned file's
    samples decoded in the background. Errors are those of ``Encoders.embed_track`` on the
    path, raised when that file is asked for."""

    def __init__(self, encoders):
        self.encoders = encoders
        self._order: list[Path] = []
        self._next = 0  # index in _order of the next file to start decoding
        self._ahead: dict[Path, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def plan(self, paths: Sequence[Path]) -> None:
        self._order = [Path(p) for p in paths]
        self._next = 0
        self._start_next()

    def _start_next(self) -> None:
        if self._ahead or self._next >= len(self._order):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mm-decode")
        path = self._order[self._next]
        self._next += 1
        self._ahead[path] = self._pool.submit(self.encoders.load_wave, path)

    def __call__(self, path: Path) -> TrackEmbedding:
        path = Path(path)
        future = self._ahead.pop(path, None)
        if future is None:
            # Not the one decoded ahead (the builder skipped some, or no plan): drop the
            # stale look-ahead, continue the plan after this file.
            self._drop()
            if path in self._order[self._next:]:
                self._next = self._order.index(path, self._next) + 1
            self._start_next()
            return self.encoders.embed_track(self.encoders.load_wave(path), name=str(path))
        self._start_next()  # decode the next one while this one is embedded
        return self.encoders.embed_track(future.result(), name=str(path))

    def _drop(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()

    def close(self) -> None:
        self._drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


__all__ = ["PrefetchingEmbedder"]
