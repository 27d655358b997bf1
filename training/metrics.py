"""Evaluation metrics, in numpy, computed on a whole held-out set at once.

- `average_precision`: AP of one class, the area under the precision-recall step curve
  with tied scores taken as one threshold (the definition scikit-learn uses):
  ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest first.
- `mean_average_precision`: AP per class and their mean over the classes that have at
  least one positive (a class with no positive has no AP; it is reported as NaN and left
  out of the mean, and `MAPResult.absent` names it).
- `top1_accuracy` / `per_class_accuracy` / `confusion_matrix` for single-label tasks.

The seed paper averaged mAP over batches, which makes the number depend on batch size and
order; here it is always computed over the whole set (issue 5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class from scores [N] and binary targets [N]; NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1) > 0
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in length")
    n_pos = int(targets.sum())
    if n_pos == 0:
        return float("nan")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    tp = np.cumsum(t)
    # Only the last position of a run of equal scores is a threshold: tied items enter
    # together, so their order (arbitrary) cannot change the AP.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp = tp[last_of_run].astype(np.float64)
    seen = (np.flatnonzero(last_of_run) + 1).astype(np.float64)
    precision = tp / seen
    recall = tp / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


@dataclass(frozen=True)
class MAPResult:
    """mAP over classes with positives, the AP of each class (NaN when absent), and which."""

    mean: float
    per_class: tuple[float, ...]
    absent: tuple[int, ...]
    positives: tuple[int, ...]


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> MAPResult:
    """scores [N, C] (any monotone confidence), multi-hot targets [N, C]."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be [N, C]")
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    present = [a for a in aps if not np.isnan(a)]
    return MAPResult(
        mean=float(np.mean(present)) if present else float("nan"),
        per_class=tuple(float(a) for a in aps),
        absent=tuple(c for c, a in enumerate(aps) if np.isnan(a)),
        positives=tuple(int(x) for x in (targets > 0).sum(axis=0)),
    )


def top1_accuracy(scores: np.ndarray, labels: Sequence[int]) -> float:
    """Fraction of rows whose highest score is at the true class; NaN for no rows."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(scores.argmax(axis=1) == labels))


def confusion_matrix(predicted: Sequence[int], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """int64 [true, predicted] counts."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return m


@dataclass(frozen=True)
class ClassAccuracy:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def per_class_accuracy(scores: np.ndarray, labels: Sequence[int], num_classes: int) -> tuple[ClassAccuracy, ...]:
    """Correct / total of each true class (a class with no item has total 0, accuracy NaN)."""
    cm = confusion_matrix(np.asarray(scores).argmax(axis=1), labels, num_classes)
    return tuple(ClassAccuracy(int(cm[c, c]), int(cm[c].sum())) for c in range(num_classes))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


__all__ = [
    "ClassAccuracy",
    "MAPResult",
    "average_precision",
    "confusion_matrix",
    "mean_average_precision",
    "per_class_accuracy",
    "softmax",
    "top1_accuracy",
]
