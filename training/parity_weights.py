"""The parity fixture's weight recipe: deterministic weights for any AudioCLIP state-dict layout.

`reference/parity/WEIGHTS.md` (version 2) defines it: entry i of the layout gets its own
generator seeded with seed * 100003 + i and a rule chosen by its name and shape, then two
taming factors for the audio tower. The published
reference implementation was run on these weights to make `outputs.npz`, so an
implementation that loads them and reproduces those outputs computes the same function.
Benchmarks and the full-size export test use the same weights, so they need no download.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import torch

from .model.fbsp import blackman_harris


def recipe_tensor(key: str, shape: tuple[int, ...], dtype: str, index: int, seed: int = 1) -> np.ndarray:
    value = _base_rule(key, shape, dtype, index, seed)
    # Version 2 of the fixture (rules 13-14) tames the random audio tower: without these
    # factors its float32 and float64 runs agree only to cosine 0.93-0.97 (chaotic gates),
    # with them to better than 0.99998, so its parity can be judged at 0.9999.
    if key.startswith("audio.") and key.endswith("bn3.weight"):
        value = (value * np.float32(0.2)).astype(np.float32)
    elif key.startswith("audio.att") and key.endswith("conv_point.weight"):
        value = (value * np.float32(0.1)).astype(np.float32)
    return value


def _base_rule(key: str, shape: tuple[int, ...], dtype: str, index: int, seed: int) -> np.ndarray:
    """Rules 1-12 of WEIGHTS.md: the first that matches the entry's dtype, name and shape."""
    if dtype == "int64":
        return np.zeros(shape, dtype=np.int64)
    rng = np.random.default_rng(seed * 100003 + index)
    n = rng.standard_normal(shape).astype(np.float32)
    last = key.rsplit(".", 1)[-1]
    if key == "audio.window":
        return blackman_harris(shape[0])
    if key.endswith("fbsp.m"):
        return 0.01 * n
    if key.endswith("fbsp.fb"):
        return 1.0 + 0.01 * n
    if key.endswith("fbsp.fc"):
        return (np.arange(shape[0]) + 0.01 * n).astype(np.float32)
    if key.startswith("logit_scale"):
        value = math.log(1 / 0.07) if key == "logit_scale" else math.log(10.0)
        return np.full(shape, value, dtype=np.float32)
    if last == "running_var":
        return 1.0 + 0.1 * np.abs(n)
    if last in ("running_mean", "bias"):
        return 0.02 * n
    if len(shape) == 1:
        return 1.0 + 0.1 * n
    if len(shape) == 4:
        return n * np.float32(math.sqrt(2.0 / (shape[1] * shape[2] * shape[3])))
    if len(shape) == 2:
        return 0.02 * n if "embedding" in key else n / np.float32(math.sqrt(shape[-1]))
    return 0.02 * n


def recipe_state_dict(layout: Iterable[tuple[str, tuple[int, ...], str]], seed: int = 1) -> dict[str, torch.Tensor]:
    """Weights for `layout` = [(key, shape, dtype)] in state-dict order (the index matters)."""
    return {key: torch.from_numpy(np.asarray(recipe_tensor(key, tuple(shape), dtype, i, seed)))
            for i, (key, shape, dtype) in enumerate(layout)}


def layout_of(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state_dict.items()]


def parity_model(layout_json: str | None = None, seed: int = 1):
    """The full-size AudioCLIP with the recipe's weights, loaded strictly, in eval mode.

    The layout defaults to the model's own state-dict order, which the tests prove equal
    (as a set of keys and shapes) to the fixture's `state_dict_layout.json`; the order
    matters for the recipe, so pass the fixture's file to reproduce its weights exactly.
    """
    import json

    from .model import AudioCLIP, AudioCLIPConfig

    model = AudioCLIP(AudioCLIPConfig.full())
    if layout_json is None:
        layout = layout_of(model.state_dict())
    else:
        with open(layout_json) as f:
            layout = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in json.load(f)]
    model.load_state_dict(recipe_state_dict(layout, seed), strict=True)
    return model.eval()
