"""AudioSet's "Music mood" clips as users have them on disk, labelled over the 7 moods.

Inputs, read exactly as distributed:
- a segments CSV (``balanced_train_segments.csv`` ...): three ``#`` header lines, then
  ``YTID, start_seconds, end_seconds, "label,label"`` rows;
- ``ontology.json``: the class list; the moods are the children of "Music mood"
  (/t/dd00030), checked against runtime.labels;
- the audio, downloaded by the user: either one folder of files named ``<YTID>_<start>.<ext>``
  or ``<YTID>.<ext>`` (`AudioSetMoods`), or one folder per class name, ``Happy music/...``
  (`AudioSetMoods.from_class_folders`, the seed paper's layout).

A clip keeps every mood it is labelled with (multi-hot target over the 7 moods); segments
without a mood label are dropped; segments whose file is missing are skipped and counted.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import InputError
from runtime.labels import MOOD_IDS, MOODS, MUSIC_MOOD_PARENT_ID
from runtime.manifest import AudioPreprocess
from training.data.augment import CLIP_SECONDS, PadOrCrop, clip_length, item_rng
from training.data.folders import AUDIO_EXTENSIONS, FolderRecord, LabelFolders
from training.data.splits import Split, make_split, stratified_partition

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Containers users often get from YouTube downloaders but libsndfile cannot decode: a clip
# found only in one of these is counted apart from missing ones, so the fix is obvious.
UNSUPPORTED_AUDIO: tuple[str, ...] = ("m4a", "aac", "mp4", "webm")

# ---------------------------------------------------------------------------- ontology


@dataclass(frozen=True)
class OntologyEntry:
    id: str
    name: str
    description: str
    child_ids: tuple[str, ...]
    restrictions: tuple[str, ...]


def read_ontology(path: PathLike) -> dict[str, OntologyEntry]:
    """id -> OntologyEntry from AudioSet's ``ontology.json`` (a list of class objects)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: ontology not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of classes, got {type(data).__name__}")
    out: dict[str, OntologyEntry] = {}
    for n, item in enumerate(data):
        if not isinstance(item, dict) or "id" not in item or "name" not in item:
            raise InputError(f"{path}: entry {n} lacks 'id' or 'name'")
        out[item["id"]] = OntologyEntry(
            id=item["id"],
            name=item["name"],
            description=item.get("description", ""),
            child_ids=tuple(item.get("child_ids", ())),
            restrictions=tuple(item.get("restrictions", ())),
        )
    return out


def mood_classes(ontology: dict[str, OntologyEntry]) -> list[tuple[str, str]]:
    """(id, name) of the children of "Music mood", in ontology order.

    They must be exactly runtime.labels' moods, same ids, names and order: the label index
    of a clip and the text prompt the model is trained against both come from there.
    """
    parent = ontology.get(MUSIC_MOOD_PARENT_ID)
    if parent is None:
        raise InputError(f"ontology has no 'Music mood' class ({MUSIC_MOOD_PARENT_ID})")
    found = []
    for cid in parent.child_ids:
        if cid not in ontology:
            raise InputError(f"ontology: 'Music mood' child {cid} is not defined")
        found.append((cid, ontology[cid].name))
    expected = [(i, n) for n, i in MOOD_IDS.items()]
    if found != expected:
        raise InputError(f"ontology: 'Music mood' children are {found}, expected {expected}")
    return found


# ---------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Segment:
    """One row of a segments CSV. `start_text` keeps the start as written ("420.000")."""

    ytid: str
    start: float
    end: float
    labels: tuple[str, ...]
    start_text: str = ""


