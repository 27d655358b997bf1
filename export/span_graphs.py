"""The audio tower's two halves as graphs (trunk: waveform -> features; head: features ->
embedding), so the runtime can embed a whole track in one pass (``runtime.audio_span``).

Written next to the whole audio graph, never instead of it: the whole graph stays the
contract for a single clip and the yardstick. Per precision the bundle gets a trunk (fp32;
int8 with the audio encoder's recipe); the head is small and stays fp32 for all of them.
Each trunk is measured as trunk + head against PyTorch on the held-out clips (its parity
entry) and on the golden clip (its self-check floor), and the pair's agreement with the
per-window graph is measured on long generated tracks; when that agreement misses
``MIN_AGREEMENT`` the halves are left out of the bundle and the note says so, because the
runtime would only fall back to window by window after paying for both.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime.audio_span import SpanGeometry, agreement, span_embeddings
from runtime.audio_preprocess import window_starts
from runtime.manifest import AudioPreprocess, AudioSpan, EncoderFile, Golden, ImagePreprocess, ParityEntry

from .calibration import InputSet, synthetic_clip

# A track's one-pass embedding must agree with its per-window one at least this well
# (mean over the probed windows) to be used; issue 12's bar for real music.
MIN_AGREEMENT = 0.99
# The tower's time stride from STFT frames to feature steps: conv1, max pool, layers 2-4.
TIME_STRIDE = 32
AGREEMENT_SEED = 777
AGREEMENT_SECONDS = (40.0, 27.5)


@dataclass(frozen=True)
class SpanResult:
    encoders: tuple[EncoderFile, ...]
    parity: tuple[ParityEntry, ...]
    span: AudioSpan | None
    notes: tuple[str, ...]


def _session_run(path: Path, threads: int | None):
    from .parity import parity_session

    sess = parity_session(path, threads)
    out = sess.get_outputs()[0].name
    name = sess.get_inputs()[0].name
    return lambda x: sess.run([out], {name: np.ascontiguousarray(x)})[0]


def geometry(model) -> SpanGeometry:
    from .onnx_graphs import AudioTrunkGraph

    import torch

    cfg = model.config.audio
    window = int(round(AudioPreprocess().window_seconds * cfg.sample_rate))
    with torch.no_grad():
        steps = AudioTrunkGraph(model).eval()(torch.zeros(1, window)).shape[-1]
    return SpanGeometry(cfg.hop_length * TIME_STRIDE, int(steps), MIN_AGREEMENT)


def measure_agreement(whole, trunk, head, geo: SpanGeometry, audio: AudioPreprocess) -> np.ndarray:
    """Cosines between one-pass and per-window embeddings of every window of a few long
    generated tracks."""
    win = int(round(audio.window_seconds * audio.sample_rate))
    out = []
    for i, seconds in enumerate(AGREEMENT_SECONDS):
        wave = synthetic_clip(np.random.default_rng([AGREEMENT_SEED, i]), seconds, audio.sample_rate)
        starts = window_starts(wave.shape[0], audio)
        per = np.concatenate([whole(np.stack([wave[s:s + win] for s in starts[k:k + 8]]))
                              for k in range(0, len(starts), 8)])
        out.append(agreement(span_embeddings(trunk, head, wave, starts, win, audio.sample_rate, geo), per))
    return np.concatenate(out)


def export_span(model, staging: Path, audio_files: dict[str, Path], held_out: InputSet, reference: np.ndarray,
                golden: Golden, image_cfg: ImagePreprocess, audio_cfg: AudioPreprocess, calib: InputSet | None,
                audio_choice, threads: int | None, quant_tool: str, optimum_preset: str | None) -> SpanResult:
    """Export, quantise and measure the halves; ``audio_files``: precision -> the whole
    audio graph written for it (fp32 and/or int8)."""
    from .golden import floor_for, golden_cosine
    from .onnx_graphs import export_encoder
    from .parity import compare, describe
    from .quantize import quantize_encoder

    notes = []
    fp32_trunk = export_encoder(model, "audio_trunk", staging / "audio.trunk.fp32.onnx")
    head = export_encoder(model, "audio_head", staging / "audio.head.fp32.onnx")
    trunks = {"fp32": (fp32_trunk.path, "")}
    if "int8" in audio_files:
        q = quantize_encoder(fp32_trunk.path, staging / "audio.trunk.int8.onnx", "audio", calib, audio_choice,
                             tool=quant_tool, preset=optimum_preset, workdir=staging / ".work")
        trunks["int8"] = (q.path, q.method, q.format)
    geo = geometry(model)
    head_run = _session_run(head.path, threads)
    cos = measure_agreement(_session_run(audio_files.get("fp32", audio_files.get("int8")), threads),
                            _session_run(fp32_trunk.path, threads), head_run, geo, audio_cfg)
    span = AudioSpan(geo.samples_per_step, geo.window_steps, MIN_AGREEMENT, round(float(cos.mean()), 6),
                     round(float(cos.min()), 6))
    summary = (f"audio one-pass vs per-window on generated tracks: mean {cos.mean():.4f}, min {cos.min():.4f} "
               f"over {len(cos)} windows")
    if cos.mean() < MIN_AGREEMENT:
        for path, *_ in trunks.values():
            path.unlink(missing_ok=True)
        head.path.unlink(missing_ok=True)
        notes.append(f"{summary}: below {MIN_AGREEMENT}, so the bundle has no trunk/head graphs and tracks are "
                     "embedded window by window")
        return SpanResult((), (), None, tuple(notes))
    notes.append(summary)
    encoders, parity = [], []
    for precision, (path, method, *fmt) in trunks.items():
        pair = (lambda x, t=_session_run(path, threads): head_run(t(x)))
        got = np.concatenate([pair(b) for b in held_out.batches("audio")])
        entry = replace(compare("audio", precision, got, reference, inputs=held_out.source_of("audio")),
                        part="trunk")
        parity.append(entry)
        notes.append("one-pass pair (trunk + head): " + describe(entry))
        export_cos = golden_cosine(pair, golden, image_cfg)
        encoders.append(EncoderFile("audio", precision, path.name, "", path.stat().st_size, fp32_trunk.inputs,
                                    fp32_trunk.outputs, method or "exact", fmt[0] if fmt else None,
                                    floor_for(precision, export_cos), round(export_cos, 6), part="trunk"))
    encoders.append(EncoderFile("audio", "fp32", head.path.name, "", head.path.stat().st_size, head.inputs,
                                head.outputs, "exact (the head of every trunk)", part="head"))
    return SpanResult(tuple(encoders), tuple(parity), span, tuple(notes))


__all__ = ["export_span", "geometry", "measure_agreement", "SpanResult", "MIN_AGREEMENT", "TIME_STRIDE"]
