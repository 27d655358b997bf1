"""Audio augmentation recipe and page image transforms: shapes, determinism, exact SNR."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from runtime.manifest import ImagePreprocess
from training.data import augment as A


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tone(n: int = 8000, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / 8000.0
    noise = np.random.default_rng(seed).standard_normal(n) * 0.01
    return (0.4 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def test_flip_reverses_time() -> None:
    x = _tone()
    np.testing.assert_array_equal(A.RandomFlip(p=1.0)(x, _rng()), x[::-1])
    np.testing.assert_array_equal(A.RandomFlip(p=0.0)(x, _rng()), x)
    flips = [bool(np.array_equal(A.RandomFlip(0.5)(x, _rng(s)), x[::-1])) for s in range(40)]
    assert 8 < sum(flips) < 32  # p 0.5, not always and not never


def test_time_scale_length_and_interpolation() -> None:
    x = _tone(4000)
    lengths = set()
    for s in range(30):
        y = A.RandomTimeScale(1.5)(x, _rng(s))
        assert y.dtype == np.float32 and 4000 / 1.5 - 1 <= len(y) <= 4000 * 1.5
        lengths.add(len(y) > 4000)
    assert lengths == {True, False}  # both stretched and squeezed
    ramp = np.linspace(0, 1, 1000, dtype=np.float32)
    y = A.RandomTimeScale(1.5)(ramp, _rng(3))
    assert np.all(np.diff(y) >= 0) and y[0] == 0.0 and abs(y[-1] - 1.0) < 0.01  # linear interpolation
    np.testing.assert_array_equal(A.RandomTimeScale(1.0)(x, _rng()), x)
    with pytest.raises(ValueError):
        A.RandomTimeScale(0.5)


def test_pad_or_crop() -> None:
    x = np.arange(10, dtype=np.float32) + 1
    np.testing.assert_array_equal(A.PadOrCrop(4, train=False)(x), x[3:7])
    np.testing.assert_array_equal(A.PadOrCrop(14, train=False)(x), np.r_[0, 0, x, 0, 0])
    starts = set()
    for s in range(30):
        y = A.PadOrCrop(4, train=True)(x, _rng(s))
        assert len(y) == 4 and y.dtype == np.float32
        starts.add(int(y[0]))
        z = A.PadOrCrop(14, train=True)(x, _rng(s))
        assert len(z) == 14 and np.array_equal(z[z != 0], x)
    assert len(starts) > 3


def test_random_crop_avoids_silence() -> None:
    x = np.zeros(1000, dtype=np.float32)
    x[800:] = 1.0  # only the last fifth is sound
    whole = np.sqrt(np.mean(x**2))
    for s in range(10):
        y = A.PadOrCrop(200, train=True, retries=50)(x, _rng(s))
        assert np.sqrt(np.mean(y**2)) >= 0.5 * whole


@pytest.mark.parametrize("snr", [10.0, 37.5, 80.0, 120.0])
def test_noise_snr_is_exact(snr: float) -> None:
    x = _tone(22050)
    for s in range(3):
        y = A.add_noise_at_snr(x, snr, _rng(s))
        assert y.dtype == np.float32 and y.shape == x.shape
        noise = y.astype(np.float64) - x
        realised = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
        assert abs(realised - snr) < 1.0


def test_random_noise_probability_and_range() -> None:
    x = _tone()
    np.testing.assert_array_equal(A.RandomNoise(p=0.0)(x, _rng()), x)
    for s in range(10):
        y = A.RandomNoise(snr_db=(10.0, 120.0), p=1.0)(x, _rng(s))
        noise = y.astype(np.float64) - x
        realised = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
        assert 9.0 <= realised <= 121.0
    applied = [not np.array_equal(A.RandomNoise(p=0.25)(x, _rng(s)), x) for s in range(200)]
    assert 25 < sum(applied) < 75
    silent = np.zeros(100, dtype=np.float32)
    np.testing.assert_array_equal(A.add_noise_at_snr(silent, 20.0, _rng()), silent)


def test_recipe_fixed_length_and_deterministic() -> None:
    aug = A.audio_train_augment(sample_rate=8000, clip_seconds=0.5)
    assert [type(t).__name__ for t in aug.transforms] == ["RandomFlip", "RandomTimeScale", "PadOrCrop", "RandomNoise"]
    for n in (1000, 4000, 12000):
        x = _tone(n)
        y = aug(x, _rng(5))
        assert y.shape == (4000,) and y.dtype == np.float32
        np.testing.assert_array_equal(y, aug(x, _rng(5)))
        assert not np.array_equal(y, aug(x, _rng(6)))
    ev = A.audio_eval_transform(sample_rate=8000, clip_seconds=0.5)
    np.testing.assert_array_equal(ev(_tone(12000), _rng(1)), _tone(12000)[4000:8000])
    assert A.clip_length() == 220500  # the recipe's 5 s at 44.1 kHz
    with pytest.raises(ValueError, match="mono"):
        aug(np.zeros((2, 100), dtype=np.float32), _rng())


def test_item_rng() -> None:
    a = A.item_rng(1, 0, 5).random(3)
    np.testing.assert_array_equal(a, A.item_rng(1, 0, 5).random(3))
    assert not np.array_equal(a, A.item_rng(1, 0, 6).random(3))
    assert not np.array_equal(a, A.item_rng(1, 1, 5).random(3))
    assert isinstance(A.item_rng(None, 0, 0), np.random.Generator)


# ---------------------------------------------------------------------------- images


def test_clip_preprocess_normalises() -> None:
    pre = ImagePreprocess()
    x = A.clip_preprocess(Image.new("RGB", (331, 234), (128, 64, 200)), pre)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = (np.array([128, 64, 200]) / 255.0 - np.array(pre.mean)) / np.array(pre.std)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=1e-5)


def test_fallback_matches_runtime_preprocess() -> None:
    pytest.importorskip("runtime.image_preprocess")
    arr = np.random.default_rng(0).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    pre = ImagePreprocess()
    np.testing.assert_allclose(A._clip_preprocess_fallback(img, pre), A.clip_preprocess(img, pre), atol=1e-6)


def test_page_aware_crop_spread_and_portrait() -> None:
    crop = A.PageAwareCrop()
    lefts = set()
    for s in range(20):
        box = crop.box(1654, 1170, _rng(s))
        left, top, right, bottom = box
        assert (right - left, bottom - top, top) == (1170, 1170, 0) and 0 <= left <= 1654 - 1170
        lefts.add(left)
        assert box == crop.box(1654, 1170, _rng(s))
    assert len(lefts) > 10  # it slides along the spread
    tops = {crop.box(800, 1200, _rng(s))[1] for s in range(20)}
    assert max(tops) <= 400 and len(tops) > 5
    small = A.PageAwareCrop(min_scale=0.5)
    for s in range(20):
        l, t, r, b = small.box(300, 200, _rng(s))
        assert 100 <= r - l == b - t <= 200 and r <= 300 and b <= 200
    with pytest.raises(ValueError):
        A.PageAwareCrop(min_scale=0.0)


def test_image_transforms() -> None:
    spread = Image.new("RGB", (330, 234), (255, 255, 255))
    spread.paste((0, 0, 0), (0, 0, 96, 234))  # a dark left page edge
    train = A.image_train_transform(page_aware_crop=True)
    outs = [train(spread, _rng(s)) for s in range(8)]
    assert all(o.shape == (3, 224, 224) and o.dtype == np.float32 for o in outs)
    np.testing.assert_array_equal(outs[0], train(spread, _rng(0)))
    assert len({round(float(o.mean()), 3) for o in outs}) > 1  # different squares of the spread
    with pytest.raises(ValueError, match="rng"):
        train(spread)
    ev = A.image_eval_transform()
    np.testing.assert_array_equal(ev(spread), A.clip_preprocess(spread))
