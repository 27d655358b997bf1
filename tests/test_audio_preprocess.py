"""Audio decoding, mono mix, resampling, windowing and the refusal of unusable files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime.audio_preprocess import decode_info, load_audio, window_starts, windows
from runtime.errors import InputError
from runtime.manifest import AudioPreprocess


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


# -- decoding -----------------------------------------------------------------------------
def test_wav_stereo_16bit_mixes_to_mono(tmp_path):
    s = sine(440, 22050, 1.0, amp=1.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([0.6 * s, 0.2 * s], axis=1), 22050, subtype="PCM_16")
    wave = load_audio(path, 22050)  # same rate: no resampling, so the mix is exact to 16 bits
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 22050
    np.testing.assert_allclose(wave, 0.4 * s, atol=2.0 / 32768)


def test_resampling_keeps_pitch_and_duration(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.stack([sine(440, 22050, 2.0)] * 2, axis=1), 22050, subtype="PCM_16")
    wave = load_audio(path, 44100)
    assert abs(len(wave) - 88200) <= 2
    assert abs(peak_hz(wave, 44100) - 440) <= 1.0
    assert 0.45 < np.max(np.abs(wave)) <= 0.55  # level kept through the resampler


def test_flac_48k_mono(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, sine(1000, 48000, 1.5), 48000)
    wave = load_audio(path, 44100)
    assert abs(len(wave) - 66150) <= 2
    assert abs(peak_hz(wave, 44100) - 1000) <= 1.0
    info = decode_info(path)
    assert (info.sample_rate, info.channels, info.frames, info.format) == (48000, 1, 72000, "FLAC")
    assert info.duration_seconds == pytest.approx(1.5)


def test_ogg_vorbis(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, np.stack([sine(660, 44100, 1.0)] * 2, axis=1), 44100, format="OGG", subtype="VORBIS")
    wave = load_audio(path, 44100)
    assert abs(len(wave) - 44100) <= 1024  # lossy codec: allow encoder framing slack
    assert abs(peak_hz(wave, 44100) - 660) <= 1.5


def test_mp3(tmp_path):
    path = tmp_path / "a.mp3"
    try:
        sf.write(path, sine(440, 44100, 1.0), 44100, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:  # libsndfile built without LAME
        pytest.skip(f"this libsndfile cannot write MP3: {exc}")
    wave = load_audio(path, 22050)
    assert abs(len(wave) - 22050) <= 1200  # MP3 pads with encoder delay
    assert abs(peak_hz(wave, 22050) - 440) <= 1.5


def test_output_clipped_to_unit_range(tmp_path):
    path = tmp_path / "hot.wav"
    sf.write(path, sine(100, 8000, 0.5, amp=1.5), 8000, subtype="FLOAT")  # float WAV can exceed 1
    wave = load_audio(path, 8000)
    assert wave.max() <= 1.0 and wave.min() >= -1.0 and wave.max() > 0.99


# -- errors -------------------------------------------------------------------------------
def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg


def test_missing_file(tmp_path):
    path = tmp_path / "gone.wav"
    with pytest.raises(InputError, match="no such file") as e:
        load_audio(path, 44100)
    _assert_one_line_naming(e, path)
    with pytest.raises(InputError, match="no such file"):
        decode_info(path)


def test_text_named_mp3_is_called_text_not_a_missing_file(tmp_path):
    # libsndfile's own words for it are "File does not exist or is not a regular file".
    path = tmp_path / "song.mp3"
    path.write_text("definitely not audio, but lyrics: \u00e9t\u00e9\n" * 10)
    for fn in (lambda: load_audio(path, 44100), lambda: decode_info(path)):
        with pytest.raises(InputError, match=r"not a readable audio file \(it is a text file, not audio\)") as e:
            fn()
        _assert_one_line_naming(e, path)
        assert "does not exist" not in str(e.value)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"\(the file is empty\)"):
        load_audio(empty, 44100)
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)) + b"\x00")
    with pytest.raises(InputError, match="not a readable audio file") as e:
        load_audio(noise, 44100)
    assert "text file" not in str(e.value) and "does not exist" not in str(e.value)


def test_zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 44100, subtype="PCM_16")
    with pytest.raises(InputError, match="zero length") as e:
        load_audio(path, 44100)
    _assert_one_line_naming(e, path)


def test_silent(tmp_path):
    path = tmp_path / "quiet.flac"
    sf.write(path, np.zeros(4410, np.float32), 44100)
    with pytest.raises(InputError, match="silent") as e:
        load_audio(path, 44100)
    _assert_one_line_naming(e, path)


def test_non_finite(tmp_path):
    path = tmp_path / "nan.wav"
    x = sine(100, 8000, 0.1)
    x[10] = np.nan
    sf.write(path, x, 8000, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN"):
        load_audio(path, 8000)


def test_directory(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        load_audio(tmp_path, 44100)


# -- windows ------------------------------------------------------------------------------
# 100 Hz keeps the arrays tiny: window 500, hop 250, minimum 100 samples.
CFG = AudioPreprocess(sample_rate=100, window_seconds=5.0, hop_seconds=2.5, min_seconds=1.0)


@pytest.mark.parametrize("n,starts", [
    (500, [0]),                  # exactly one window
    (600, [0]),                  # tail of 100 <= hop/2: dropped
    (626, [0, 126]),             # tail of 126 > hop/2: one more window ending at the end
    (1000, [0, 250, 500]),       # fits exactly
    (1100, [0, 250, 500]),       # tail 100: dropped
    (1200, [0, 250, 500, 700]),  # tail 200: final window
])
def test_window_starts(n, starts):
    wave = np.arange(n, dtype=np.float32)
    w, sec = windows(wave, CFG)
    assert w.shape == (len(starts), 500) and w.dtype == np.float32
    assert sec.dtype == np.float64
    np.testing.assert_allclose(sec, np.asarray(starts) / 100)
    for row, s in zip(w, starts):
        np.testing.assert_array_equal(row, wave[s:s + 500])


def test_window_invariants_over_many_lengths():
    for n in range(501, 3000, 37):
        st = window_starts(n, CFG)
        assert st[0] == 0 and np.all(np.diff(st) > 0) and np.all(np.diff(st) <= 250)
        assert st[-1] + 500 <= n
        assert n - (st[-1] + 500) <= 125  # never more than hop/2 left unheard


def test_short_track_is_one_unpadded_window():
    wave = np.linspace(-1, 1, 300, dtype=np.float32)
    w, sec = windows(wave, CFG)
    assert w.shape == (1, 300) and sec.tolist() == [0.0]
    np.testing.assert_array_equal(w[0], wave)


def test_very_short_track_padded_to_min_seconds():
    wave = np.ones(40, dtype=np.float32)
    w, _ = windows(wave, CFG)
    assert w.shape == (1, 100)
    assert w[0, :40].tolist() == [1.0] * 40 and not w[0, 40:].any()


def test_empty_and_bad_shapes():
    w, sec = windows(np.zeros(0, np.float32), CFG)
    assert w.shape == (0, 500) and sec.shape == (0,)
    with pytest.raises(ValueError):
        windows(np.zeros((2, 10), np.float32), CFG)


def test_default_config_lengths():
    cfg = AudioPreprocess()  # 44.1 kHz, 5 s windows, 2.5 s hop
    w, sec = windows(np.zeros(44100 * 12, np.float32), cfg)
    assert w.shape[1] == 220500
    assert sec.tolist() == [0.0, 2.5, 5.0, 7.0]  # 7.5 s would overrun; tail 2 s > 1.25 s
