"""Golden inputs for the runtime's self-check: small, stored in the manifest, with the
exporting PyTorch model's embedding of each.

Per modality: two page-like images (uint8 RGB at the encoder's size), two texts (token
ids) and one second of music-like audio (int16), drawn from the calibration module's
generators with seeds of their own, so they are neither calibration nor parity inputs.
The stored form is what the runtime turns into the graph input (``runtime.selfcheck.
golden_batch``), and the reference embedding is computed from exactly that graph input,
so the check measures the graph on this machine and nothing else.

Each graph's floor is its precision's parity floor, lowered to a margin under what the
graph gave on the exporting machine when that is lower (``FLOOR_MARGINS``: 0.002 for
int8): a healthy graph on another CPU differs from the exporting one by float rounding
(int8 graphs: bit-identical integer products, see ``export.int8_format``), far less than
the margin, while the faults the check exists for (saturating kernels, a damaged or wrong
file) cost 0.01 to 1.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.manifest import AudioPreprocess, Golden, ImagePreprocess, PackedArray, TextPreprocess
from runtime.selfcheck import golden_batch, row_cosines
from runtime.tokenizer import Tokenizer

from .calibration import synthetic_clip, synthetic_page

if TYPE_CHECKING:
    from training.model import AudioCLIP

GOLDEN_SEED = 424242
GOLDEN_TEXTS = ("a manga page with a quiet scene in the rain", "Scary music")
GOLDEN_AUDIO_SECONDS = 1.0
# The lowest floor a graph of each precision gets (the parity targets' min, or for fp16,
# whose target is a mean, a little under it).
PRECISION_FLOORS = {"fp32": 0.9999, "fp16": 0.998, "int8": 0.98}
# How far a healthy graph may land below what it gave here, on another CPU: fp32 graphs
# differ by float rounding (~1e-7), fp16 and int8 ones by their rounding of it.
FLOOR_MARGINS = {"fp32": 1e-5, "fp16": 1e-3, "int8": 2e-3}


def _page_u8(rng: np.random.Generator, cfg: ImagePreprocess) -> np.ndarray:
    """A synthetic page as the encoder sees it (centre crop at size S), back in uint8 RGB."""
    from runtime.image_preprocess import preprocess_image

    x = preprocess_image(synthetic_page(rng), cfg).transpose(1, 2, 0).astype(np.float64)
    rgb = (x * np.asarray(cfg.std) + np.asarray(cfg.mean)) * 255.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def golden_inputs(image: ImagePreprocess, audio: AudioPreprocess, text: TextPreprocess) -> dict[str, np.ndarray]:
    """The stored (compact) golden input of each modality."""
    pages = np.stack([_page_u8(np.random.default_rng([GOLDEN_SEED, 1, i]), image) for i in range(2)])
    tokens = Tokenizer.from_config(text)(list(GOLDEN_TEXTS)).astype(np.int32)
    clip = synthetic_clip(np.random.default_rng([GOLDEN_SEED, 2, 0]), GOLDEN_AUDIO_SECONDS, audio.sample_rate)
    wave = np.clip(np.round(clip.astype(np.float64) * 32767), -32768, 32767).astype(np.int16)[None, :]
    return {"image": pages, "text": tokens, "audio": wave}


def make_goldens(model: "AudioCLIP", image: ImagePreprocess, audio: AudioPreprocess,
                 text: TextPreprocess) -> tuple[Golden, ...]:
    """Golden inputs and the PyTorch model's unit embeddings of them, one per modality (the
    graph inputs are built from the stored form by the runtime's own code)."""
    from .onnx_graphs import reference_forward

    out = []
    for modality, raw in golden_inputs(image, audio, text).items():
        packed = PackedArray.pack(raw)
        g = Golden(modality, packed, packed)  # reference filled in below
        ref = reference_forward(model, modality, golden_batch(g, image))
        ref = (ref / np.linalg.norm(ref, axis=1, keepdims=True)).astype(np.float32)
        out.append(Golden(modality, packed, PackedArray.pack(ref)))
    return tuple(out)


def golden_cosine(run, golden: Golden, image: ImagePreprocess) -> float:
    """The worst row's cosine of ``run(graph input)`` with the golden reference."""
    cos = row_cosines(run(golden_batch(golden, image)), golden.reference.array())
    return float(cos.min()) if np.isfinite(cos).all() else float("nan")


def floor_for(precision: str, export_cosine: float) -> float:
    """The self-check floor of a graph that gave ``export_cosine`` here."""
    base = PRECISION_FLOORS[precision]
    if not np.isfinite(export_cosine):
        return base
    return round(min(base, export_cosine - FLOOR_MARGINS[precision]), 6)


__all__ = ["golden_inputs", "make_goldens", "golden_cosine", "floor_for", "PRECISION_FLOORS", "GOLDEN_SEED"]
