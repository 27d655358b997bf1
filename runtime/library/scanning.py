"""Finding the files to index: a sorted walk that never follows folder links (no loops),
skips hidden entries and the library itself, and reports folders it cannot list instead of
silently leaving them out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

# What libsndfile (and so soundfile) decodes; matched case-insensitively.
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                    ".au", ".snd", ".caf", ".w64", ".rf64")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def extensions(kind: str) -> tuple[str, ...]:
    return AUDIO_EXTENSIONS if kind == "music" else IMAGE_EXTENSIONS


def scan_tree(root: Path, kind: str = "music", skip: Iterable[Path] = ()) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files with the kind's extensions, sorted; [(folder, reason)] for folders that could
    not be listed). Hidden files and folders and the ``skip`` folders are left out; links
    to folders are not followed (a link loop cannot trap the walk)."""
    exts = extensions(kind)
    skip = {Path(s).resolve() for s in skip}
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def onerror(exc: OSError) -> None:
        problems.append((Path(exc.filename), f"cannot list folder ({exc.strerror or type(exc).__name__})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in skip)
        for n in sorted(filenames):
            if not n.startswith(".") and n.lower().endswith(exts):
                found.append(d / n)
    return found, sorted(problems)


def scan(root: Path, kind: str = "music", skip: Iterable[Path] = ()) -> list[Path]:
    """Files under ``root`` with the kind's extensions, sorted (see ``scan_tree``)."""
    return scan_tree(Path(root), kind, skip)[0]
