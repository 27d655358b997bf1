"""A tiny, valid model bundle and generated inputs for the runtime tests (no torch).

``write_tiny_bundle`` builds three small ONNX graphs with ``onnx.helper`` that follow the
export's conventions exactly (input ``pixels`` / ``tokens`` / ``waveform``, output
``embedding``, dynamic batch, dynamic audio length, int16 scaling inside the audio graph,
un-normalised outputs) plus a real manifest with sha256s and label embeddings. The
graphs compute simple statistics (quadrant means, loudness, roughness) through random
projections, so different inputs get different, deterministic embeddings. The int8 graphs
are the fp32 ones through ``onnxruntime.quantization.quantize_dynamic``, i.e. real int8.

``tiny_world`` also writes music in several formats, rates and channel counts, manga-like
pages, and every kind of bad input the CLIs must refuse; it is built once per test session.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` puts tests/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))

EMBED_DIM = 16
IMAGE_SIZE = 32
SAMPLE_RATE = 44100
OPSET = 17
IR_VERSION = 9  # what onnxruntime >= 1.17 reads


# -- graphs -------------------------------------------------------------------------------
def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inputs, outputs, inits, name: str):
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiny-fixture")
    model.ir_version = IR_VERSION
    return model


def _head(rng, feat: str, n_feat: int, d: int, prefix: str):
    """features [B, n] -> tanh(f W1 + b1) W2: a small nonlinear projection to [B, d]."""
    from onnx import helper

    inits = [_init(f"{prefix}_w1", rng.standard_normal((n_feat, d)).astype(np.float32)),
             _init(f"{prefix}_b1", (0.1 * rng.standard_normal(d)).astype(np.float32)),
             _init(f"{prefix}_w2", (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", [feat, f"{prefix}_w1"], ["h0"]),
             helper.make_node("Add", ["h0", f"{prefix}_b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h2"]),
             helper.make_node("MatMul", ["h2", f"{prefix}_w2"], ["embedding"])]
    return nodes, inits


def image_graph(d: int = EMBED_DIM, size: int = IMAGE_SIZE, seed: int = 1):
    """pixels [batch,3,S,S] -> quadrant means, channel max, channel energy -> [batch, d]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    half = size // 2
    nodes = [
        helper.make_node("AveragePool", ["pixels"], ["quad"], kernel_shape=[half, half], strides=[half, half]),
        helper.make_node("Flatten", ["quad"], ["f_quad"], axis=1),
        helper.make_node("GlobalMaxPool", ["pixels"], ["gmax"]),
        helper.make_node("Flatten", ["gmax"], ["f_max"], axis=1),
        helper.make_node("Mul", ["pixels", "pixels"], ["sq"]),
        helper.make_node("GlobalAveragePool", ["sq"], ["energy"]),
        helper.make_node("Flatten", ["energy"], ["f_energy"], axis=1),
        helper.make_node("Concat", ["f_quad", "f_max", "f_energy"], ["feat"], axis=1),
    ]
    head, inits = _head(rng, "feat", 12 + 3 + 3, d, "img")
    return _model(nodes + head,
                  [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
                  [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])], inits, "image")


