"""Where the bundle and demo library that ship inside the package live.

The query CLI and ``Retriever()`` fall back to these when no bundle or library is named,
so a first run works with nothing else installed. ``MANGA_MUSIC_BUNDLE`` and
``MANGA_MUSIC_LIBRARY`` override them (an app can point at its own without code changes).
A demo bundle says so once per process (``note_if_demo``, called by ``Encoders``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_BUNDLE_DIR = PACKAGE_DIR / "defaults" / "bundle"
DEFAULT_LIBRARY_DIR = PACKAGE_DIR / "defaults" / "library"

EXPORT_COMMAND = "python -m export AudioCLIP-Full-Training.pt --out my-bundle"

# Said once per process and bundle whenever a demo model is in use, so nobody mistakes its
# picks for the real model's. Short, and without a path: it rides along with every first
# run, and the command line tools print it after their results (never next to an error).
DEMO_NOTE = "demo model in use (stand-in weights): its picks are illustrative only; see the README, 'The demo model'"
# Record attribute that marks a log record as a note the command line tools hold back
# until a command has succeeded.
NOTE_ATTR = "manga_music_note"

log = logging.getLogger("manga_music")
_noted: set[str] = set()


def default_bundle() -> Path:
    """The bundle used when none is named: $MANGA_MUSIC_BUNDLE, else the shipped one."""
    return Path(os.environ.get("MANGA_MUSIC_BUNDLE") or DEFAULT_BUNDLE_DIR)


def default_library() -> Path:
    """The library used when none is named: $MANGA_MUSIC_LIBRARY, else the shipped demo."""
    return Path(os.environ.get("MANGA_MUSIC_LIBRARY") or DEFAULT_LIBRARY_DIR)


def demo_notice(bundle_dir: Path | str | None = None) -> str:
    """The demo note as one line (``bundle_dir`` is accepted for older callers; the note
    names no path)."""
    return f"note: {DEMO_NOTE}"


def note_if_demo(bundle) -> bool:
    """Log the demo note (a warning marked as a note) the first time a demo ``bundle`` is
    used in this process; True when it is a demo."""
    if not bundle.is_demo:
        return False
    if bundle.fingerprint not in _noted:
        _noted.add(bundle.fingerprint)
        log.warning(DEMO_NOTE, extra={NOTE_ATTR: True})
    return True
