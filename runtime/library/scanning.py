"""Finding the files to index: a sorted walk that never follows folder links (no loops),
skips hidden entries and the library itself, and reports folders it cannot list instead of
silently leaving them out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..formats import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS


def extensions(kind: str) -> tuple[str, ...]:
    return AUDIO_EXTENSIONS if kind == "music" else IMAGE_EXTENSIONS


def scan_entries(root: Path, kind: str = "music",
                 skip: Iterable[Path] = ()) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(absolute path, path relative to root with '/')] of files with the kind's
    extensions, sorted; [(folder's relative path, reason)] for folders that could not be
    listed). Hidden files and folders and the ``skip`` folders are left out; links to
    folders are not followed (a link loop cannot trap the walk). Plain strings: a
    100,000-file collection is walked in a fraction of a second."""
    exts = extensions(kind)
    root_s = os.fspath(root)
    skip = {os.path.realpath(s) for s in skip}
    found: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []

    def rel(path: str) -> str:
        # os.walk's paths all start with root_s; slicing is exact and needs no relpath
        # (which Windows refuses across drives, and which costs time on 100k files).
        r = path[len(root_s):].lstrip(os.sep)
        return r.replace(os.sep, "/") or "."

    def onerror(exc: OSError) -> None:
        problems.append((rel(exc.filename), f"cannot list folder ({exc.strerror or type(exc).__name__})"))

    for dirpath, dirnames, filenames in os.walk(root_s, onerror=onerror):
        dirnames[:] = sorted(n for n in dirnames
                             if not n.startswith(".") and os.path.realpath(os.path.join(dirpath, n)) not in skip)
        prefix = "" if dirpath == root_s else rel(dirpath) + "/"
        for n in sorted(filenames):
            if not n.startswith(".") and n.lower().endswith(exts):
                found.append((os.path.join(dirpath, n), prefix + n))
    return found, sorted(problems)


def scan_tree(root: Path, kind: str = "music", skip: Iterable[Path] = ()) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``scan_entries`` as Paths: (files, [(folder, reason)])."""
    found, problems = scan_entries(Path(root), kind, skip)
    return [Path(p) for p, _ in found], [(Path(root) / r, why) for r, why in problems]


def scan(root: Path, kind: str = "music", skip: Iterable[Path] = ()) -> list[Path]:
    """Files under ``root`` with the kind's extensions, sorted (see ``scan_tree``)."""
    return scan_tree(Path(root), kind, skip)[0]