def text_graph(d: int = EMBED_DIM, seed: int = 2, buckets: int = 1024, width: int = 8):
    """tokens [batch,77] int64 -> mean of hashed token embeddings -> [batch, d]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_init("buckets", np.array(buckets, dtype=np.int64)),
             _init("table", rng.standard_normal((buckets, width)).astype(np.float32))]
    nodes = [
        helper.make_node("Mod", ["tokens", "buckets"], ["ids"]),
        helper.make_node("Gather", ["table", "ids"], ["vecs"], axis=0),
        helper.make_node("ReduceMean", ["vecs"], ["feat"], axes=[1], keepdims=0),
    ]
    head, more = _head(rng, "feat", width, d, "txt")
    return _model(nodes + head,
                  [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 77])],
                  [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])], inits + more, "text")


def audio_graph(d: int = EMBED_DIM, seed: int = 3):
    """waveform [batch, samples] in [-1,1] -> x32768 (as the real graph) -> loudness,
    peak, RMS, roughness (mean |diff|) and roughness/loudness, logged -> [batch, d]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    big = np.iinfo(np.int64).max
    inits = [_init("int16_scale", np.array(32768.0, np.float32)), _init("one", np.array(1.0, np.float32)),
             _init("s1", np.array([1], np.int64)), _init("e1", np.array([big], np.int64)),
             _init("s0", np.array([0], np.int64)), _init("e0", np.array([-1], np.int64)),
             _init("ax1", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Mul", ["waveform", "int16_scale"], ["x"]),
        helper.make_node("Abs", ["x"], ["ax"]),
        helper.make_node("ReduceMean", ["ax"], ["loud"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["ax"], ["peak"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("ReduceMean", ["x2"], ["ms"], axes=[1], keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["rms"]),
        helper.make_node("Slice", ["x", "s1", "e1", "ax1"], ["x_next"]),
        helper.make_node("Slice", ["x", "s0", "e0", "ax1"], ["x_prev"]),
        helper.make_node("Sub", ["x_next", "x_prev"], ["dx"]),
        helper.make_node("Abs", ["dx"], ["adx"]),
        helper.make_node("ReduceMean", ["adx"], ["rough"], axes=[1], keepdims=1),
        helper.make_node("Add", ["loud", "one"], ["loud1"]),
        helper.make_node("Div", ["rough", "loud1"], ["ratio"]),
        helper.make_node("Concat", ["loud", "peak", "rms", "rough"], ["stats"], axis=1),
        helper.make_node("Add", ["stats", "one"], ["stats1"]),
        helper.make_node("Log", ["stats1"], ["logstats"]),
        helper.make_node("Mul", ["ratio", "int16_scale"], ["ratio_big"]),
        helper.make_node("Add", ["ratio_big", "one"], ["ratio1"]),
        helper.make_node("Log", ["ratio1"], ["logratio"]),
        helper.make_node("Concat", ["logstats", "logratio"], ["feat0"], axis=1),
        # centre the features so tanh does not saturate identically for every track
        helper.make_node("Sub", ["feat0", "feat_mean"], ["feat"]),
    ]
    inits.append(_init("feat_mean", np.array([[7.5, 9.5, 8.0, 6.5, 7.0]], np.float32)))
    head, more = _head(rng, "feat", 5, d, "aud")
    return _model(nodes + head,
                  [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
                  [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])], inits + more, "audio")


# -- bundle -------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unit_rows(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Self-check floors by precision, as the export sets them (export/golden.py; not imported
# here, so the runtime tests need neither torch nor the export's extras).
GOLDEN_FLOORS = {"fp32": 0.9999, "int8": 0.98}
GOLDEN_MARGINS = {"fp32": 1e-5, "int8": 2e-3}


def _run_graph(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def tiny_goldens(out: Path, encoders, image_cfg, rng) -> tuple[tuple, list]:
    """Golden inputs for the tiny bundle, their fp32-graph embeddings as the reference (the
    stand-in for the exporting PyTorch model), and each graph's floor measured as the
    export measures it. Returns (goldens, encoders with their floors)."""
    from dataclasses import replace

    from runtime.manifest import Golden, PackedArray
    from runtime.selfcheck import golden_batch, row_cosines
    from runtime.tokenizer import default_tokenizer

    raw = {"image": rng.integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
           "text": default_tokenizer()(["a quiet page in the rain", "Scary music"]).astype(np.int32),
           "audio": (rng.uniform(-0.5, 0.5, (1, SAMPLE_RATE // 2)) * 32767).astype(np.int16)}
    goldens, inputs = [], {}
    for modality, arr in raw.items():
        packed = PackedArray.pack(arr)
        inputs[modality] = golden_batch(Golden(modality, packed, packed), image_cfg)
        ref = _run_graph(out / f"{modality}.fp32.onnx", inputs[modality])
        goldens.append(Golden(modality, packed, PackedArray.pack(_unit_rows_of(ref))))
    refs = {g.modality: g.reference.array() for g in goldens}
    floored = []
    for e in encoders:
        cos = float(row_cosines(_run_graph(out / e.file, inputs[e.modality]), refs[e.modality]).min())
        floor = min(GOLDEN_FLOORS[e.precision], cos - GOLDEN_MARGINS[e.precision])
        floored.append(replace(e, selfcheck_min_cosine=round(floor, 6),
                               selfcheck_export_cosine=round(cos, 6)))
    return tuple(goldens), floored


def _unit_rows_of(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_tiny_bundle(out: str | Path, precisions: tuple[str, ...] = ("fp32", "int8"), d: int = EMBED_DIM,
                      demo: bool = False, seed: int = 0, window_seconds: float = 2.0, hop_seconds: float = 1.0,
                      goldens: bool = True) -> Path:
    """Write a complete bundle folder the runtime accepts; returns its path. With
    ``goldens`` (default) the manifest carries self-check inputs and floors, as an export's."""
    import onnx

    from runtime.labels import GENRE_LABELS, MOOD_LABELS
    from runtime.manifest import (SCHEMA_VERSION, AudioPreprocess, EncoderFile, ImagePreprocess, LabelEmbeddings,
                                  LogitScales, Manifest, ModelInfo, TensorSpec, TextPreprocess)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    graphs = {"image": image_graph(d, seed=seed + 1), "text": text_graph(d, seed=seed + 2),
              "audio": audio_graph(d, seed=seed + 3)}
    io_specs = {
        "image": ((TensorSpec("pixels", "float32", ("batch", 3, IMAGE_SIZE, IMAGE_SIZE)),)),
        "text": ((TensorSpec("tokens", "int64", ("batch", 77)),)),
        "audio": ((TensorSpec("waveform", "float32", ("batch", "samples")),)),
    }
    encoders = []
    for modality, model in graphs.items():
        fp32 = out / f"{modality}.fp32.onnx"
        onnx.save(model, str(fp32))
        for precision in precisions:
            path = out / f"{modality}.{precision}.onnx"
            if precision == "int8":
                import logging

                from onnxruntime.quantization import QuantType, quantize_dynamic

                logging.disable(logging.WARNING)  # its "consider pre-processing" advice is noise here
                try:
                    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
                finally:
                    logging.disable(logging.NOTSET)
            elif precision != "fp32":
                raise ValueError(f"the tiny bundle makes fp32 and int8 graphs, not {precision}")
            encoders.append(EncoderFile(modality, precision, path.name, _sha(path), path.stat().st_size,
                                        io_specs[modality], (TensorSpec("embedding", "float32", ("batch", d)),),
                                        "dynamic" if precision == "int8" else ""))
    image_cfg = ImagePreprocess(size=IMAGE_SIZE)
    golden_set: tuple = ()
    if goldens:
        golden_set, encoders = tiny_goldens(out, encoders, image_cfg, np.random.default_rng(seed + 7))
    if "fp32" not in precisions:
        for modality in graphs:
            (out / f"{modality}.fp32.onnx").unlink()
    vocab = out / TextPreprocess().vocab_file
    shutil.copyfile(ROOT / "runtime" / "assets" / vocab.name, vocab)
    labels = tuple(LabelEmbeddings(ls.name, ls.classes, ls.template, _unit_rows(rng, len(ls.classes), d))
                   for ls in (MOOD_LABELS, GENRE_LABELS))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        model=ModelInfo("tiny-test", "random tiny graphs for tests", "none", "0" * 64, demo=demo),
        embed_dim=d,
        # Small scales (the real ones are ~100) keep the tiny model's tag distributions away from 0/1,
        # so tests of them can tell right from wrong.
        logit_scales=LogitScales(image_text=10.0, audio_text=8.0, audio_image=5.0),
        image=image_cfg,
        audio=AudioPreprocess(sample_rate=SAMPLE_RATE, window_seconds=window_seconds, hop_seconds=hop_seconds,
                              min_seconds=0.5),
        text=TextPreprocess(),
        encoders=tuple(encoders),
        labels=labels,
        vocab_sha256=_sha(vocab),
        goldens=golden_set,
    )
    Manifest.from_dict(manifest.to_dict())  # the writer must produce what the reader accepts
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=1))
    return out


def tamper(path: str | Path, offset: int = -20) -> None:
    """Flip one byte in place (same size, so only the sha256 can tell)."""
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


# -- audio ---------------------------------------------------------------------------------
def _tone(kind: str, seconds: float, sr: int, freq: float, amp: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    if kind == "sine":
        x = np.sin(2 * np.pi * freq * t)
    elif kind == "square":
        x = np.sign(np.sin(2 * np.pi * freq * t))
    elif kind == "chirp":
        x = np.sin(2 * np.pi * (freq + 400 * t) * t)
    elif kind == "noise":
        x = rng.uniform(-1, 1, t.shape)
    else:
        raise ValueError(kind)
    # A slow swell so windows of one track differ (the best window is then well defined).
    env = 0.4 + 0.6 * (0.5 - 0.5 * np.cos(2 * np.pi * t / max(seconds, 1e-9)))
    return (amp * env * x).astype(np.float32)


def write_music(folder: str | Path) -> dict[str, Path]:
    """Tracks in several formats, rates and channel counts, in nested folders."""
    import soundfile as sf

    folder = Path(folder)
    (folder / "a").mkdir(parents=True, exist_ok=True)
    (folder / "b" / "deep").mkdir(parents=True, exist_ok=True)
    specs = {
        "sine_stereo": ("a/sine_stereo.wav", 44100, 2, "sine", 5.0, 440.0, 0.3, "PCM_16"),
        "noise": ("a/noise.flac", 22050, 1, "noise", 4.0, 0.0, 0.2, "PCM_16"),
        "chirp": ("b/chirp.ogg", 48000, 1, "chirp", 4.5, 200.0, 0.6, "VORBIS"),
        "square": ("b/deep/square.mp3", 44100, 1, "square", 6.0, 110.0, 0.5, "MPEG_LAYER_III"),
        "short": ("short.wav", 8000, 1, "sine", 0.3, 880.0, 0.8, "PCM_16"),
    }
    out = {}
    for i, (name, (rel, sr, ch, kind, secs, freq, amp, subtype)) in enumerate(specs.items()):
        x = _tone(kind, secs, sr, freq, amp, seed=i)
        data = np.stack([x, 0.5 * x], axis=1) if ch == 2 else x
        path = folder / rel
        sf.write(str(path), data, sr, subtype=subtype)
        out[name] = path
    (folder / "notes.txt").write_text("not music")
    sf.write(str(folder / ".hidden.wav"), _tone("sine", 1.0, 8000, 300, 0.5), 8000)
    return out


def write_extra_track(path: str | Path, seconds: float = 3.0, freq: float = 660.0, amp: float = 0.4) -> Path:
    import soundfile as sf

    sf.write(str(path), _tone("sine", seconds, 44100, freq, amp, seed=7), 44100)
    return Path(path)


# -- pages ----------------------------------------------------------------------------------
def write_pages(folder: str | Path) -> dict[str, Path]:
    """Manga-like pages: tall RGB, grayscale JPEG, a double spread, RGBA, palette."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}

    def panels(size, seed, mode="RGB"):
        rng = np.random.default_rng(seed)
        img = Image.new(mode, size, "white")
        draw = ImageDraw.Draw(img)
        w, h = size
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            x1, y1 = x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))
            fill = tuple(int(v) for v in rng.integers(0, 255, 3)) if mode == "RGB" else int(rng.integers(0, 255))
            draw.rectangle([x0, y0, x1, y1], fill=fill, outline="black" if mode == "RGB" else 0)
        return img

    out["tall"] = folder / "tall.png"
    panels((60, 90), 1).save(out["tall"])
    out["gray"] = folder / "gray.jpg"
    panels((80, 120), 2, "L").save(out["gray"], quality=90)
    out["spread"] = folder / "spread.png"
    panels((180, 90), 3).save(out["spread"])
    rgba = panels((64, 96), 4).convert("RGBA")
    rgba.putalpha(200)
    out["rgba"] = folder / "rgba.png"
    rgba.save(out["rgba"])
    out["palette"] = folder / "palette.gif"
    panels((70, 100), 5).convert("P").save(out["palette"])
    return out


# -- bad inputs -------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A few hundred bytes that claim to be a 20000x20000 grayscale PNG."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def write_bad_inputs(folder: str | Path) -> dict[str, Path]:
    import soundfile as sf
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["corrupt_image"] = folder / "corrupt.png"
    out["corrupt_image"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    out["truncated_image"] = folder / "truncated.jpg"
    out["truncated_image"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["bomb_image"] = folder / "bomb.png"
    out["bomb_image"].write_bytes(bomb_png())
    out["silent_audio"] = folder / "silent.wav"
    sf.write(str(out["silent_audio"]), np.zeros(44100, np.float32), 44100)
    out["empty_audio"] = folder / "empty.wav"
    sf.write(str(out["empty_audio"]), np.zeros(0, np.float32), 44100)
    out["text_as_mp3"] = folder / "lyrics.mp3"
    out["text_as_mp3"].write_text("these are lyrics, not audio\n" * 20)
    out["no_audio_dir"] = folder / "no_audio"
    out["no_audio_dir"].mkdir(exist_ok=True)
    (out["no_audio_dir"] / "readme.txt").write_text("nothing to hear")
    return out


# -- hostile audio, made cheaply -------------------------------------------------------------
def _crc8(data: bytes) -> int:
    c = 0
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        table.append(c)
    return table


_CRC16 = _crc16_table()


def _crc16(data: bytes) -> int:
    c = 0
    for b in data:
        c = ((c << 8) & 0xFFFF) ^ _CRC16[(c >> 8) ^ b]
    return c


def _flac_utf8(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | (n >> 12) & 0x3F, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


def constant_flac(path: str | Path, seconds: float, channels: int = 8, value: int = 8000) -> Path:
    """A valid FLAC of ``channels`` x 96 kHz x 16 bit holding one constant sample value.
    Every frame is CONSTANT subframes (~30 bytes per 32768 samples), so 87 minutes of
    8-channel audio (what decoding whole at the native rate would need 16 GB for) is 0.5 MB."""
    rate, block = 96000, 32768
    total = int(seconds * rate)
    streaminfo = struct.pack(">HH", block, block) + bytes(6)
    streaminfo += ((rate << 44) | ((channels - 1) << 41) | (15 << 36) | total).to_bytes(8, "big") + bytes(16)
    out = bytearray(b"fLaC" + bytes([0x80]) + len(streaminfo).to_bytes(3, "big") + streaminfo)
    sub = b"".join(b"\x00" + struct.pack(">h", value) for _ in range(channels))
    for i in range(-(-total // block)):
        n = min(block, total - i * block)
        code = 0b1111 if n == block else 0b0111  # 32768, or a 16-bit (size - 1) after the number
        hdr = bytes([0xFF, 0xF8, (code << 4) | 0b1011, ((channels - 1) << 4) | (0b100 << 1)]) + _flac_utf8(i)
        if n != block:
            hdr += struct.pack(">H", n - 1)
        frame = hdr + bytes([_crc8(hdr)]) + sub
        out += frame + struct.pack(">H", _crc16(frame))
    Path(path).write_bytes(bytes(out))
    return Path(path)


def long_sparse_wav(path: str | Path, hours: float = 10.0, rate: int = 8000, tone_seconds: float = 60.0) -> Path:
    """A mono 16-bit WAV whose header says ``hours`` long: ``tone_seconds`` of a tone, then
    zeros that are a hole in the file (sparse), so 10 hours cost ~1 MB of disk."""
    import soundfile as sf

    path = Path(path)
    n = int(hours * 3600 * rate)
    t = np.arange(int(tone_seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 330 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.1 * t))).astype(np.float32)
    sf.write(str(path), tone, rate, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    # RIFF size and data size say 10 h; the file is then extended with a hole.
    pos = data.index(b"data")
    struct.pack_into("<I", data, 4, 36 + 2 * n)
    struct.pack_into("<I", data, pos + 4, 2 * n)
    path.write_bytes(bytes(data))
    with open(path, "r+b") as f:
        f.truncate(pos + 8 + 2 * n)
    return path


def wav_header_claiming_rate(path: str | Path, rate: int) -> Path:
    """A short WAV whose header claims sample rate ``rate``."""
    import soundfile as sf

    sf.write(str(path), np.full(4000, 0.3, np.float32), 8000, subtype="PCM_16")
    data = bytearray(Path(path).read_bytes())
    struct.pack_into("<I", data, 24, rate)
    struct.pack_into("<I", data, 28, min(rate * 2, 0xFFFFFFFF))
    Path(path).write_bytes(bytes(data))
    return Path(path)


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header claims width x height."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# -- the world ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinyWorld:
    """Everything the runtime tests read: do not modify in place (copy first)."""

    root: Path
    bundle: Path
    music: Path
    tracks: dict
    pages_dir: Path
    pages: dict
    bad: dict
    library: Path  # music library of `music`, built with `bundle`
    pages_index: Path  # pages index of `pages_dir`


_WORLD: TinyWorld | None = None


def tiny_world(root: Path) -> TinyWorld:
    """Build (once per process) the bundle, inputs, a music library and a pages index."""
    global _WORLD
    if _WORLD is None:
        from runtime.encoders import Encoders
        from runtime.library import build_library

        bundle = write_tiny_bundle(root / "bundle")
        tracks = write_music(root / "music")
        pages = write_pages(root / "pages")
        bad = write_bad_inputs(root / "bad")
        enc = Encoders(bundle, device="cpu", threads=1)
        build_library(root / "music", root / "library", enc, progress=False)
        build_library(root / "pages", root / "pages_index", enc, kind="pages", progress=False)
        _WORLD = TinyWorld(root, bundle, root / "music", tracks, root / "pages", pages, bad, root / "library",
                           root / "pages_index")
    return _WORLD


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="session")
def enc(world):
    """CPU encoders of the tiny bundle, one thread (library tests build with them)."""
    from runtime.encoders import Encoders

    return Encoders(world.bundle, device="cpu", threads=1)


@pytest.fixture()
def music(world, tmp_path) -> Path:
    """A private, modifiable copy of the generated music folder."""
    return shutil.copytree(world.music, tmp_path / "music")


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 60):
    """Run ``python -m module args`` from the repo root; returns CompletedProcess (text)."""
    import os
    import subprocess

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def synthetic_track_name(i: int) -> str:
    """The relative path of track ``i`` of a ``synthetic_library``."""
    return f"track{i:07d}.mp3"


def synthetic_music_files(music_root: str | Path, n_tracks: int) -> Path:
    """The files a ``synthetic_library(..., music_root=music_root)`` of ``n_tracks`` describes:
    empty, mtime 0, as its records say, so an update finds them unchanged and sees only what
    a test adds or removes."""
    import os

    root = Path(music_root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_tracks):
        p = root / synthetic_track_name(i)
        p.touch()
        os.utime(p, ns=(0, 0))
    return root


class _SyntheticRecords:
    """A lazy sequence of ``NewRecord``s made of random unit vectors, generated a block at
    a time (a million tracks never sit in memory at once)."""

    def __init__(self, n: int, windows_per_track: int, d: int, hop: float, seed: int, start: int = 0):
        self.n, self.w, self.d, self.hop, self.seed, self.start = n, windows_per_track, d, hop, seed, start

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, sl):
        from runtime.library.segments import NewRecord

        lo, hi, _ = sl.indices(self.n)
        rng = np.random.default_rng([self.seed, self.start + lo])
        w = rng.standard_normal(((hi - lo) * self.w, self.d)).astype(np.float32)
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        # float16 storage first, so the pooled row is the mean of the windows as stored
        w = w.astype(np.float16).astype(np.float32)
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        starts = np.arange(self.w, dtype=np.float64) * self.hop
        out = []
        for j in range(hi - lo):
            i = self.start + lo + j
            win = w[j * self.w:(j + 1) * self.w]
            pooled = win.mean(0)
            out.append(NewRecord(synthetic_track_name(i), 0, 0, f"{i:064x}", "ok", duration=180.0, windows=win,
                                 starts=starts, pooled=pooled / np.linalg.norm(pooled)))
        return out


def synthetic_library(out: str | Path, bundle_dir: str | Path, n_tracks: int, windows_per_track: int = 8,
                      seed: int = 0, segment_tracks: int | None = None, music_root: str | Path | None = None,
                      centre: bool = False, ann: bool = False) -> Path:
    """A valid music library of ``n_tracks`` random unit vectors, written through the
    library's own segment writer (no audio, no encoder): for catalogue sizes that real
    indexing would take days to reach. One segment (or one per ``segment_tracks``); paths
    ``trackNNNNNNN.mp3`` (size 0, mtime 0) under ``music_root`` (default: nowhere). With
    ``centre``, the hub correction's centre, and with ``ann`` the approximate index, as the
    indexer stores them (the index only where faiss is installed and the library is large
    enough for the indexer to build one)."""
    from runtime.audio_preprocess import LOUDNESS_FLOOR_DBFS, MAX_TRACK_SECONDS
    from runtime.bundle import Bundle
    from runtime.library.builder import root_ref
    from runtime.library.publishing import BuildRun, ann_entries, centre_entry
    from runtime.library.schema import GenerationManifest, RootRef, generation_name
    from runtime.library.segments import write_segment
    from runtime.library.storage import write_json_atomic

    b = Bundle.load(bundle_dir)
    d = b.embed_dim
    out = Path(out)
    seg_dir = out / "segments"
    seg_dir.mkdir(parents=True)
    per = segment_tracks or n_tracks
    refs = []
    for sid, lo in enumerate(range(0, n_tracks, per)):
        n = min(per, n_tracks - lo)
        recs = _SyntheticRecords(n, windows_per_track, d, b.manifest.audio.hop_seconds, seed, lo)
        refs.append(write_segment(seg_dir, sid, recs, kind="music", dim=d, bundle_fingerprint=b.fingerprint,
                                  labels=b.manifest.label_set("moods"), genres=None,
                                  scale=b.manifest.logit_scales.audio_text, counts=(n, n * windows_per_track)))
    hub_spec = ann_spec = None
    if centre or ann:
        run = BuildRun(out, seg_dir, "music", d, b.fingerprint, b, centre, [], len(refs), "")
        hub_spec, c = centre_entry(run, refs)
        if ann:
            refs, ann_spec = ann_entries(run, refs, c, None)
        run.close()
    root = root_ref(out, Path(music_root).resolve()) if music_root is not None else RootRef(None, "/synthetic")
    m = GenerationManifest(1, "music", b.fingerprint, b.manifest.model.name, d, "int8", root,
                           "synthetic", "synthetic", LOUDNESS_FLOOR_DBFS, MAX_TRACK_SECONDS, tuple(refs), len(refs),
                           hub_spec, ann_spec)
    write_json_atomic(out / generation_name(1), m.to_dict())
    (out / "CURRENT").write_text(generation_name(1) + "\n")
    return out
