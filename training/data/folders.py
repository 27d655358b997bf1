""""One folder per label" data sets: a user's own pages or music, sorted into class folders.

    root/
      Happy music/   a.wav  sub/b.flac
      Sad music/     c.ogg

Each file under a class folder (at any depth) becomes a record (path, label, index). The
classes are the sorted folder names, or a list given explicitly (then folder names match
case-insensitively, with '_' read as a space, and folders not in the list are reported in
`ignored`). Hidden files and folders (".DS_Store", ".git") are skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from runtime import formats
from runtime.errors import InputError

# The runtime's lists (what its loaders decode), without the dot. m4a/aac/webm are not in
# them: a clip in those formats must be converted first (see audioset.UNSUPPORTED_AUDIO).
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(e.lstrip(".") for e in formats.IMAGE_EXTENSIONS)
AUDIO_EXTENSIONS: tuple[str, ...] = tuple(e.lstrip(".") for e in formats.AUDIO_EXTENSIONS)


@dataclass(frozen=True)
class FolderRecord:
    """One file, its class name and that class's index in the data set's class list."""

    path: Path
    label: str
    index: int

    @property
    def target(self) -> int:
        return self.index


def normalize_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """("JPG", ".png") -> {"jpg", "png"}."""
    out = frozenset(e.lower().lstrip(".") for e in extensions)
    if not out:
        raise ValueError("no file extensions given")
    return out


def folder_key(name: str) -> str:
    """How a folder name is compared with a class name: 'happy_music ' ~ 'Happy music'."""
    return " ".join(name.replace("_", " ").casefold().split())


def _hidden(name: str) -> bool:
    return name.startswith(".")


def files_under(folder: Path, extensions: frozenset[str]) -> list[Path]:
    """Files with one of the extensions under folder, at any depth, sorted by path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # Pruning in place stops os.walk from descending into hidden folders.
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if not _hidden(name) and "." in name and name.rsplit(".", 1)[-1].lower() in extensions:
                found.append(Path(dirpath) / name)
    return sorted(found)


class LabelFolders:
    """The records of a one-folder-per-class layout.

    Attributes: `classes` (tuple of class names, index order), `records` (tuple of
    FolderRecord, by class then path), `ignored` (folder names not in an explicit class
    list), `empty_classes` (classes with no file: no folder, or none of the extensions).
    """

    def __init__(self, root: str | os.PathLike, extensions: Iterable[str], classes: Optional[Sequence[str]] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: not a folder")
        self.extensions = normalize_extensions(extensions)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not _hidden(p.name))

        if classes is None:
            self.classes: tuple[str, ...] = tuple(p.name for p in folders)
            chosen = {p.name: [p] for p in folders}
            self.ignored: tuple[str, ...] = ()
        else:
            self.classes = tuple(classes)
            keys = [folder_key(c) for c in self.classes]
            if len(set(keys)) != len(keys):
                raise ValueError(f"class names collide once case and '_' are ignored: {self.classes}")
            by_key = dict(zip(keys, self.classes))
            chosen = {c: [] for c in self.classes}
            ignored = []
            for p in folders:
                cls = by_key.get(folder_key(p.name))
                if cls is None:
                    ignored.append(p.name)
                else:
                    # "Happy music" and "happy_music" both present: read both.
                    chosen[cls].append(p)
            self.ignored = tuple(ignored)

        records: list[FolderRecord] = []
        empty: list[str] = []
        for index, cls in enumerate(self.classes):
            files = [f for p in chosen.get(cls, []) for f in files_under(p, self.extensions)]
            if not files:
                empty.append(cls)
            records.extend(FolderRecord(f, cls, index) for f in files)
        self.records: tuple[FolderRecord, ...] = tuple(records)
        self.empty_classes: tuple[str, ...] = tuple(empty)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"LabelFolders({str(self.root)!r}: {len(self.records)} files in {len(self.classes)} classes)"
