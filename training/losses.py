"""The AudioCLIP contrastive loss, with the paper's diagonal targets or label-aware ones.

For one pair of modalities in a batch (audio-text or image-text), logits are
``scale * cos(x_i, t_j)``; the loss is the cross-entropy of the logits against their targets
plus the same for the transposed logits, summed (AUDIOCLIP.md, "Scores and training").

Two kinds of targets:

- ``"diagonal"`` (the paper's, plain InfoNCE): item i's only positive is text i, and every
  other text of the batch is a negative, including the texts of items with the same label.
- ``"label"``: every pair (i, j) whose labels agree is a positive; each row's targets are
  spread uniformly over its positives (soft targets normalised per row), the columns the same
  way for the transposed direction. For a multi-label clip, text j is a positive of clip i
  when text j's class is one of clip i's labels.

What the difference amounts to (measured, and pinned by tests/test_losses_metrics.py): when
every item of a class carries the *same* text, as in the paper (the class name), same-class
texts have identical embeddings, so their logit columns are identical and the two targets
give exactly the same loss and the same gradient: a softmax cannot push an item away from a
column identical to its target (both losses keep the floor log(copies) that the duplicates
impose). They differ, and "label" is the right one, as soon as same-label texts are not
identical or labels overlap: a clip labelled both happy and sad, contrasted with "Happy
music", is pushed away from every "Sad music" text of the batch by the diagonal targets and
towards it by the label-aware ones. With all labels distinct both are the same loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

TARGETS = ("diagonal", "label")


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows to unit length in float32 (the loss is computed in fp32 even under AMP)."""
    return F.normalize(x.float(), dim=-1)


def pair_logits(x: torch.Tensor, t: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``scale * cos`` between rows of x [B, D] and rows of t [B', D] -> [B, B']."""
    return scale * normalise(x) @ normalise(t).T


def positives_single(labels: torch.Tensor) -> torch.Tensor:
    """bool [B, B]: items i and j share their (single) class index."""
    labels = labels.reshape(-1)
    return labels[:, None] == labels[None, :]


def positives_multi(multi_hot: torch.Tensor, text_classes: torch.Tensor) -> torch.Tensor:
    """bool [B, B]: text j's class is one of item i's labels (multi-hot [B, C], classes [B])."""
    return multi_hot[:, text_classes.reshape(-1)] > 0


def soft_targets(positives: torch.Tensor) -> torch.Tensor:
    """Row-normalised float targets from a bool positive matrix (every row needs a positive)."""
    pos = positives.float()
    counts = pos.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        # A row without a positive has no defined target; that is a caller bug (the text of
        # item i is always drawn from item i's own labels, so the diagonal is positive).
        raise ValueError("a row of the positive matrix has no positive")
    return pos / counts


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets_ij log softmax(logits)_ij."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def contrastive_loss(
    logits: torch.Tensor,
    targets: str = "diagonal",
    positives: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """CE(logits, targets) + CE(logits.T, targets.T), summed as the reference does.

    ``logits`` [B, B] (items x texts). ``positives`` (bool [B, B]) is required for
    ``targets="label"``; the diagonal must be among them.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive logits must be square [B, B], got {tuple(logits.shape)}")
    logits = logits.float()
    if targets == "diagonal":
        idx = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, idx) + F.cross_entropy(logits.T, idx)
    if positives is None:
        raise ValueError('targets="label" needs the positive matrix')
    positives = positives.to(logits.device)
    if not bool(positives.diagonal().all()):
        raise ValueError("every item must be a positive of its own text (diagonal of positives)")
    return soft_cross_entropy(logits, soft_targets(positives)) + soft_cross_entropy(logits.T, soft_targets(positives.T))


def clip_pair_loss(
    x: torch.Tensor,
    t: torch.Tensor,
    scale: torch.Tensor | float,
    targets: str = "diagonal",
    positives: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The loss of one modality pair from raw embeddings: normalise, scale, contrast."""
    return contrastive_loss(pair_logits(x, t, scale), targets, positives)


__all__ = [
    "TARGETS",
    "clip_pair_loss",
    "contrastive_loss",
    "normalise",
    "pair_logits",
    "positives_multi",
    "positives_single",
    "soft_cross_entropy",
    "soft_targets",
]
