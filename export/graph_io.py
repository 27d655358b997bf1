"""The names the exported graphs give their input and output, shared by the exporter that
writes them, the quantiser that feeds them and the parity report that runs them."""
from __future__ import annotations

INPUT_NAMES = {"image": "pixels", "text": "tokens", "audio": "waveform"}
OUTPUT_NAME = "embedding"

__all__ = ["INPUT_NAMES", "OUTPUT_NAME"]
