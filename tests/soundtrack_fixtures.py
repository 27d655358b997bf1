"""Synthetic stories and catalogues for the soundtrack tests: embeddings whose answers are known.

A "story" is a unit centre; its pages are the centre plus a little noise. Each track of a
catalogue is written for one story (its pooled embedding near that story's centre), with
windows that drift from a neighbouring direction towards the centre, so the best window is
known. No model, no files: the planner is numpy on embeddings.
"""
from __future__ import annotations

import numpy as np

from runtime.soundtrack import Catalogue

D = 32


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def centres(n: int, seed: int = 0) -> np.ndarray:
    """``n`` well separated story directions (orthonormal)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))
    return q[:n].astype(np.float32)


def pages(story: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.15) -> np.ndarray:
    return unit(story + noise * rng.normal(size=(n, D)) / np.sqrt(D) * np.sqrt(D / 4))


def catalogue(stories: np.ndarray, per_story: list[int], duration: float = 60.0, windows: int = 6,
              hop: float = 5.0, seed: int = 1, fit_noise: float = 0.3) -> tuple[Catalogue, list[int]]:
    """Tracks for each story (``per_story[s]`` of them); returns the catalogue and each
    track's story. Window w of a track is a mix moving from an unrelated direction (w = 0)
    to the track's story (last window)."""
    rng = np.random.default_rng(seed)
    pooled, wins, starts, owner = [], [], [], []
    for s, count in enumerate(per_story):
        for _ in range(count):
            own = unit(stories[s] + fit_noise * unit(rng.normal(size=D)))
            other = unit(rng.normal(size=D))
            mix = np.linspace(0.0, 1.0, windows)[:, None]
            w = unit((1 - mix) * other + mix * own)
            wins.append(w)
            starts.append(np.arange(windows) * hop)
            pooled.append(unit(w.mean(axis=0)))
            owner.append(s)
    durations = [duration] * len(pooled)
    paths = [f"/music/story{o}_{i:02d}.ogg" for i, o in enumerate(owner)]
    return Catalogue.from_arrays(np.stack(pooled), wins, starts, durations, paths), owner


def chapter(stories: np.ndarray, runs: list[tuple[int, int]], seed: int = 2, noise: float = 0.15) -> np.ndarray:
    """Pages of runs (story index, pages) one after the other."""
    rng = np.random.default_rng(seed)
    return np.concatenate([pages(stories[s], n, rng, noise) for s, n in runs])
