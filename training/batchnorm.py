"""Precise BatchNorm: recompute a trained tower's running statistics with its final weights.

During training, BatchNorm's running mean and variance are exponential averages of batch
statistics taken while the weights were still moving, so they lag the weights; that shows
after short runs. Re-estimating them as plain averages over some training batches, with
everything else frozen, fixes it. Used by fine-tuning (`training.finetune`) and the demo
recipe (`training.demo`).
"""
from __future__ import annotations

from typing import Callable, Iterable, TypeVar

import torch

B = TypeVar("B")


def precise_batchnorm(tower: torch.nn.Module, batches: Iterable[B], forward: Callable[[B], object],
                      size: Callable[[B], int] = len) -> int:
    """Reset every BatchNorm in ``tower`` and re-average its statistics over ``batches``.

    ``forward(batch)`` runs the tower on one batch (the caller picks the device, dtype and
    crop); batches of fewer than 2 items (``size``) are skipped, as train-mode BatchNorm
    cannot take a variance of one. Only BatchNorm buffers change; momentum and the train/eval
    mode are restored. Returns the number of batches used.
    """
    bns = [m for m in tower.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    was_training = tower.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts equally
    tower.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if size(batch) < 2:
                    continue
                forward(batch)
                used += 1
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        tower.train(was_training)
    return used
