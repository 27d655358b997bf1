"""Structure of the model at toy size: shapes, variable audio length, the FBSP front end."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.model import AudioCLIP, AudioCLIPConfig  # noqa: E402
from training.model.fbsp import LinearFBSP, blackman_harris, frame_signal  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AudioCLIP(AudioCLIPConfig.tiny()).eval()


def test_encoders_shapes(tiny):
    cfg = tiny.config
    with torch.no_grad():
        assert tiny.encode_image(torch.randn(2, 3, cfg.image.resolution, cfg.image.resolution)).shape == (2, cfg.embed_dim)
        tokens = torch.zeros(3, 77, dtype=torch.long)
        tokens[:, 0], tokens[:, 3] = 49406, 49407
        assert tiny.encode_text(tokens).shape == (3, cfg.embed_dim)
        for seconds in (1.0, 2.5, 5.0):
            wave = torch.randn(2, int(seconds * 44100)) * 3000
            assert tiny.encode_audio(wave).shape == (2, cfg.embed_dim)


def test_text_reads_out_at_end_token(tiny):
    """Tokens after the end token cannot change the output (causal mask + end-token readout)."""
    a = torch.zeros(1, 77, dtype=torch.long)
    a[0, :4] = torch.tensor([49406, 320, 1125, 49407])
    b = a.clone()
    b[0, 10] = 500  # after the end token; argmax still finds position 3
    with torch.no_grad():
        assert torch.allclose(tiny.encode_text(a), tiny.encode_text(b), atol=1e-6)


def test_config_roundtrip_and_inference(tiny):
    cfg = tiny.config
    assert AudioCLIPConfig.from_dict(cfg.to_dict()) == cfg
    inferred = AudioCLIPConfig.from_state_dict(tiny.state_dict())
    # Heads are not stored in weights; everything else is recovered.
    assert inferred.embed_dim == cfg.embed_dim
    assert inferred.image.layers == cfg.image.layers and inferred.image.width == cfg.image.width
    assert inferred.image.resolution == cfg.image.resolution
    assert (inferred.audio.groups, inferred.audio.width_per_group, inferred.audio.base_planes) == (
        cfg.audio.groups, cfg.audio.width_per_group, cfg.audio.base_planes)


def test_blackman_harris_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    ours = blackman_harris(1654)
    ref = signal.get_window("blackmanharris", 1654, fftbins=True)
    assert np.abs(ours - ref).max() < 1e-6


@pytest.mark.parametrize("samples", [100, 1654, 1655, 88200, 220500])
def test_frame_signal_counts_and_padding(samples):
    x = torch.arange(1, samples + 1, dtype=torch.float32)[None]
    frames = frame_signal(x, 1654, 561)
    expected = 1 if samples <= 1654 else 1 + math.ceil((samples - 1654) / 561)
    assert frames.shape == (1, expected, 1654)
    pad = (expected - 1) * 561 + 1654 - samples
    # Half the padding (rounded down) goes in front: the first real sample sits at index pad // 2.
    flat = frames[0, 0]
    assert flat[: pad // 2].eq(0).all() and flat[pad // 2] == 1 if pad // 2 < 1654 else True


def test_fbsp_at_init_is_a_scaled_dft():
    fbsp = LinearFBSP(1025)
    re, im = (w.detach() for w in fbsp.weights(2048))
    t = np.pi * np.linspace(-1, 1, 2048)
    f = np.arange(1025)[:, None]
    assert np.allclose(re.numpy(), np.cos(f * t) / math.sqrt(2048), atol=2e-4)
    assert np.allclose(im.numpy(), -np.sin(f * t) / math.sqrt(2048), atol=2e-4)
    # Unit-norm filters, so the regulariser is ~0 at init.
    assert fbsp.regulariser(2048).item() < 1e-4


def test_audio_expects_int16_range(tiny):
    """A [-1,1] signal fed unscaled is ~90 dB quieter in the spectrogram than the same x32768."""
    wave = torch.sin(torch.linspace(0, 2000, 44100))[None] * 0.5
    with torch.no_grad():
        loud = tiny.audio.spectrogram(wave * 32768)
        quiet = tiny.audio.spectrogram(wave)
    # Compare at the tone's own bin: the int16->[-1,1] map adds a DC offset of ~1.5e-5 that
    # dominates elsewhere once the signal itself is that small.
    peak = loud.mean(-1).flatten().argmax()
    drop = (loud.mean(-1).flatten()[peak] - quiet.mean(-1).flatten()[peak]).item()
    assert 88 < drop < 92, drop  # 20 log10(32768) = 90.3 dB
