"""The names the exported graphs give their input and output, shared by the exporter that
writes them, the quantiser that feeds them and the parity report that runs them."""
from __future__ import annotations

INPUT_NAMES = {"image": "pixels", "text": "tokens", "audio": "waveform",
               # The audio tower in two graphs, for embedding a whole track at once (README):
               "audio_trunk": "waveform", "audio_head": "features"}
OUTPUT_NAME = "embedding"
OUTPUT_NAMES = {"audio_trunk": "features"}  # every other graph outputs OUTPUT_NAME

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "OUTPUT_NAMES"]
