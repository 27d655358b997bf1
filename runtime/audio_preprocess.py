"""Music file -> mono float32 waveform at the model's rate -> fixed-length windows (no torch).

``load_audio`` decodes whatever libsndfile reads (WAV, FLAC, OGG, MP3, ...), mixes to mono,
resamples with soxr and turns every way that can fail into an ``InputError`` naming the file.
``windows`` cuts a track into the overlapping windows the library index embeds, with each
window's start time so a query can say where the best part of a track begins.

Bounded work for hostile files: only regular files are opened (a FIFO or a link to
/dev/zero would never end); the file is decoded in blocks of at most ``_BLOCK_SAMPLES``
samples, each mixed to mono and resampled as a stream, so neither the channel count nor
the native rate multiplies memory; decoding stops after ``MAX_TRACK_SECONDS``; rates outside
[``MIN_SAMPLE_RATE``, ``MAX_SAMPLE_RATE``] are refused before any sample is read. Peak
memory is the output (at most MAX_TRACK_SECONDS x rate x 4 bytes, 159 MB at 44.1 kHz)
plus a few blocks of 4 MB (decoded, mixed, resampled), whatever the file claims.

``window_loudness_dbfs`` measures each window's RMS level so the encoder can skip windows
below ``LOUDNESS_FLOOR_DBFS`` (silence embeds to a meaningless vector that, in a real
collection, matched unrelated pages better than music did).

The waveform stays in [-1, 1]: the exported audio graph multiplies by ``int16_scale`` itself
(``AudioPreprocess.scaling_in_graph``), so no scaling happens here.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError, SilentAudioError, one_line
from .manifest import AudioPreprocess

# Below this peak a track is digital silence (a 16-bit file's smallest step is 3e-5);
# embedding it would give a meaningless vector, so it is refused.
SILENCE_PEAK = 1e-6
# A window quieter than this RMS level is not embedded. -60 dBFS is the noise floor of
# good analogue sources (tape hiss, vinyl rumble) and far below any passage meant to be
# heard at a normal listening level (quiet classical passages sit around -40 to -50 dBFS);
# the near-silent track that topped 7 of 12 demo pages in a real collection (Wesnoth's
# silence.ogg, peak 0.00012) sits near -80 dBFS, far below it.
LOUDNESS_FLOOR_DBFS = -60.0
# Decoding stops after this much audio: 15 minutes cover nearly every song whole, and
# bound a hostile or simply huge file (a 10-hour mix) to 159 MB of waveform at 44.1 kHz.
MAX_TRACK_SECONDS = 900.0
# Shorter than this, a "track" is a click: nothing to characterise (and a 1-frame file
# resampled down can come out empty).
MIN_TRACK_SECONDS = 0.05
# Real audio lives between telephone rates and 768 kHz DXD; a header claiming more is
# broken or hostile (resampling from it would be slow and meaningless).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
# Samples (frames x channels) decoded at a time: 4 MB of float32.
_BLOCK_SAMPLES = 1 << 20

_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, EOFError, MemoryError)


@dataclass(frozen=True)
class AudioInfo:
    """What the file's header says, without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int
    duration_seconds: float
    format: str


def check_regular_file(path: Path) -> os.stat_result:
    """stat ``path`` (following links) and refuse anything but a regular file, before any
    byte is read: a FIFO blocks forever, /dev/zero never ends, a folder is not a track."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:  # ELOOP (a link loop), EACCES on a parent folder, ...
        raise InputError(f"{path}: cannot stat ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: not a file (a folder)")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or
                stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not regular")
        raise InputError(f"{path}: not a regular file ({kind})")
    return st


def _check_file(path: Path) -> None:
    check_regular_file(path)


def decode_info(path: str | Path) -> AudioInfo:
    """Header facts of an audio file (MP3 frame counts may be estimates)."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: not a readable audio file ({why_unreadable(path, exc)})") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), float(info.duration),
                     str(info.format))


# libsndfile says this of a file it could open but not parse as MP3 (a text file named
# .mp3, an empty file): it has just been checked to exist and be regular, so the words mislead.
_MISLEADING = "does not exist or is not a regular file"


def _looks_like_text(head: bytes) -> bool:
    """True when a file's first bytes are text (UTF-8 without control characters other
    than whitespace), which no audio format's header is."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        text = head[:exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def why_unreadable(path: Path, exc: BaseException) -> str:
    """Why the decoder refused ``path``, in words that fit the file (one line)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        head = None
    if head == b"":
        return "the file is empty"
    if head is not None and _looks_like_text(head):
        return "it is a text file, not audio"
    text = one_line(exc)
    if _MISLEADING in text:
        return "libsndfile does not recognise its format"
    return text


