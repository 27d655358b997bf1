"""The file formats the runtime reads, by extension: one list for every part of the project.

The indexer's folder scan, the export's calibration folders and training's class folders
all pick files with these lists (matched case-insensitively), so a file one of them
accepts is never skipped by another.
"""
from __future__ import annotations

# What libsndfile (and so soundfile) decodes. AAC/M4A and WebM are not among them: such
# files must be converted first.
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                    ".au", ".snd", ".caf", ".w64", ".rf64")
# What Pillow decodes among the formats pages come in.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_audio_name(name: str) -> bool:
    """True when a file name has one of ``AUDIO_EXTENSIONS`` (any case)."""
    return name.lower().endswith(AUDIO_EXTENSIONS)


def is_image_name(name: str) -> bool:
    """True when a file name has one of ``IMAGE_EXTENSIONS`` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "is_audio_name", "is_image_name"]
