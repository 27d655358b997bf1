"""Where the bundle and demo library that ship inside the package live.

The query CLI and ``Retriever()`` fall back to these when no bundle or library is named,
so a first run works with nothing else installed. ``MANGA_MUSIC_BUNDLE`` and
``MANGA_MUSIC_LIBRARY`` override them (an app can point at its own without code changes).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_BUNDLE_DIR = PACKAGE_DIR / "defaults" / "bundle"
DEFAULT_LIBRARY_DIR = PACKAGE_DIR / "defaults" / "library"

# Shown whenever the bundle in use is a demo model, so nobody mistakes its output for the
# real model's.
EXPORT_COMMAND = "python -m export AudioCLIP-Full-Training.pt --out my-bundle"


def default_bundle() -> Path:
    """The bundle used when none is named: $MANGA_MUSIC_BUNDLE, else the shipped one."""
    return Path(os.environ.get("MANGA_MUSIC_BUNDLE") or DEFAULT_BUNDLE_DIR)


def default_library() -> Path:
    """The library used when none is named: $MANGA_MUSIC_LIBRARY, else the shipped demo."""
    return Path(os.environ.get("MANGA_MUSIC_LIBRARY") or DEFAULT_LIBRARY_DIR)


def demo_notice(bundle_dir: Path | str) -> str:
    """The one line printed when a demo bundle is in use."""
    return (f"note: {bundle_dir} is a demo model (small stand-in weights, results are illustrative "
            f"only); export the real weights with `{EXPORT_COMMAND}` and pass --bundle my-bundle")
