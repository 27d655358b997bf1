"""Encoders (runtime/encoders.py): lazy sessions, batching, normalisation, tiles, tracks."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import runtime_fixtures as rf
from runtime_fixtures import world  # noqa: F401  (session fixture)

from runtime.audio_preprocess import load_audio, window_starts
from runtime.encoders import Encoders, batched, l2_normalise
from runtime.errors import InputError
from runtime.image_preprocess import preprocess_image


@pytest.fixture(scope="module")
def enc(world):  # noqa: F811
    return Encoders(world.bundle, device="cpu", precision="fp32", threads=1)


def _unit(x):
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_sessions_are_created_lazily_per_modality(world):  # noqa: F811
    e = Encoders(world.bundle, device="cpu", threads=1)
    assert e.loaded == ()
    e.embed_images([world.pages["tall"]])
    assert e.loaded == ("image",)  # no text or audio graph was read
    e.embed_texts(["sad piano"])
    assert e.loaded == ("image", "text")
    assert e.encoder("image").encoder.precision == "int8"  # auto on CPU


def test_empty_inputs_give_zero_by_d_without_loading_anything(world):  # noqa: F811
    e = Encoders(world.bundle, device="cpu", threads=1)
    for out in (e.embed_images([]), e.embed_texts([]), e.embed_audio([])):
        assert out.shape == (0, rf.EMBED_DIM) and out.dtype == np.float32
    assert e.loaded == ()


def test_images_of_every_kind_embed_to_unit_rows(enc, world):  # noqa: F811
    pages = list(world.pages.values())
    pil = Image.open(world.pages["tall"])
    arr = np.asarray(Image.open(world.pages["spread"]).convert("RGB"))
    out = enc.embed_images(pages + [pil, arr, world.pages["gray"].read_bytes()])
    assert out.shape == (len(pages) + 3, rf.EMBED_DIM) and out.dtype == np.float32
    assert _unit(out)
    assert np.allclose(out[0], out[len(pages)], atol=1e-6)  # path and PIL image agree
    assert np.allclose(out[2], out[len(pages) + 1], atol=1e-6)  # path and uint8 array agree
    assert np.allclose(out[1], out[len(pages) + 2], atol=1e-6)  # path and bytes agree
    # distinct pages give distinct embeddings
    assert len({tuple(np.round(r, 4)) for r in out[:len(pages)]}) == len(pages)


def test_one_page_on_its_own_is_one_embedding(enc, world):  # noqa: F811
    rgb = np.asarray(Image.open(world.pages["spread"]).convert("RGB"))
    grey = np.asarray(Image.open(world.pages["gray"]).convert("L"))
    pixels = preprocess_image(world.pages["tall"], enc.bundle.manifest.image)
    for page in (rgb, grey, pixels, world.pages["tall"], Image.open(world.pages["tall"])):
        one = enc.embed_images(page)
        assert one.shape == (1, rf.EMBED_DIM), type(page)  # not one row per pixel row
        np.testing.assert_allclose(one, enc.embed_images([page]), atol=1e-6)
    # a stack of pages is still a batch
    assert enc.embed_images(np.stack([rgb, rgb])).shape == (2, rf.EMBED_DIM)
    assert enc.embed_images(np.stack([pixels, pixels])).shape == (2, rf.EMBED_DIM)


def test_image_embedding_is_the_graph_output_normalised(enc, world):  # noqa: F811
    cfg = enc.bundle.manifest.image
    pixels = preprocess_image(world.pages["tall"], cfg)
    sess = ort.InferenceSession(str(world.bundle / "image.fp32.onnx"), providers=["CPUExecutionProvider"])
    raw = sess.run(None, {"pixels": pixels[None]})[0]
    assert not np.allclose(np.linalg.norm(raw), 1.0)  # the graph itself does not normalise
    np.testing.assert_allclose(enc.embed_images([world.pages["tall"]]), l2_normalise(raw), atol=1e-6)
    # preprocessed float pixels are accepted as they are
    np.testing.assert_allclose(enc.embed_images([pixels]), l2_normalise(raw), atol=1e-6)


def test_batch_size_does_not_change_results(enc, world):  # noqa: F811
    pages = list(world.pages.values())
    a = enc.embed_images(pages, batch_size=1)
    b = enc.embed_images(pages, batch_size=4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    texts = [f"music number {i}" for i in range(7)]
    np.testing.assert_allclose(enc.embed_texts(texts, batch_size=2), enc.embed_texts(texts, batch_size=32), atol=1e-5)


def test_modes_keep_more_of_a_tall_page(enc, world):  # noqa: F811
    page = world.pages["spread"]  # 180x90: centre crop drops half of it
    crop, box = enc.embed_images([page]), enc.embed_images([page], mode="letterbox")
    tiles = enc.embed_images([page], mode="tiles")
    assert not np.allclose(crop, box, atol=1e-3)
    # tiles = normalised mean of the per-tile unit embeddings
    cfg = enc.bundle.manifest.image
    per_tile = enc.embed_images(list(preprocess_image(page, cfg, "tiles")))
    assert per_tile.shape[0] == 2
    np.testing.assert_allclose(tiles[0], l2_normalise(per_tile.mean(0, keepdims=True))[0], atol=1e-5)
    assert _unit(tiles)


def test_texts(enc):
    out = enc.embed_texts(["sad piano", "Sad piano!", "battle anthem"])
    assert out.shape == (3, rf.EMBED_DIM) and _unit(out)
    assert not np.allclose(out[0], out[2])
    np.testing.assert_allclose(enc.embed_texts("sad piano")[0], out[0], atol=1e-6)
    with pytest.raises(InputError, match="not a string"):
        enc.embed_texts(["ok", 3])


def test_track_windows_starts_and_pooled(enc, world):  # noqa: F811
    cfg = enc.bundle.manifest.audio
    path = world.tracks["square"]  # 6 s mp3 at 44.1 kHz; windows of 2 s every 1 s
    te = enc.embed_track(path)
    wave = load_audio(path, cfg.sample_rate)
    expected_starts = window_starts(len(wave), cfg) / cfg.sample_rate
    np.testing.assert_allclose(te.starts, expected_starts)
    assert te.windows.shape == (len(expected_starts), rf.EMBED_DIM) and len(expected_starts) >= 4
    assert _unit(te.windows)
    np.testing.assert_allclose(te.pooled, l2_normalise(te.windows.mean(0, keepdims=True))[0], atol=1e-6)
    assert te.duration == pytest.approx(len(wave) / cfg.sample_rate)
    # windows of one track differ (the envelope swells), so "best start" is meaningful
    assert np.ptp(te.windows @ te.pooled) > 1e-3
    # batching windows does not change them
    np.testing.assert_allclose(enc.embed_track(path, batch_size=1).windows, te.windows, atol=1e-5)


def test_audio_paths_and_waveforms_agree(enc, world):  # noqa: F811
    sr = enc.bundle.manifest.audio.sample_rate
    paths = [world.tracks["sine_stereo"], world.tracks["noise"], world.tracks["short"]]
    from_paths = enc.embed_audio(paths)
    from_waves = enc.embed_audio([load_audio(p, sr) for p in paths])
    assert from_paths.shape == (3, rf.EMBED_DIM) and _unit(from_paths)
    np.testing.assert_allclose(from_paths, from_waves, atol=1e-6)
    single = enc.embed_audio(load_audio(paths[0], sr))  # a lone 1-D array is one track
    np.testing.assert_allclose(single[0], from_paths[0], atol=1e-6)
    short = enc.embed_track(world.tracks["short"])  # 0.3 s: one padded window
    assert short.windows.shape[0] == 1 and short.starts.tolist() == [0.0]


def test_bad_audio_raises_input_error(enc, world):  # noqa: F811
    for key in ("silent_audio", "empty_audio", "text_as_mp3"):
        with pytest.raises(InputError, match=str(world.bad[key].name)):
            enc.embed_audio([world.bad[key]])
    with pytest.raises(InputError, match="mono"):
        enc.embed_audio([np.zeros((2, 100), np.float32)])


def test_int8_stays_close_to_fp32(world):  # noqa: F811
    fp32 = Encoders(world.bundle, device="cpu", precision="fp32", threads=1)
    int8 = Encoders(world.bundle, device="cpu", precision="int8", threads=1)
    pages = list(world.pages.values())
    cos = np.sum(fp32.embed_images(pages) * int8.embed_images(pages), axis=1)
    assert cos.min() > 0.95


def test_batched_is_lazy_and_complete():
    seen = []

    def gen():
        for i in range(7):
            seen.append(i)
            yield i

    it = batched(gen(), 3)
    assert next(it) == [0, 1, 2] and seen == [0, 1, 2]
    assert list(it) == [[3, 4, 5], [6]]
    with pytest.raises(ValueError):
        next(batched([1], 0))
