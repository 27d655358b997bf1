"""Training data: Manga109 pages by genre, AudioSet clips by mood, class folders, augmentation.

Loaders read the data sets in the layouts users have on disk (reference/DATASETS.md) and
produce frozen records; splits are deterministic and stratified; the torch Datasets turn
records into model inputs (images via CLIP's transform, audio in the int16 value range).
"""
from training.data.audioset import (
    AudioSetMoods,
    ClipDataset,
    ClipRecord,
    OntologyEntry,
    Segment,
    clip_split,
    mood_classes,
    read_ontology,
    read_segments,
)
from training.data.folders import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, FolderRecord, LabelFolders
from training.data.manga109 import (
    BookAnnotation,
    Manga109,
    PageAnnotation,
    PageDataset,
    PageRecord,
    page_split,
    parse_annotation,
    read_books,
    read_genre_table,
)
from training.data.splits import Split

__all__ = [
    "AudioSetMoods",
    "ClipDataset",
    "ClipRecord",
    "OntologyEntry",
    "Segment",
    "clip_split",
    "mood_classes",
    "read_ontology",
    "read_segments",
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "FolderRecord",
    "LabelFolders",
    "BookAnnotation",
    "Manga109",
    "PageAnnotation",
    "PageDataset",
    "PageRecord",
    "page_split",
    "parse_annotation",
    "read_books",
    "read_genre_table",
    "Split",
]
