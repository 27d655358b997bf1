"""Manga page -> the float32 [3, S, S] tensor the image encoder takes (no torch).

``load_image`` turns a path, bytes, PIL image or uint8 array into an upright RGB image and
turns every way that can fail into an ``InputError`` naming the input. ``preprocess_image``
reproduces CLIP's torchvision pipeline (bicubic resize of the short side, centre crop,
[0, 1], mean/std) with PIL + numpy, and adds two page-friendly modes: ``letterbox`` (whole
page, white margins) and ``tiles`` (overlapping squares along the long axis).
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import InputError
from .manifest import ImagePreprocess

# Refuse pages above 100 megapixels before decoding: a 20000x20000 PNG is a few KB on disk
# and 1.2 GB in memory (a "decompression bomb"). Real scans are far below this.
MAX_PIXELS = 100_000_000

# Tiles mode embeds at most this many squares: a webtoon strip (1:30) gets 16 evenly
# spaced tiles rather than 30, and a 2000x1 "page" 16 rather than 2000 (2.3 GB of pixels).
MAX_TILES = 16
# Centre crop resizes the whole image only while the resized image stays below this many
# crops' worth of pixels; past it (extreme aspect ratios) only the crop's source region is
# resized, which gives (nearly) the same pixels without the 100-megapixel intermediate a
# 2000x1 image would need. Ordinary pages (aspect ratio up to 1:4) take the exact path.
_CROP_RESIZE_LIMIT = 4

MODES = ("center_crop", "letterbox", "tiles")
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}
_WHITE = 255  # manga pages are white paper: transparency and margins become white


# -- loading ------------------------------------------------------------------------------
def _describe(src: Any) -> str:
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def _check_size(img: Image.Image, name: str) -> None:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise InputError(f"{name}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels), "
                         f"over the {MAX_PIXELS / 1e6:.0f} megapixel limit")
    if w == 0 or h == 0:
        raise InputError(f"{name}: image is empty ({w}x{h})")


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise InputError(f"{name}: image array must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")
    raise InputError(f"{name}: image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")


def _decode(src: str | Path | bytes | bytearray | memoryview, name: str) -> Image.Image:
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.exists():
            raise InputError(f"{name}: no such file")
        if not path.is_file():
            raise InputError(f"{name}: not a file")
        fp: Any = path
    else:
        fp = io.BytesIO(bytes(src))
    try:
        with warnings.catch_warnings():
            # PIL warns from ~89 MP; our own limit below decides, so its warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            _check_size(img, name)  # header only so far: refuse before allocating pixels
            img.load()  # decode now, so corrupt or truncated data fails here, not later
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{name}: image is too large (decompression bomb guard)") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except MemoryError:
        raise InputError(f"{name}: image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error, ...
        raise InputError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    return img


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white paper."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit grayscale (16-bit PNG scans): PIL's own convert clips at 255, which would
        # make nearly everything white; scale the 16-bit range down instead.
        arr = np.asarray(img, dtype=np.float64)
        if mode != "F":
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(gray), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            paper = Image.new("RGBA", rgba.size, (_WHITE, _WHITE, _WHITE, 255))
            return Image.alpha_composite(paper, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"{name}: cannot convert colour mode {mode} to RGB ({exc})") from None


def _upright(img: Image.Image, name: str, owned: bool) -> Image.Image:
    """Apply the EXIF Orientation tag. Most pages have none (or 1): then the image is used
    as it is, not copied (Pillow's exif_transpose copies, 2.4 ms for a 1100x1600 scan).
    ``owned``: the image was decoded here, so it may be transposed in place."""
    try:
        # Phone photos and some scanners store pixels sideways plus an Orientation tag.
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (None, 1):
            return img
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
            return img
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF blocks raise all sorts
        raise InputError(f"{name}: unreadable EXIF data ({type(exc).__name__}: {exc})") from None


def _load_page(src: str | Path | bytes | Image.Image | np.ndarray) -> Image.Image:
    """``load_image`` that keeps 8-bit grayscale as ``L``: resizing one channel instead of
    three gives the same pixels (PIL resamples each band alike; L -> RGB copies the value
    into all three) at a third of the resizing cost, and many manga scans are grayscale."""
    name = _describe(src)
    if isinstance(src, Image.Image):
        _check_size(src, name)
        img = _upright(src, name, owned=False)
    elif isinstance(src, np.ndarray):
        img = _from_array(src, name)
        _check_size(img, name)
        img = _upright(img, name, owned=True)
    elif isinstance(src, (str, Path, bytes, bytearray, memoryview)):
        img = _upright(_decode(src, name), name, owned=True)
    else:
        raise InputError(f"cannot read an image from a {type(src).__name__}")
    if img.mode == "L" and "transparency" not in img.info:
        return img
    return _to_rgb(img, name)


def load_image(src: str | Path | bytes | Image.Image | np.ndarray) -> Image.Image:
    """Open a page as an upright RGB PIL image.

    ``src``: a file path, the encoded file's bytes, a PIL image, or a uint8 numpy array
    (HxW gray, HxWx3 RGB, HxWx4 RGBA). EXIF orientation is applied. Raises ``InputError``
    for a missing, unreadable, corrupt, truncated or oversized image.
    """
    img = _load_page(src)
    return img if img.mode == "RGB" else _to_rgb(img, _describe(src))


# -- preprocessing ------------------------------------------------------------------------
def _normalise(rgb: Image.Image, cfg: ImagePreprocess) -> np.ndarray:
    # Same arithmetic order and precision as torchvision's ToTensor + Normalize (float32).
    # A grayscale page (mode L) is one channel repeated: same values as its RGB conversion.
    x = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    if x.ndim == 2:
        x = x[:, :, None]
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def _resample(cfg: ImagePreprocess) -> int:
    try:
        return _RESAMPLE[cfg.interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {cfg.interpolation!r} (known: {', '.join(_RESAMPLE)})") from None


def _resize(img: Image.Image, size: tuple[int, int], cfg: ImagePreprocess) -> Image.Image:
    # PIL's resize antialiases when downscaling (its filter support grows with the scale),
    # which is what CLIP's torchvision Resize on PIL images does.
    return img if img.size == size else img.resize(size, _resample(cfg))


def _center_crop(img: Image.Image, cfg: ImagePreprocess) -> np.ndarray:
    s = cfg.size
    w, h = img.size
    # torchvision Resize(int): short side -> s, long side truncated (int), not rounded.
    if w <= h:
        new = (s, int(s * h / w))
    else:
        new = (int(s * w / h), s)
    # torchvision CenterCrop's offsets: Python round(), i.e. banker's rounding on .5.
    left = int(round((new[0] - s) / 2.0))
    top = int(round((new[1] - s) / 2.0))
    if new[0] * new[1] > _CROP_RESIZE_LIMIT * s * s:
        # Resize only the source region that lands in the crop: PIL's box argument keeps the
        # filter's support outside the box, so the pixels match a full resize + crop up to
        # fixed-point rounding (measured: at most 0.3 of a normalised unit at a few pixels).
        sx, sy = w / new[0], h / new[1]
        box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
        return _normalise(img.resize((s, s), _resample(cfg), box=box), cfg)
    img = _resize(img, new, cfg)
    return _normalise(img.crop((left, top, left + s, top + s)), cfg)


def _letterbox(img: Image.Image, cfg: ImagePreprocess) -> np.ndarray:
    s = cfg.size
    w, h = img.size
    scale = s / max(w, h)
    new = (max(1, min(s, round(w * scale))), max(1, min(s, round(h * scale))))
    img = _resize(img, new, cfg)
    canvas = Image.new(img.mode, (s, s), (_WHITE,) * len(img.getbands()))
    canvas.paste(img, ((s - new[0]) // 2, (s - new[1]) // 2))
    return _normalise(canvas, cfg)


def tile_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Square (left, top, right, bottom) boxes of side min(w, h) covering the page along
    its long axis: ceil(long / short) of them, evenly spaced, first and last flush with
    the page edges (so they overlap unless long is a multiple of short). At most
    ``MAX_TILES``: past that the squares are spread evenly and leave gaps between them."""
    short, long_ = min(width, height), max(width, height)
    n = min(math.ceil(long_ / short), MAX_TILES)
    starts = [0] if n == 1 else [round(i * (long_ - short) / (n - 1)) for i in range(n)]
    if width >= height:
        return [(x, 0, x + short, short) for x in starts]
    return [(0, y, short, y + short) for y in starts]


def preprocess_image(img: Any, cfg: ImagePreprocess, mode: str | None = None) -> np.ndarray:
    """One page -> float32 [3, S, S] (``center_crop``, ``letterbox``) or [T, 3, S, S] (``tiles``).

    ``img`` is anything ``load_image`` accepts. ``mode`` defaults to ``cfg.resize_mode``.
    """
    mode = mode or cfg.resize_mode
    rgb = _load_page(img)  # RGB, or L for grayscale pages (same result, a third of the work)
    if mode == "center_crop":
        return _center_crop(rgb, cfg)
    if mode == "letterbox":
        return _letterbox(rgb, cfg)
    if mode == "tiles":
        # Each tile is square, so center_crop only resizes it; the encoder averages tiles.
        return np.stack([_center_crop(rgb.crop(box), cfg) for box in tile_boxes(*rgb.size)])
    raise ValueError(f"unknown image mode {mode!r} (known: {', '.join(MODES)})")


def preprocess_images(items: Sequence[Any], cfg: ImagePreprocess, mode: str | None = None) -> np.ndarray:
    """A batch of pages -> float32 [N, 3, S, S]; an empty list gives shape (0, 3, S, S).

    Only for the one-tensor-per-page modes; ``tiles`` gives a varying count per page, so
    call ``preprocess_image`` per page for it.
    """
    mode = mode or cfg.resize_mode
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r} (known: {', '.join(MODES)})")
    if mode == "tiles":
        raise ValueError("preprocess_images does not batch 'tiles' (a page yields several); "
                         "use preprocess_image per page")
    out = np.empty((len(items), 3, cfg.size, cfg.size), dtype=np.float32)
    for i, item in enumerate(items):
        out[i] = preprocess_image(item, cfg, mode)
    return out
