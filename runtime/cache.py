"""The runtime's cache folder: small facts worth remembering between processes.

What lives here is derived, never precious: a self-check verdict per graph and machine
(``selfcheck/``), and whatever later speeds a start up. Deleting the folder only costs the
work of recomputing it. The folder is, in order of precedence: the ``cache_dir`` a caller
passes, ``$MANGA_MUSIC_CACHE``, then the platform's user cache folder
(``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows) + ``manga-music``. A cache that cannot be written is not
an error: the work is simply redone next time.

Entries are written to a temporary name and renamed, so a reader never sees half a file,
and two processes racing to write the same entry both leave a whole one.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ENV_CACHE = "MANGA_MUSIC_CACHE"
APP_NAME = "manga-music"


def default_cache_dir() -> Path:
    """The platform's user cache folder for this app (not created here)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / APP_NAME


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def read_entry(path: Path) -> dict | None:
    """A cached JSON object, or None when it is absent or unreadable (a damaged entry is
    the same as a missing one: it is recomputed and rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_entry(path: Path, data: dict) -> bool:
    """Write a JSON object atomically; False (and nothing written) when the folder is not
    writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["ENV_CACHE", "default_cache_dir", "resolve_cache_dir", "read_entry", "write_entry"]
