"""manga-music runtime: torch-free retrieval of music for manga pages with ONNX Runtime.

    from runtime import Retriever
    r = Retriever(bundle="my-bundle", library="my-library")
    result = r.query("page.png", top_k=5)   # PageResult: genres, moods, tracks

Names are re-exported lazily (PEP 562): ``import runtime`` loads neither onnxruntime nor
PIL, so an app pays for what it uses. Nothing here, directly or through a dependency,
imports torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it
_EXPORTS = {
    "Retriever": "retrieval",
    "PageResult": "retrieval",
    "TextResult": "retrieval",
    "TrackResult": "retrieval",
    "TrackHit": "retrieval",
    "PageHit": "retrieval",
    "Encoders": "encoders",
    "TrackEmbedding": "encoders",
    "l2_normalise": "encoders",
    "Bundle": "bundle",
    "PrecisionChoice": "bundle",
    "load_bundle": "bundle",
    "make_session": "sessions",
    "resolve_device": "sessions",
    "Library": "library",
    "LibraryMeta": "library",
    "TrackInfo": "library",
    "PagesIndex": "library",
    "PageInfo": "library",
    "open_pages_index": "library",
    "SessionSettings": "sessions",
    "Failure": "library",
    "BuildReport": "library",
    "SilentTrack": "library",
    "build_library": "library",
    "open_library": "library",
    "ExactIndex": "search",
    "FaissIndex": "search",
    "SearchHits": "search",
    "make_index": "search",
    "Manifest": "manifest",
    "MangaMusicError": "errors",
    "InputError": "errors",
    "BundleError": "errors",
    "LibraryError": "errors",
    "Tokenizer": "tokenizer",
    "load_image": "image_preprocess",
    "preprocess_image": "image_preprocess",
    "load_audio": "audio_preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # for type checkers and IDEs only
    from .bundle import Bundle, PrecisionChoice, load_bundle
    from .encoders import Encoders, TrackEmbedding, l2_normalise
    from .errors import BundleError, InputError, LibraryError, MangaMusicError
    from .library import (BuildReport, Failure, Library, LibraryMeta, PageInfo, PagesIndex, SilentTrack, TrackInfo,
                          build_library, open_library, open_pages_index)
    from .manifest import Manifest
    from .retrieval import PageHit, PageResult, Retriever, TextResult, TrackHit, TrackResult
    from .search import ExactIndex, FaissIndex, SearchHits, make_index
    from .sessions import SessionSettings, make_session, resolve_device
    from .tokenizer import Tokenizer
    from .image_preprocess import load_image, preprocess_image
    from .audio_preprocess import load_audio
