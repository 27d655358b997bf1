"""Retrieval in every direction AudioCLIP supports, as a Python API that returns dataclasses.

page -> music (the product), text -> music, music -> music (similar tracks), music -> pages
(through a pages index), music -> moods. A page and a track are compared by the cosine of
the page embedding and the track's direction away from the library's mean track (the hub
correction, ``runtime/library/hubs.py``: without it one odd track came first for a quarter
to a third of all pages and texts); ``TrackHit.cosine`` keeps the plain cosine. The track's
best window (where to start playing) is the window closest to the page. Tags are zero-shot classification
against the label embeddings precomputed in the bundle, so tagging a page needs no text
encoder: softmax(image_text scale * cosine) for a page's genres and moods, and
softmax(audio_text scale * cosine) for a track's moods.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, load_bundle
from .encoders import Encoders
from .errors import InputError, LibraryError
from .library import Library, PagesIndex, TrackInfo, label_distribution, open_library, open_pages_index
from .timecode import mmss

Dist = tuple[tuple[str, float], ...]
log = logging.getLogger("manga_music")


def _sorted(dist: Dist, top: int | None = None) -> Dist:
    out = tuple(sorted(dist, key=lambda kv: -kv[1]))
    return out if top is None else out[:top]


def _describe(item: Any) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__}>"


@dataclass(frozen=True)
class TrackHit:
    """A track that fits a query."""

    path: str
    score: float  # what the ranking used: the cosine with the track's centred direction (hub correction)
    best_start_seconds: float  # start of the window closest to the query
    top_mood: str
    moods: Dist  # the track's own mood distribution, most likely first
    duration: float | None
    cosine: float | None = None  # cosine of the query and the track's pooled embedding


@dataclass(frozen=True)
class PageHit:
    """A page (from a pages index) that fits a track."""

    path: str
    score: float
    top_genre: str
    top_mood: str


@dataclass(frozen=True)
class PageResult:
    """Everything the product says about one page."""

    source: str
    genres: Dist  # top 3, most likely first
    moods: Dist  # all moods, most likely first
    tracks: tuple[TrackHit, ...]

    def to_dict(self) -> dict:
        return {"type": "page", **_plain(self)}


@dataclass(frozen=True)
class TextResult:
    """Tracks for a free-text description ("sad piano")."""

    text: str
    tracks: tuple[TrackHit, ...]

    def to_dict(self) -> dict:
        return {"type": "text", **_plain(self)}


@dataclass(frozen=True)
class TrackResult:
    """What the model says about one track: its moods, the library's most similar tracks
    (the track itself left out), and the pages that fit it when a pages index is given."""

    source: str
    moods: Dist  # all moods, most likely first
    pages: tuple[PageHit, ...]
    tracks: tuple[TrackHit, ...] = ()
    library: str | None = None  # the library the similar tracks come from; None: none searched

    def to_dict(self) -> dict:
        return {"type": "track", **_plain(self)}


def _plain(obj) -> dict:
    d = asdict(obj)
    for key in ("genres", "moods"):
        if key in d:
            d[key] = [{"name": k, "prob": round(v, 6)} for k, v in d[key]]
    for hit in d.get("tracks", []):
        hit["best_start"] = mmss(hit["best_start_seconds"])
        hit["moods"] = [{"name": k, "prob": round(v, 6)} for k, v in hit["moods"]]
    return d


class Retriever:
    """Bundle + library + lazy encoders; ``None`` means the defaults shipped with the package.

    The library is opened (and checked against the bundle's fingerprint) on first use, so
    ``moods_for_track`` works without one. ``providers``, ``provider_options``,
    ``session_options`` and ``spinning`` go to ONNX Runtime through ``Encoders`` (our
    defaults when absent); ``retriever.encoders.encoder("image").provider`` says which
    provider a session really got.
    """

    def __init__(self, bundle: Bundle | str | Path | None = None, library: Library | str | Path | None = None,
                 device: str = "auto", precision: str = "auto", threads: int | None = None,
                 strict_device: bool = False, selfcheck: bool | None = None, cache_dir: str | Path | None = None, *,
                 providers: Sequence[Any] | None = None, provider_options: Sequence[dict] | None = None,
                 session_options: Any = None, spinning: bool = False):
        self.bundle = load_bundle(bundle)
        self.encoders = Encoders(self.bundle, device=device, precision=precision, threads=threads,
                                 strict_device=strict_device, selfcheck=selfcheck, cache_dir=cache_dir,
                                 providers=providers, provider_options=provider_options,
                                 session_options=session_options, spinning=spinning)
        self._library_src = library
        self._library: Library | None = None
        self._pages: dict[str, PagesIndex] = {}
        if isinstance(library, Library):
            library.check_bundle(self.bundle)

    # -- resources ---------------------------------------------------------------------
    @property
    def library(self) -> Library:
        if self._library is None:
            self._library = open_library(self._library_src, bundle=self.bundle)
            if self._library.kind != "music":
                raise LibraryError(f"{self._library.dir} is a {self._library.kind} index, not a music library")
        return self._library

    def pages_index(self, index: PagesIndex | Library | str | Path) -> PagesIndex:
        """A pages index (a folder, or one already open), checked against the bundle; folders
        are opened once and closed with the retriever."""
        if isinstance(index, (PagesIndex, Library)):
            return open_pages_index(index, bundle=self.bundle)
        key = str(Path(index).resolve())
        if key not in self._pages:
            self._pages[key] = open_pages_index(index, bundle=self.bundle)
        return self._pages[key]

    def close(self) -> None:
        if self._library is not None and self._library is not self._library_src:
            self._library.close()
        for idx in self._pages.values():
            idx.close()
        self._library = None
        self._pages.clear()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tags ------------------------------------------------------------------------------
    def _tags(self, emb: np.ndarray, label_set: str, scale: float) -> Dist:
        return label_distribution(emb, self.bundle.manifest.label_set(label_set), scale)

    def page_tags(self, page_emb: np.ndarray) -> tuple[Dist, Dist]:
        """(genres top-3, all moods) of a page embedding, most likely first."""
        s = self.bundle.manifest.logit_scales.image_text
        return _sorted(self._tags(page_emb, "genres", s), 3), _sorted(self._tags(page_emb, "moods", s))

    # -- music search ------------------------------------------------------------------------
    def _hit(self, lib: Library, row: int, score: float, query: np.ndarray) -> TrackHit | None:
        try:
            info = lib.track(row)
            start, _ = lib.best_window(info, query)
        except LibraryError as exc:  # a damaged record: the other hits still stand
            log.warning(str(exc))
            return None
        cosine = float(lib.pooled(row) @ np.asarray(query, np.float32))
        return TrackHit(str(info.path), float(score), start, info.top_mood, _sorted(info.moods), info.duration,
                        cosine)

    def search_tracks(self, embeddings: np.ndarray, top_k: int = 10, correct: bool = True) -> list[tuple[TrackHit, ...]]:
        """Top-k tracks for each row of ``embeddings`` (unit vectors of any modality);
        ``correct``: rank by the hub-corrected score (the default)."""
        if len(embeddings) == 0:
            return []
        lib = self.library
        hits = lib.index.search(embeddings, top_k, correct=correct)
        out = []
        for q, hs, rs in zip(embeddings, hits.scores, hits.ids):
            found = (self._hit(lib, int(r), s, q) for s, r in zip(hs, rs) if r >= 0)
            out.append(tuple(h for h in found if h is not None))
        return out

    def query_many(self, images: Sequence[Any], top_k: int = 10, mode: str | None = None,
                   batch_size: int = 8) -> list[PageResult]:
        """Pages -> one ``PageResult`` each (embedded in batches)."""
        images = list(images)
        embs = self.encoders.embed_images(images, mode=mode, batch_size=batch_size)
        results = []
        for item, emb, tracks in zip(images, embs, self.search_tracks(embs, top_k)):
            genres, moods = self.page_tags(emb)
            results.append(PageResult(_describe(item), genres, moods, tracks))
        return results

    def query(self, image: Any, top_k: int = 10, mode: str | None = None) -> PageResult:
        """One page (path, bytes, PIL image or uint8 array) -> genres, moods and fitting tracks."""
        return self.query_many([image], top_k=top_k, mode=mode)[0]

    def query_text(self, text: str, top_k: int = 10) -> TextResult:
        """Free text -> fitting tracks. Empty (or blank) text is an ``InputError``: it would
        still embed (to the start and end tokens) and rank tracks by nothing the user said."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the text is empty: describe the music in words, e.g. \"sad piano\"")
        emb = self.encoders.embed_texts([text])
        return TextResult(text, self.search_tracks(emb, top_k)[0])

    # -- from a track ----------------------------------------------------------------------
    def _library_entry(self, track: Any) -> tuple[Library, TrackInfo] | None:
        # Only a library the caller named, or one already open, is consulted: opening the
        # shipped demo library to look up a user's file would only ever miss.
        if (self._library_src is None and self._library is None) or not isinstance(track, (str, Path)):
            return None
        lib = self.library
        info = lib.find(track)
        if info is None:
            return None
        st = Path(track).stat()
        if (st.st_size, st.st_mtime_ns) != (info.size, info.mtime_ns):
            return None  # the file changed since indexing: its stored embedding is stale
        return lib, info

    def _track_view(self, track: Any) -> tuple[np.ndarray, Dist]:
        # From the library when the track is indexed and unchanged (no decoding, no audio
        # session); else computed from the file or waveform.
        entry = self._library_entry(track)
        if entry is not None:
            lib, info = entry
            return lib.pooled(info.row), _sorted(info.moods)
        emb = self.encoders.embed_audio([track])[0]
        return emb, _sorted(self._tags(emb, "moods", self.bundle.manifest.logit_scales.audio_text))

    def track_embedding(self, track: Any) -> np.ndarray:
        """The pooled embedding of a track (path, or mono waveform at the bundle's rate)."""
        return self._track_view(track)[0]

    def moods_for_track(self, track: Any) -> Dist:
        """All moods of a track, most likely first (softmax of audio_text scale * cosine)."""
        return self._track_view(track)[1]

    def pages_for_track(self, track: Any, pages_index: PagesIndex | Library | str | Path,
                        top_k: int = 10) -> tuple[PageHit, ...]:
        """Pages of a pages index that fit a track, best first."""
        return self._pages_for(self.track_embedding(track), pages_index, top_k)

    def _pages_for(self, emb: np.ndarray, pages_index, top_k: int) -> tuple[PageHit, ...]:
        idx = self.pages_index(pages_index)
        hits = idx.search(emb[None, :], top_k)
        out = []
        for s, r in zip(hits.scores[0], hits.ids[0]):
            if r < 0:
                continue
            try:
                page = idx.page(int(r))
            except LibraryError as exc:
                log.warning(str(exc))
                continue
            out.append(PageHit(str(page.path), float(s), page.top_genre, page.top_mood))
        return tuple(out)

    def similar_tracks(self, track: Any, top_k: int = 10) -> tuple[TrackHit, ...]:
        """The library's tracks most like ``track`` (music -> music), best first; the track
        itself is left out when the library holds it."""
        _ = self.library  # opened first, so a track it holds is read from it, not decoded
        return self._similar(track, self._track_view(track)[0], top_k)

    def _similar(self, track: Any, emb: np.ndarray, top_k: int) -> tuple[TrackHit, ...]:
        entry = self._library_entry(track)
        own_path = str(entry[1].path) if entry is not None else None
        # One more than asked: the track's own row, when it is there, is dropped.
        hits = self.search_tracks(emb[None, :], top_k + (own_path is not None))[0]
        return tuple(h for h in hits if h.path != own_path)[:top_k]

    def _similar_library(self) -> Library | None:
        """The library similar tracks come from: the one named (its problems are errors),
        else the default one when it was built with this bundle (the shipped demo pair);
        None when the default one was built with another bundle (a track's moods and pages
        need no library)."""
        if self._library_src is not None or self._library is not None:
            return self.library
        try:
            return self.library
        except LibraryError:
            return None

    def query_audio(self, track: Any, pages_index: PagesIndex | Library | str | Path | None = None,
                    top_k: int = 10, similar: bool = True) -> TrackResult:
        """A track -> its moods, the library's ``top_k`` most similar tracks (``similar``;
        ``TrackResult.library`` says which library, None when there was none for this
        bundle), and the ``top_k`` pages that fit it when a pages index is given."""
        # Opened first, so a track it holds is read from it, not decoded.
        lib = self._similar_library() if similar else None
        emb, moods = self._track_view(track)
        pages = self._pages_for(emb, pages_index, top_k) if pages_index is not None else ()
        tracks = self._similar(track, emb, top_k) if lib is not None else ()
        return TrackResult(_describe(track), moods, pages, tracks, None if lib is None else str(lib.dir))
