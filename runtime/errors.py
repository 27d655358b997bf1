"""Errors the runtime raises on purpose; the CLIs turn each into one line on stderr and exit 2."""
from __future__ import annotations


class MangaMusicError(Exception):
    """Base class: an expected failure with a message fit for a user (no traceback)."""


class InputError(MangaMusicError):
    """A user-supplied file or argument cannot be used (missing, corrupt, empty, too large)."""


class BundleError(MangaMusicError):
    """A model bundle is missing, tampered with, of an unknown schema, or inconsistent."""


class LibraryError(MangaMusicError):
    """A music library index is missing, corrupt, or was built with another bundle."""


class SilentAudioError(InputError):
    """An audio file decodes fine but holds nothing audible (all zero, or every window below
    the loudness floor): the indexer lists it as silent rather than as a failure."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line for a user: its message with every run of whitespace
    (newlines included) folded to one space, at most ``limit`` characters; the class name
    when the message is empty.

    Libraries' messages (libsndfile, ONNX Runtime, onnx's checker) can span many lines, and
    every command promises one line per error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."
