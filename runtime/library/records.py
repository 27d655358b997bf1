"""What a library says about its files: the public dataclasses, tags, and path safety.

``TrackInfo`` is one ranked track (or page), ``Failure`` a file that could not be used,
``SilentTrack`` a file with nothing audible, ``LibraryMeta`` the whole library's facts,
``BuildReport`` what one indexing run did. Tags (mood and genre distributions) are
computed for a whole block of embeddings at once: one matrix product and one softmax.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LibraryError

Dist = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class LibraryMeta:
    """Facts about a whole library, from its generation manifest."""

    schema_version: int
    kind: str
    bundle_fingerprint: str
    model_name: str
    embed_dim: int
    root: Path  # resolved absolute root of the stored relative paths
    created: str
    updated: str
    precision: str
    count: int  # ranked tracks (pages) in this generation
    generation: int = 0
    hub_correction: str = ""  # "" when none, else e.g. "csls k=10 weight=0.5 (24 reference pages)"
    ann_recall_at_10: float | None = None  # measured when the approximate index was built


@dataclass(frozen=True)
class TrackInfo:
    """One indexed file (a track, or a page in a pages index).

    ``row`` is the track's row in this open generation (0..len(library)-1), the id search
    hits carry. ``window_offset`` counts within the track's segment: read windows with
    ``Library.windows_of(row)``."""

    row: int
    path: Path  # absolute
    relpath: str
    size: int
    mtime_ns: int
    sha256: str
    duration: float | None
    window_offset: int
    window_count: int
    moods: Dist
    top_mood: str
    genres: Dist | None = None
    segment: int = -1


@dataclass(frozen=True)
class Failure:
    """A file the indexer could not use, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class SilentTrack:
    """A file that decodes but has no window above the loudness floor: listed, never ranked."""

    path: str
    reason: str


@dataclass(frozen=True)
class BuildReport:
    """What one ``build_library`` run did."""

    library: Path
    kind: str
    tracks: int
    windows: int
    new: int
    changed: int
    unchanged: int
    moved: int  # same content found under a new path: embeddings reused
    removed: int
    failures: tuple[Failure, ...]
    seconds_embedded: float  # audio seconds embedded this run (music); 0 for pages
    wall_seconds: float
    silent: tuple[SilentTrack, ...] = ()
    resumed: int = 0  # files an interrupted earlier run had embedded, reused without embedding
    generation: int = 0  # the generation now live (unchanged by a run that found nothing to do)
    published: bool = False  # False: nothing changed, no new generation was written
    bytes_written: int = 0  # bytes of segment and manifest files this run wrote
    segments: int = 0  # segments in the live generation
    ann_recall_at_10: float | None = None


# -- tags -------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def label_distribution(emb: np.ndarray, labels, scale: float) -> Dist:
    """softmax(scale * cos(emb, label embeddings)) as (class, probability) in label order."""
    p = softmax(scale * (np.asarray(labels.embeddings, np.float32) @ np.asarray(emb, np.float32)))
    return tuple((c, float(v)) for c, v in zip(labels.classes, p))


def tag_block(pooled: np.ndarray, labels, scale: float) -> tuple[list[str], list[str]]:
    """Distributions for a block of [N, D] embeddings at once: (JSON per row, top class per
    row). One matrix product and one softmax for the block; only serialising is per row."""
    if len(pooled) == 0:
        return [], []
    p = softmax(scale * (np.asarray(pooled, np.float32) @ np.asarray(labels.embeddings, np.float32).T))
    classes = list(labels.classes)
    top = [classes[i] for i in np.argmax(p, axis=1)]
    rounded = np.round(p, 6).tolist()
    return [json.dumps(dict(zip(classes, row)), ensure_ascii=False) for row in rounded], top


def dist_from_json(text: str | None, classes: tuple[str, ...] | None = None) -> Dist | None:
    """A stored distribution, checked: a JSON object of finite probabilities in [0, 1]
    (over exactly ``classes`` when given)."""
    if text is None:
        return None
    try:
        d = json.loads(text)
    except (TypeError, ValueError):
        raise LibraryError("stored tag distribution is not JSON") from None
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and not
                                          isinstance(v, bool) and 0.0 <= v <= 1.0 for k, v in d.items()):
        raise LibraryError("stored tag distribution is not a map of probabilities")
    if classes is not None and tuple(d) != tuple(classes):
        raise LibraryError("stored tag distribution does not name the bundle's classes")
    return tuple((k, float(v)) for k, v in d.items())


# -- paths ------------------------------------------------------------------------------------
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relpath(rel: str) -> str:
    """A stored path must stay under the library's root: relative, '/'-separated, no '..',
    no drive, no empty or '.' parts, no NUL. Returns it, or raises ``LibraryError``."""
    if (not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel or rel.startswith("/")
            or _DRIVE.match(rel) or posixpath.normpath(rel) != rel
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise LibraryError(f"stored path {rel!r} is not a plain path under the library's root")
    return rel


def under_root(root: Path, rel: str) -> Path:
    """``root / rel`` for a checked relative path (never outside ``root``)."""
    return root.joinpath(*check_relpath(rel).split("/"))