def read_segments(csv_path: PathLike) -> list[Segment]:
    """Rows of an AudioSet segments CSV; '#' lines are headers, blank lines ignored."""
    path = Path(csv_path)
    out: list[Segment] = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            # skipinitialspace: fields are separated by ", " and the label list is quoted
            # after that space, which plain csv would not treat as a quote.
            for n, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) != 4:
                    raise InputError(f"{path}: line {n}: expected 4 fields (YTID, start, end, labels), got {row!r}")
                ytid, start, end, labels = (c.strip() for c in row)
                try:
                    s, e = float(start), float(end)
                except ValueError:
                    raise InputError(f"{path}: line {n}: start/end {start!r}, {end!r} are not numbers") from None
                out.append(Segment(ytid, s, e, tuple(x.strip() for x in labels.split(",") if x.strip()), start))
    except FileNotFoundError:
        raise InputError(f"{path}: segments CSV not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None
    return out


def clip_stems(segment: Segment) -> list[str]:
    """File names (without extension) a downloaded clip of this segment may have, best first."""
    s = segment.start
    forms = [segment.start_text, f"{s:.3f}", f"{s:g}", f"{s:.1f}"]
    if s == int(s):
        forms.append(str(int(s)))
    stems: list[str] = []
    for form in forms:
        stem = f"{segment.ytid}_{form}"
        if form and stem not in stems:
            stems.append(stem)
    stems.append(segment.ytid)
    return stems


def _index_folder(folder: Path) -> dict[str, dict[str, Path]]:
    """stem -> {extension: path} for every file under folder (any depth, first one wins)."""
    index: dict[str, dict[str, Path]] = defaultdict(dict)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(".") or "." not in name:
                continue
            stem, ext = name.rsplit(".", 1)
            index[stem].setdefault(ext.lower(), Path(dirpath) / name)
    return index


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ClipRecord:
    """One clip: its file, its mood indices (into MOODS), and the one it is stratified by."""

    path: Path
    labels: tuple[int, ...]
    primary: int
    ytid: str = ""
    start: Optional[float] = None

    @property
    def target(self) -> np.ndarray:
        """Multi-hot float32 [7] over MOODS."""
        t = np.zeros(len(MOODS), dtype=np.float32)
        t[list(self.labels)] = 1.0
        return t

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(MOODS[i] for i in self.labels)


class AudioSetMoods:
    """AudioSet segments with at least one mood label whose clip is on disk.

    `records` (tuple of ClipRecord, in CSV order), `missing` (count of mood segments with no
    file), `missing_ids` (their "YTID_start"), `unsupported` (files found only in a format
    libsndfile cannot decode), `dropped` (segments with no mood label).
    """

    classes: tuple[str, ...] = MOODS

    def __init__(
        self,
        segments_csv: Union[PathLike, Sequence[PathLike]],
        ontology_json: PathLike,
        clips_dir: PathLike,
        extensions: Iterable[str] = AUDIO_EXTENSIONS,
    ):
        csvs = [segments_csv] if isinstance(segments_csv, (str, os.PathLike)) else list(segments_csv)
        moods = mood_classes(read_ontology(ontology_json))
        mood_index = {mid: i for i, (mid, _) in enumerate(moods)}
        clips = Path(clips_dir)
        if not clips.is_dir():
            raise InputError(f"{clips}: clips folder not found")
        exts = [e.lower().lstrip(".") for e in extensions]
        index = _index_folder(clips)

        records: list[ClipRecord] = []
        missing: list[str] = []
        unsupported: list[Path] = []
        dropped = 0
        seen: set[tuple[str, float]] = set()
        for path in csvs:
            for seg in read_segments(path):
                labels = sorted({mood_index[l] for l in seg.labels if l in mood_index})
                if not labels:
                    dropped += 1
                    continue
                if (seg.ytid, seg.start) in seen:
                    # The same segment listed in two CSVs is one clip, not two.
                    continue
                seen.add((seg.ytid, seg.start))
                found, undecodable = self._find(seg, index, exts)
                if found is not None:
                    # Primary = lowest index in ontology order: independent of label order in
                    # the CSV, used only to stratify splits.
                    records.append(ClipRecord(found, tuple(labels), labels[0], seg.ytid, seg.start))
                else:
                    missing.append(f"{seg.ytid}_{seg.start_text or seg.start}")
                    if undecodable is not None:
                        unsupported.append(undecodable)
        self._set(records, missing, unsupported, dropped, root=clips)
        if missing:
            log.info("AudioSet moods: %d clip(s) with a mood label are missing from %s", len(missing), clips)

    @staticmethod
    def _find(seg: Segment, index: dict[str, dict[str, Path]], exts: list[str]) -> tuple[Optional[Path], Optional[Path]]:
        """(the clip's decodable file or None, an undecodable copy of it or None)."""
        other = None
        for stem in clip_stems(seg):
            files = index.get(stem, {})
            for ext in exts:
                if ext in files:
                    return files[ext], None
            for ext in UNSUPPORTED_AUDIO:
                if ext in files and other is None:
                    other = files[ext]
        return None, other

    def _set(self, records, missing, unsupported, dropped, root) -> None:
        self.root = root
        self.records: tuple[ClipRecord, ...] = tuple(records)
        self.missing_ids: tuple[str, ...] = tuple(missing)
        self.missing: int = len(missing)
        self.unsupported: tuple[Path, ...] = tuple(unsupported)
        self.dropped: int = dropped
        self.ignored: tuple[str, ...] = ()

    @classmethod
    def from_class_folders(cls, root: PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> "AudioSetMoods":
        """One folder per mood name (``Happy music/``, also ``happy_music/``).

        A clip copied into several mood folders (same file name) is one multi-label clip,
        not several contradictory single-label ones. Folders that are not moods are ignored
        (see `ignored`).
        """
        folders = LabelFolders(root, extensions, classes=MOODS)
        by_name: dict[str, list[FolderRecord]] = defaultdict(list)
        for r in folders.records:
            by_name[r.path.name].append(r)
        records = []
        for name, rs in by_name.items():
            if len({r.index for r in rs}) < len(rs):
                # Same name twice within one class: different clips that happen to share a
                # name (sub-folders), so no evidence they are one clip; keep them apart.
                records.extend(ClipRecord(r.path, (r.index,), r.index, ytid=Path(name).stem) for r in rs)
                continue
            labels = tuple(sorted(r.index for r in rs))
            records.append(ClipRecord(rs[0].path, labels, labels[0], ytid=Path(name).stem))
        self = cls.__new__(cls)
        self._set(records, [], [], 0, root=Path(root))
        self.ignored = folders.ignored
        return self

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> Split[ClipRecord]:
        return clip_split(self.records, val_fraction, seed)

    def label_counts(self) -> dict[str, int]:
        """Clips per mood (a multi-label clip counts for each of its moods)."""
        counts = dict.fromkeys(MOODS, 0)
        for r in self.records:
            for i in r.labels:
                counts[MOODS[i]] += 1
        return counts

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"AudioSetMoods({str(self.root)!r}: {len(self.records)} clips, {self.missing} missing)"


def clip_split(records: Sequence[ClipRecord], val_fraction: float = 0.2, seed: int = 0) -> Split[ClipRecord]:
    """Seeded split (default 80/20) stratified by each clip's primary mood."""
    records = list(records)
    train, val = stratified_partition([str(r.path) for r in records], [r.primary for r in records], val_fraction, seed)
    return make_split(records, train, val, "clip", seed, val_fraction)


# ---------------------------------------------------------------------------- torch


def load_clip_audio(path: PathLike, sample_rate: int) -> np.ndarray:
    """Decode a clip to float32 mono in [-1, 1] at sample_rate; the one place training reads audio.

    Goes through the runtime's loader so training and serving decode identically; falls back
    to soundfile + soxr while runtime.audio_preprocess is not present (parallel development).
    """
    try:
        from runtime.audio_preprocess import load_audio
    except ModuleNotFoundError as e:
        if e.name != "runtime.audio_preprocess":
            raise
    else:
        return load_audio(path, sample_rate)
    import soundfile as sf
    import soxr

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise InputError(f"{path}: cannot decode audio ({e})") from None
    wave = data.mean(axis=1)
    if sr != sample_rate and len(wave):
        wave = soxr.resample(wave, sr, sample_rate)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


class ClipDataset(Dataset):
    """(waveform [clip_samples] float32, multi-hot target [7] float32) per clip.

    The waveform is in the int16 value range (a [-1, 1] signal times 32768) by default:
    AudioCLIP's audio tower maps [-32768, 32767] onto [-1, 1] itself, and feeding it a
    [-1, 1] signal (the seed paper's bug) makes every clip ~90 dB too quiet. int16_range=False
    gives the [-1, 1] signal for a graph that scales internally.

    `augment` is called as ``augment(wave, rng)`` on the [-1, 1] signal (see augment.py);
    whatever it returns is then brought to exactly clip_seconds (centred), so evaluation
    needs no augment at all. Records may be ClipRecord (multi-hot) or FolderRecord over
    MOODS (one-hot).
    """

    def __init__(
        self,
        records: Iterable,
        sample_rate: int = AudioPreprocess.sample_rate,
        clip_seconds: float = CLIP_SECONDS,
        augment: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
        int16_range: bool = True,
        seed: Optional[int] = None,
        num_classes: int = len(MOODS),
    ):
        self.records = tuple(records)
        self.sample_rate = int(sample_rate)
        self.length = clip_length(self.sample_rate, clip_seconds)
        self.augment = augment
        self.scale = AudioPreprocess.int16_scale if int16_range else 1.0
        self.seed = seed
        self.epoch = 0
        self.num_classes = num_classes
        self._fit = PadOrCrop(self.length, train=False)

    def set_epoch(self, epoch: int) -> None:
        """Seeded augmentation varies by epoch only when told the epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _target(self, record) -> np.ndarray:
        t = record.target
        if isinstance(t, np.ndarray):
            return t.astype(np.float32)
        onehot = np.zeros(self.num_classes, dtype=np.float32)
        onehot[int(t)] = 1.0
        return onehot

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[i]
        wave = load_clip_audio(record.path, self.sample_rate)
        if self.augment is not None:
            wave = self.augment(wave, item_rng(self.seed, self.epoch, i))
        wave = self._fit(wave)
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32) * np.float32(self.scale))
        return x, torch.from_numpy(self._target(record))


__all__ = [
    "OntologyEntry",
    "read_ontology",
    "mood_classes",
    "Segment",
    "read_segments",
    "clip_stems",
    "ClipRecord",
    "AudioSetMoods",
    "clip_split",
    "load_clip_audio",
    "ClipDataset",
    "UNSUPPORTED_AUDIO",
]
