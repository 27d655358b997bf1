"""Music file -> mono float32 waveform at the model's rate -> fixed-length windows (no torch).

``load_audio`` decodes whatever libsndfile reads (WAV, FLAC, OGG, MP3, ...), mixes to mono,
resamples with soxr and turns every way that can fail into an ``InputError`` naming the file.
``windows`` cuts a track into the overlapping windows the library index embeds, with each
window's start time so a query can say where the best part of a track begins.

The waveform stays in [-1, 1]: the exported audio graph multiplies by ``int16_scale`` itself
(``AudioPreprocess.scaling_in_graph``), so no scaling happens here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError
from .manifest import AudioPreprocess

# Below this peak a track is digital silence (a 16-bit file's smallest step is 3e-5);
# embedding it would give a meaningless vector, so it is refused.
SILENCE_PEAK = 1e-6

_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class AudioInfo:
    """What the file's header says, without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int
    duration_seconds: float
    format: str


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")


def decode_info(path: str | Path) -> AudioInfo:
    """Header facts of an audio file (MP3 frame counts may be estimates)."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: not a readable audio file ({_first_line(exc)})") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), float(info.duration),
                     str(info.format))


def _first_line(exc: BaseException) -> str:
    # libsndfile messages can span lines; the CLI promises one line per error.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to a mono float32 [T] waveform in [-1, 1] at ``sample_rate`` Hz.

    Raises ``InputError`` if the file is missing, cannot be decoded, holds no samples,
    holds non-finite samples, or is silent.
    """
    path = Path(path)
    _check_file(path)
    try:
        data, sr_in = sf.read(str(path), dtype="float32", always_2d=True)
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: not a readable audio file ({_first_line(exc)})") from None
    if data.shape[0] == 0:
        raise InputError(f"{path}: audio file has no samples (zero length)")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise InputError(f"{path}: audio holds NaN or infinite samples (corrupt float file)")
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise InputError(f"{path}: audio is silent (every sample is zero)")
    if sr_in != sample_rate:
        wave = soxr.resample(np.ascontiguousarray(wave), sr_in, sample_rate, quality="HQ")
    # Float files may exceed full scale and resampling overshoots slightly near it; the model
    # maps [-1, 1] onto the int16 range, so keep the promise.
    return np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)


def _lengths(cfg: AudioPreprocess) -> tuple[int, int, int]:
    sr = cfg.sample_rate
    win, hop, min_len = round(cfg.window_seconds * sr), round(cfg.hop_seconds * sr), round(cfg.min_seconds * sr)
    if win <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive (got {cfg.window_seconds} s, {cfg.hop_seconds} s)")
    return win, hop, min_len


def window_starts(n_samples: int, cfg: AudioPreprocess) -> np.ndarray:
    """Start sample of each window ``windows`` would cut from a track of ``n_samples``.

    Useful on its own to embed windows in batches without materialising them all.
    Rules: a track no longer than one window gives one window at 0. Otherwise windows
    start at 0, hop, 2*hop, ... while they fit; if that leaves more than hop/2 of the
    tail uncovered, one more window ends exactly at the end of the track. A shorter
    uncovered tail (at most hop/2, often a fade-out) is dropped: a window for it would
    mostly repeat the previous one.
    """
    win, hop, _ = _lengths(cfg)
    if n_samples <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_samples <= win:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - win + 1, hop, dtype=np.int64)
    if n_samples - (starts[-1] + win) > hop / 2:
        starts = np.append(starts, n_samples - win)
    return starts


def windows(wave: np.ndarray, cfg: AudioPreprocess) -> tuple[np.ndarray, np.ndarray]:
    """Cut a mono waveform into windows: (float32 [W, L], float64 [W] start seconds).

    L = round(window_seconds * sample_rate). A track shorter than one window is ONE window
    holding the whole track, unpadded (the audio graph takes any length), except that a
    track shorter than ``min_seconds`` is zero-padded at the end up to it. An empty wave
    gives (0, L) and (0,). Windows are copies: memory is about window/hop times the track's.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"windows() takes a mono waveform [T], got shape {wave.shape}")
    wave = wave.astype(np.float32, copy=False)
    win, _, min_len = _lengths(cfg)
    n = wave.shape[0]
    starts = window_starts(n, cfg)
    if n == 0:
        return np.zeros((0, win), dtype=np.float32), np.zeros(0, dtype=np.float64)
    if n <= win:
        out = np.zeros((1, max(n, min_len)), dtype=np.float32)
        out[0, :n] = wave
    else:
        out = np.stack([wave[s:s + win] for s in starts])
    return out, starts.astype(np.float64) / cfg.sample_rate
