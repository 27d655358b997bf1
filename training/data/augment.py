"""Training-time augmentations: the AudioCLIP audio recipe and the page image transforms.

Audio transforms are small frozen dataclasses called as ``t(wave, rng)`` on a mono float
numpy waveform in [-1, 1] with an explicit ``np.random.Generator``: the same seed gives the
same result, and no transform touches a global random state. The published recipe
(AudioCLIP protocols, reused by the seed paper) is, in order:

    random flip (p 0.5) -> random time scale (up to 1.5x) -> pad / crop to 5 s
    -> random noise at 10-120 dB SNR (p 0.25)

and at evaluation only a centred pad / crop. The int16 value scaling the model needs is
applied by the data set after these (SNR and flips do not care about scale).

Image transforms take a PIL image (and an rng where they are random) and return a float32
CHW numpy array; the data set turns it into a tensor. This module imports no torch except
lazily in `item_rng`, whose fallback draws a seed from torch's per-worker generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from PIL import Image

from runtime.manifest import AudioPreprocess, ImagePreprocess

AudioTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _as_wave(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape [T], got shape {x.shape}")
    return x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class RandomFlip:
    """Time reversal with probability p.

    Choice: *time reversal*, not polarity inversion. AudioCLIP's RandomFlip flips the last
    (time) axis of a batch; on a single clip it flips axis 0, which for its (1, T) mono clips
    is the channel axis, i.e. a silent no-op. The evident intent, and what later libraries
    cite AudioCLIP for ("time inversion"), is reversal in time; polarity inversion would be
    pointless anyway, since the model only sees power spectra, which a sign flip leaves
    unchanged. Set p=0 to reproduce the reference's effective behaviour exactly.
    """

    p: float = 0.5

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _as_wave(x)
        if rng.random() < self.p:
            return np.ascontiguousarray(x[::-1])
        return x


@dataclass(frozen=True)
class RandomTimeScale:
    """Resample by a factor max_scale ** U(-1, 1) with linear interpolation.

    This changes length (and pitch, like playing faster or slower), as in the recipe; a
    `PadOrCrop` after it restores the fixed length.
    """

    max_scale: float = 1.5

    def __post_init__(self) -> None:
        if self.max_scale < 1.0:
            raise ValueError(f"max_scale must be >= 1, got {self.max_scale}")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _as_wave(x)
        factor = self.max_scale ** rng.uniform(-1.0, 1.0)
        n_out = max(int(len(x) * factor), 1)
        if len(x) < 2:
            return np.resize(x, n_out).astype(np.float32)
        # Output sample i reads the input at time i / factor.
        src = np.minimum(np.arange(n_out, dtype=np.float64) / factor, len(x) - 1)
        return np.interp(src, np.arange(len(x)), x).astype(np.float32)


@dataclass(frozen=True)
class PadOrCrop:
    """Bring a waveform to exactly `length` samples.

    Training: a random offset for both padding and cropping. Evaluation: centred. Padding is
    zeros (silence) rather than the reference's repeated edge value: for audio the edge value
    is ~0 anyway, and a constant offset is a DC step that the power spectrum would see.
    A random crop that lands in a quiet stretch (RMS under `quiet_ratio` of the whole clip's)
    is redrawn up to `retries` times, keeping the loudest: the reference guards against
    silent crops the same way, since a silent 5 s window carries no mood.
    """

    length: int
    train: bool = True
    retries: int = 3
    quiet_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")

    def __call__(self, x: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        x = _as_wave(x)
        n = len(x)
        if n == self.length:
            return x
        if n < self.length:
            extra = self.length - n
            left = int(rng.integers(0, extra + 1)) if self.train else extra // 2
            out = np.zeros(self.length, dtype=np.float32)
            out[left : left + n] = x
            return out
        extra = n - self.length
        if not self.train:
            left = extra // 2
            return x[left : left + self.length]
        whole = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        best_left, best_rms = 0, -1.0
        for _ in range(1 + max(self.retries, 0)):
            left = int(rng.integers(0, extra + 1))
            rms = float(np.sqrt(np.mean(np.square(x[left : left + self.length], dtype=np.float64))))
            if rms > best_rms:
                best_left, best_rms = left, rms
            if rms >= self.quiet_ratio * whole:
                break
        return x[best_left : best_left + self.length]


def add_noise_at_snr(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise whose power is exactly signal power / 10^(snr_db/10).

    The drawn noise is rescaled to the target power (rather than drawn with the target
    variance), so the realised SNR equals the requested one, not merely on average.
    A silent signal has no defined SNR and is returned unchanged.
    """
    x = _as_wave(x)
    p_signal = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    if p_signal == 0.0:
        return x
    noise = rng.standard_normal(len(x))
    p_noise = float(np.mean(np.square(noise)))
    if p_noise == 0.0:
        return x
    noise *= math.sqrt(p_signal / 10.0 ** (snr_db / 10.0) / p_noise)
    return (x + noise).astype(np.float32)


@dataclass(frozen=True)
class RandomNoise:
    """With probability p, add white noise at an SNR drawn uniformly from snr_db (dB)."""

    snr_db: tuple[float, float] = (10.0, 120.0)
    p: float = 0.25

    def __post_init__(self) -> None:
        lo, hi = self.snr_db
        if lo > hi:
            raise ValueError(f"snr_db must be (low, high), got {self.snr_db}")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _as_wave(x)
        if rng.random() >= self.p:
            return x
        return add_noise_at_snr(x, rng.uniform(*self.snr_db), rng)


@dataclass(frozen=True)
class Compose:
    """Apply audio transforms in order, all drawing from the one generator given."""

    transforms: tuple[AudioTransform, ...] = field(default_factory=tuple)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _as_wave(x)
        for t in self.transforms:
            x = t(x, rng)
        return x


# The recipe trains on 5 s clips (220,500 samples at 44.1 kHz).
CLIP_SECONDS = 5.0


def clip_length(sample_rate: int = AudioPreprocess.sample_rate, clip_seconds: float = CLIP_SECONDS) -> int:
    return int(round(sample_rate * clip_seconds))


def audio_train_augment(
    sample_rate: int = AudioPreprocess.sample_rate, clip_seconds: float = CLIP_SECONDS
) -> Compose:
    """The published training recipe, at the model's sample rate and 5 s clips."""
    length = clip_length(sample_rate, clip_seconds)
    return Compose(
        (
            RandomFlip(p=0.5),
            RandomTimeScale(max_scale=1.5),
            PadOrCrop(length, train=True),
            RandomNoise(snr_db=(10.0, 120.0), p=0.25),
        )
    )


def audio_eval_transform(
    sample_rate: int = AudioPreprocess.sample_rate, clip_seconds: float = CLIP_SECONDS
) -> Compose:
    """Evaluation: only a centred pad / crop to the clip length."""
    length = clip_length(sample_rate, clip_seconds)
    return Compose((PadOrCrop(length, train=False),))


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True)
class PageAwareCrop:
    """A random square of a page, so training sees whole panels rather than the gutter.

    Manga109 images are mostly double-page spreads (~1654 x 1170). CLIP's centre crop of a
    spread keeps its middle, i.e. half of each page around the binding; a square of side
    `short side` slid to a random position along the long axis shows a whole page (or a
    panel-rich strip) instead. With min_scale < 1 the side is drawn from
    [min_scale, 1] x short side and the position is random on both axes.
    """

    min_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 < self.min_scale <= 1.0):
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the square to keep."""
        short = min(width, height)
        side = short if self.min_scale == 1.0 else max(1, int(round(short * rng.uniform(self.min_scale, 1.0))))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        return left, top, left + side, top + side

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return img.crop(self.box(img.width, img.height, rng))


_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def clip_preprocess(img: Image.Image, pre: ImagePreprocess = ImagePreprocess()) -> np.ndarray:
    """CLIP's evaluation transform: short side to `size` (bicubic), centre crop, normalise.

    Returns float32 [3, size, size]. Uses the runtime's implementation, so a page is
    prepared identically for training and for serving; `_clip_preprocess_fallback` only
    stands in while runtime.image_preprocess is absent (parallel development).
    """
    try:
        from runtime.image_preprocess import preprocess_image
    except ModuleNotFoundError as e:
        if e.name != "runtime.image_preprocess":
            raise
        return _clip_preprocess_fallback(img, pre)
    return preprocess_image(img, pre, "center_crop")


def _clip_preprocess_fallback(img: Image.Image, pre: ImagePreprocess) -> np.ndarray:
    if pre.resize_mode != "center_crop":
        raise ValueError(f"unsupported resize_mode {pre.resize_mode!r}")
    img = img.convert("RGB")
    w, h = img.size
    # Sizes and offsets computed as torchvision's Resize(int) + CenterCrop do (CLIP's own
    # pipeline): short side exactly `size`, long side truncated, crop offsets rounded.
    if w <= h:
        new_w, new_h = pre.size, int(pre.size * h / w)
    else:
        new_w, new_h = int(pre.size * w / h), pre.size
    img = img.resize((new_w, new_h), _RESAMPLE[pre.interpolation])
    left = int(round((new_w - pre.size) / 2.0))
    top = int(round((new_h - pre.size) / 2.0))
    img = img.crop((left, top, left + pre.size, top + pre.size))
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageTransform:
    """Page image -> float32 CHW array: optional page-aware crop, then CLIP's transform.

    Called as ``t(img, rng)``; rng is only needed when `page_crop` is set (training).
    """

    pre: ImagePreprocess = ImagePreprocess()
    page_crop: Optional[PageAwareCrop] = None

    def __call__(self, img: Image.Image, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        if self.page_crop is not None:
            if rng is None:
                raise ValueError("page_aware crop needs an rng")
            img = self.page_crop(img, rng)
        return clip_preprocess(img, self.pre)


def image_train_transform(page_aware_crop: bool = True, pre: ImagePreprocess = ImagePreprocess()) -> ImageTransform:
    return ImageTransform(pre, PageAwareCrop() if page_aware_crop else None)


def image_eval_transform(pre: ImagePreprocess = ImagePreprocess()) -> ImageTransform:
    return ImageTransform(pre, None)


# ---------------------------------------------------------------------------- rng


def item_rng(seed: Optional[int], epoch: int, index: int) -> np.random.Generator:
    """The generator for one item of one epoch.

    With a seed: a pure function of (seed, epoch, index), reproducible whatever the worker
    layout. Without: a seed drawn from torch's generator, which DataLoader seeds per worker
    and per epoch, so workers do not repeat each other's augmentations (numpy's global state
    would be copied identically into every forked worker).
    """
    if seed is None:
        import torch  # lazily: only the data set path needs it

        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


__all__ = [
    "AudioTransform",
    "RandomFlip",
    "RandomTimeScale",
    "PadOrCrop",
    "RandomNoise",
    "Compose",
    "add_noise_at_snr",
    "audio_train_augment",
    "audio_eval_transform",
    "CLIP_SECONDS",
    "clip_length",
    "PageAwareCrop",
    "ImageTransform",
    "clip_preprocess",
    "image_train_transform",
    "image_eval_transform",
    "item_rng",
]
