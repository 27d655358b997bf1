"""Synthetic stand-ins for Manga109 pages and AudioSet music-mood clips.

The demo model is trained on data generated here: manga pages whose genre shows in their
layout and motifs (``pages``), music clips whose mood shows in tempo, mode, register,
loudness and timbre (``music``), and writers that lay both out on disk exactly as the real
data sets come (``layouts``), so the real loaders are exercised end to end.
"""
from training.synthetic.layouts import (
    write_audioset,
    write_example_pages,
    write_manga109,
    write_music_library,
)
from training.synthetic.music import render_clip
from training.synthetic.pages import PageLayout, render_page, render_page_with_layout

__all__ = [
    "PageLayout",
    "render_clip",
    "render_page",
    "render_page_with_layout",
    "write_audioset",
    "write_example_pages",
    "write_manga109",
    "write_music_library",
]