class _Output:
    """A growing float32 buffer: starts at the header's size hint, grows geometrically,
    never past ``cap`` samples."""

    def __init__(self, hint: int, cap: int):
        self.cap = cap
        self.buf = np.empty(max(1, min(hint, cap)), dtype=np.float32)
        self.n = 0

    def add(self, x: np.ndarray) -> bool:
        """Append; False once the cap is reached (the rest of ``x`` is dropped)."""
        take = min(len(x), self.cap - self.n)
        if self.n + take > len(self.buf):
            grown = np.empty(min(self.cap, max(self.n + take, 2 * len(self.buf))), dtype=np.float32)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n:self.n + take] = x[:take]
        self.n += take
        return self.n < self.cap

    def result(self) -> np.ndarray:
        return self.buf[:self.n]


def _decode(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    with sf.SoundFile(str(path)) as f:
        sr_in, channels = int(f.samplerate), int(f.channels)
        if not MIN_SAMPLE_RATE <= sr_in <= MAX_SAMPLE_RATE:
            raise InputError(f"{path}: sample rate {sr_in} Hz is outside the {MIN_SAMPLE_RATE}-"
                             f"{MAX_SAMPLE_RATE} Hz this indexer reads")
        if channels < 1:
            raise InputError(f"{path}: audio file has no channels")
        frames_cap = int(math.ceil(max_seconds * sr_in))
        out_cap = int(math.ceil(max_seconds * sample_rate))
        # The header's frame count is a hint only (it can lie, and MP3's is an estimate).
        hint = int(min(max(f.frames, 0), frames_cap) * sample_rate / sr_in) + 64
        out = _Output(hint, out_cap)
        stream = (None if sr_in == sample_rate else
                  soxr.ResampleStream(sr_in, sample_rate, 1, dtype="float32", quality="HQ"))
        # A block is at most _BLOCK_SAMPLES samples both as decoded (all channels) and once
        # resampled (upsampling 8 kHz to 44.1 kHz multiplies it by 5.5).
        block = max(256, min(_BLOCK_SAMPLES // channels, int(_BLOCK_SAMPLES * sr_in / sample_rate)))
        read = 0
        while read < frames_cap:
            data = f.read(min(block, frames_cap - read), dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                break
            read += data.shape[0]
            mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
            if not np.all(np.isfinite(mono)):
                raise InputError(f"{path}: audio holds NaN or infinite samples (corrupt float file)")
            if not out.add(stream.resample_chunk(mono, last=False) if stream is not None else mono):
                break
        if stream is not None:
            out.add(stream.resample_chunk(np.zeros(0, np.float32), last=True))
        return out.result(), read / sr_in


def load_audio(path: str | Path, sample_rate: int, max_seconds: float = MAX_TRACK_SECONDS) -> np.ndarray:
    """Decode ``path`` to a mono float32 [T] waveform in [-1, 1] at ``sample_rate`` Hz.

    At most ``max_seconds`` are decoded (the rest of a longer file is ignored). Raises
    ``InputError`` if the file is missing or not a regular file, cannot be decoded, holds
    no samples or less than ``MIN_TRACK_SECONDS``, holds non-finite samples, has an
    implausible sample rate; ``SilentAudioError`` (an ``InputError``) if it is silent.
    """
    path = Path(path)
    _check_file(path)
    try:
        wave, seconds_read = _decode(path, sample_rate, max_seconds)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: audio too large to decode in memory") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: not a readable audio file ({why_unreadable(path, exc)})") from None
    if seconds_read == 0:
        raise InputError(f"{path}: audio file has no samples (zero length)")
    if wave.shape[0] < MIN_TRACK_SECONDS * sample_rate:
        raise InputError(f"{path}: audio is {seconds_read:.5f} s long, shorter than the {MIN_TRACK_SECONDS} s minimum")
    # max/min rather than abs(): no temporary copy of a waveform that may be 159 MB
    if max(float(wave.max()), -float(wave.min())) < SILENCE_PEAK:
        raise SilentAudioError(f"{path}: audio is silent (every sample is zero)")
    # Float files may exceed full scale and resampling overshoots slightly near it; the model
    # maps [-1, 1] onto the int16 range, so keep the promise.
    return np.clip(wave, -1.0, 1.0, out=wave)


def window_loudness_dbfs(wave: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """RMS level in dBFS (0 = a full-scale square wave) of ``wave[s:s + length]`` for each
    start sample; an all-zero window is -inf. Only real samples count (no padding)."""
    out = np.empty(len(starts), dtype=np.float64)
    for i, s in enumerate(np.asarray(starts, dtype=np.int64)):
        w = np.asarray(wave[s:s + length], dtype=np.float64)
        ms = float(np.dot(w, w)) / max(len(w), 1)
        out[i] = 10.0 * math.log10(ms) if ms > 0 else -math.inf
    return out


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
