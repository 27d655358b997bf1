"""AudioSet mood clips: CSV, ontology, clip lookup in both layouts, the torch Dataset."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from runtime.errors import InputError
from runtime.labels import MOOD_IDS, MOODS, MUSIC_MOOD_PARENT_ID
from training.data.audioset import (
    AudioSetMoods,
    ClipDataset,
    ClipRecord,
    Segment,
    clip_split,
    clip_stems,
    mood_classes,
    read_ontology,
    read_segments,
)
from training.data.augment import audio_train_augment
from training.data.folders import FolderRecord

MUSIC = "/m/04rlf"

SEGMENTS_CSV = """\
# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=7, num_segs=7, num_unique_labels=9, num_positive_labels=12
# YTID, start_seconds, end_seconds, positive_labels
-0RWZT-miFs, 420.000, 430.000, "/m/04rlf,/t/dd00031"
abc_DEF-123, 30.000, 40.000, "/t/dd00035,/m/04rlf, /t/dd00033"
noMood12345, 0.000, 10.000, "/m/04rlf"
missing0001, 10.000, 20.000, "/t/dd00037"
shortName01, 0.000, 10.000, "/t/dd00034"
intNamed001, 70.000, 80.000, "/t/dd00036,/m/04rlf"
m4aOnly0001, 5.500, 15.500, "/t/dd00032"
"""


def _ontology_slice() -> list[dict]:
    entries = [
        {"id": MUSIC, "name": "Music", "description": "Music...", "citation_uri": "",
         "positive_examples": [], "child_ids": [MUSIC_MOOD_PARENT_ID], "restrictions": []},
        {"id": MUSIC_MOOD_PARENT_ID, "name": "Music mood", "description": "", "citation_uri": "",
         "positive_examples": [], "child_ids": list(MOOD_IDS.values()), "restrictions": ["abstract"]},
    ]
    for name, mid in MOOD_IDS.items():
        entries.append({"id": mid, "name": name, "description": f"{name}.", "citation_uri": "",
                        "positive_examples": ["youtu.be/x"], "child_ids": [], "restrictions": []})
    return entries


def _wav(path: Path, seconds: float = 0.3, sr: int = 16000, amp: float = 0.5, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


@pytest.fixture()
def audioset(tmp_path: Path) -> dict[str, Path]:
    csv_path = tmp_path / "balanced_train_segments.csv"
    csv_path.write_text(SEGMENTS_CSV, encoding="utf-8")
    onto = tmp_path / "ontology.json"
    onto.write_text(json.dumps(_ontology_slice(), indent=1), encoding="utf-8")
    clips = tmp_path / "clips"
    _wav(clips / "-0RWZT-miFs_420.000.wav")       # start as written in the CSV
    _wav(clips / "abc_DEF-123_30.wav")             # integer start
    _wav(clips / "shortName01.flac")               # bare YTID, another format
    _wav(clips / "batch2" / "intNamed001_70.wav")  # in a sub-folder
    (clips / "m4aOnly0001_5.500.m4a").write_bytes(b"\x00" * 16)  # libsndfile cannot read it
    _wav(clips / "noMood12345_0.000.wav")          # on disk, but not a mood clip
    return {"csv": csv_path, "ontology": onto, "clips": clips}


def test_read_segments(audioset: dict[str, Path]) -> None:
    segs = read_segments(audioset["csv"])
    assert len(segs) == 7  # the three '#' lines are not rows
    assert segs[0] == Segment("-0RWZT-miFs", 420.0, 430.0, (MUSIC, "/t/dd00031"), "420.000")
    assert segs[1].labels == ("/t/dd00035", MUSIC, "/t/dd00033")  # whitespace after commas
    assert clip_stems(segs[0])[:2] == ["-0RWZT-miFs_420.000", "-0RWZT-miFs_420"]
    assert clip_stems(segs[0])[-1] == "-0RWZT-miFs"


def test_bad_segment_row_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "eval_segments.csv"
    bad.write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\nabc, x, 10.0, \"/m/1\"\n")
    with pytest.raises(InputError, match="line 4"):
        read_segments(bad)
    bad.write_text("# header\nabc, 1.0, 10.0\n")
    with pytest.raises(InputError, match="line 2: expected 4 fields"):
        read_segments(bad)


def test_mood_classes_checked_against_labels(audioset: dict[str, Path], tmp_path: Path) -> None:
    onto = read_ontology(audioset["ontology"])
    assert mood_classes(onto) == [(mid, name) for name, mid in MOOD_IDS.items()]
    assert onto[MUSIC_MOOD_PARENT_ID].restrictions == ("abstract",)
    entries = _ontology_slice()
    entries[1]["child_ids"] = entries[1]["child_ids"][::-1]  # wrong order: indices would shift
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(entries))
    with pytest.raises(InputError, match="Music mood' children"):
        mood_classes(read_ontology(swapped))
    del entries[1]
    (tmp_path / "noparent.json").write_text(json.dumps(entries))
    with pytest.raises(InputError, match="dd00030"):
        mood_classes(read_ontology(tmp_path / "noparent.json"))


def test_audioset_moods_targets_and_missing(audioset: dict[str, Path]) -> None:
    data = AudioSetMoods(audioset["csv"], audioset["ontology"], audioset["clips"])
    by_id = {r.ytid: r for r in data.records}
    assert list(by_id) == ["-0RWZT-miFs", "abc_DEF-123", "shortName01", "intNamed001"]
    assert by_id["-0RWZT-miFs"].path.name == "-0RWZT-miFs_420.000.wav"
    assert by_id["shortName01"].path.suffix == ".flac"
    assert by_id["intNamed001"].path.parent.name == "batch2"
    # Multi-label kept: Exciting + Sad, primary = first in ontology order (Sad).
    multi = by_id["abc_DEF-123"]
    assert multi.names == ("Sad music", "Exciting music") and multi.primary == MOODS.index("Sad music")
    np.testing.assert_array_equal(multi.target, [0, 0, 1, 0, 1, 0, 0])
    assert multi.target.dtype == np.float32
    np.testing.assert_array_equal(by_id["intNamed001"].target, np.eye(7, dtype=np.float32)[5])
    assert (data.missing, data.dropped) == (2, 1)
    assert set(data.missing_ids) == {"missing0001_10.000", "m4aOnly0001_5.500"}
    assert [p.name for p in data.unsupported] == ["m4aOnly0001_5.500.m4a"]
    assert data.label_counts()["Sad music"] == 1 and data.label_counts()["Scary music"] == 0


def test_segments_in_two_csvs_are_one_clip(audioset: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "eval_segments.csv"
    other.write_text("# a\n# b\n# c\n-0RWZT-miFs, 420.000, 430.000, \"/t/dd00031\"\n")
    data = AudioSetMoods([audioset["csv"], other], audioset["ontology"], audioset["clips"])
    assert len(data) == 4


def test_missing_clips_folder_is_an_input_error(audioset: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="clips folder"):
        AudioSetMoods(audioset["csv"], audioset["ontology"], audioset["clips"] / "nope")


def test_class_folder_layout(tmp_path: Path) -> None:
    root = tmp_path / "moods"
    _wav(root / "Happy music" / "a.wav")
    _wav(root / "Happy music" / "b.wav")
    _wav(root / "sad_music" / "a.wav")  # same clip under a second mood: one 2-label record
    _wav(root / "Scary music" / "deep" / "c.flac")
    _wav(root / "Music" / "x.wav")      # not a mood folder
    (root / "Happy music" / ".DS_Store").write_bytes(b"")
    data = AudioSetMoods.from_class_folders(root)
    by_name = {r.path.name: r for r in data.records}
    assert sorted(by_name) == ["a.wav", "b.wav", "c.flac"]
    assert by_name["a.wav"].names == ("Happy music", "Sad music") and by_name["a.wav"].primary == 0
    assert by_name["c.flac"].labels == (MOODS.index("Scary music"),)
    assert data.ignored == ("Music",) and data.missing == 0


def test_clip_dataset_int16_range_and_targets(audioset: dict[str, Path]) -> None:
    data = AudioSetMoods(audioset["csv"], audioset["ontology"], audioset["clips"])
    ds = ClipDataset(data.records, sample_rate=44100, clip_seconds=0.5)
    x, y = ds[1]
    assert x.shape == (22050,) and x.dtype == torch.float32
    # 0.3 s of a 0.5-amplitude sine centred in 0.5 s, in the int16 value range.
    assert 0.49 * 32768 < float(x.abs().max()) < 0.51 * 32768
    assert float(x[:2000].abs().max()) == 0.0  # centred padding, evaluation style
    assert torch.equal(y, torch.tensor([0, 0, 1, 0, 1, 0, 0], dtype=torch.float32))
    raw, _ = ClipDataset(data.records, sample_rate=44100, clip_seconds=0.5, int16_range=False)[1]
    assert 0.49 < float(raw.abs().max()) < 0.51
    assert torch.allclose(raw * 32768, x)


def test_clip_dataset_augmentation_is_seeded(audioset: dict[str, Path]) -> None:
    data = AudioSetMoods(audioset["csv"], audioset["ontology"], audioset["clips"])
    aug = audio_train_augment(sample_rate=16000, clip_seconds=0.25)
    a = ClipDataset(data.records, sample_rate=16000, clip_seconds=0.25, augment=aug, seed=1)
    b = ClipDataset(data.records, sample_rate=16000, clip_seconds=0.25, augment=aug, seed=1)
    assert a[0][0].shape == (4000,)
    assert torch.equal(a[0][0], b[0][0])
    b.set_epoch(1)
    assert not torch.equal(a[0][0], b[0][0])  # a new epoch draws new augmentations


def test_clip_dataset_accepts_folder_records(tmp_path: Path) -> None:
    _wav(tmp_path / "x.wav")
    ds = ClipDataset([FolderRecord(tmp_path / "x.wav", "Tender music", 3)], sample_rate=16000, clip_seconds=0.1)
    assert torch.equal(ds[0][1], torch.eye(7)[3])
    with pytest.raises(InputError):
        ClipDataset([FolderRecord(tmp_path / "gone.wav", "Sad music", 2)], sample_rate=16000)[0]


def test_clip_split_stratified_by_primary() -> None:
    records = [ClipRecord(Path(f"{m}_{i}.wav"), (m,), m) for m in range(7) for i in range(10)]
    split = clip_split(records, 0.2, seed=4)
    assert Counter(r.primary for r in split.val) == {m: 2 for m in range(7)}
    assert split.level == "clip" and len(split.train) == 56
    assert set(clip_split(records[::-1], 0.2, seed=4).val) == set(split.val)
    assert set(clip_split(records, 0.2, seed=5).val) != set(split.val)
