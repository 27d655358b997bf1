"""Deterministic train/validation splits, stratified by label, optionally by group.

Used by both data sets: Manga109 pages (stratified by genre, at page or volume level) and
AudioSet clips (stratified by primary mood). A split depends only on the *set* of items,
the seed and the fraction, never on the order the items arrive in, so two machines that
list a folder differently still agree on which page is held out.
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Generic, Hashable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

LEVELS = ("page", "volume", "clip")


@dataclass(frozen=True)
class Split(Generic[T]):
    """A train/validation partition and how it was made (so a reported number can say)."""

    train: tuple[T, ...]
    val: tuple[T, ...]
    level: str
    seed: int
    val_fraction: float

    def describe(self) -> str:
        return (
            f"{self.level}-level split (seed {self.seed}, val_fraction {self.val_fraction:g}): "
            f"{len(self.train)} train / {len(self.val)} val"
        )


def _check_fraction(val_fraction: float) -> None:
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def _stratum_rng(seed: int, stratum: Hashable) -> np.random.Generator:
    # One generator per stratum, keyed by the stratum's name: adding or removing a class
    # does not reshuffle the others (a global generator consumed in order would).
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(stratum).encode("utf-8"))])


def _n_val(n: int, val_fraction: float) -> int:
    if n < 2 or val_fraction == 0.0:
        # A lone item cannot be on both sides; training is where it is useful.
        return 0
    # Round half up (Python's round() is banker's), then keep both sides non-empty.
    return min(max(int(math.floor(n * val_fraction + 0.5)), 1), n - 1)


def stratified_partition(
    keys: Sequence[Hashable],
    strata: Sequence[Hashable],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Return sorted (train, val) index lists; each stratum gives ~val_fraction to val.

    `keys` identify items (unique, mutually sortable); sorting by them inside each stratum
    before shuffling is what makes the result independent of the input order. A stratum of
    one item goes to train; strata of two or more always put at least one on each side.
    """
    _check_fraction(val_fraction)
    if len(keys) != len(strata):
        raise ValueError(f"{len(keys)} keys but {len(strata)} strata")
    if len(set(keys)) != len(keys):
        raise ValueError("split keys must be unique")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        members[s].append(i)
    train: list[int] = []
    val: list[int] = []
    for stratum, idx in members.items():
        idx = sorted(idx, key=lambda i: keys[i])
        order = _stratum_rng(seed, stratum).permutation(len(idx))
        n_val = _n_val(len(idx), val_fraction)
        val.extend(idx[j] for j in order[:n_val])
        train.extend(idx[j] for j in order[n_val:])
    return sorted(train), sorted(val)


def grouped_partition(
    groups: Sequence[Hashable],
    strata: Sequence[Hashable],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Like `stratified_partition`, but every item of one group lands on the same side.

    Groups (e.g. Manga109 volumes) are what get stratified, by their stratum (genre), so
    val_fraction counts groups, not items. A group whose items disagree on the stratum is
    an error: it cannot be stratified.
    """
    if len(groups) != len(strata):
        raise ValueError(f"{len(groups)} groups but {len(strata)} strata")
    group_stratum: dict[Hashable, Hashable] = {}
    for g, s in zip(groups, strata):
        if group_stratum.setdefault(g, s) != s:
            raise ValueError(f"group {g!r} has items in two strata: {group_stratum[g]!r} and {s!r}")
    names = list(group_stratum)
    g_train, g_val = stratified_partition(names, [group_stratum[g] for g in names], val_fraction, seed)
    val_groups = {names[i] for i in g_val}
    train = [i for i, g in enumerate(groups) if g not in val_groups]
    val = [i for i, g in enumerate(groups) if g in val_groups]
    return train, val


def make_split(
    items: Sequence[T], train_idx: Sequence[int], val_idx: Sequence[int], level: str, seed: int, val_fraction: float
) -> Split[T]:
    """Package index lists as a `Split` of the items themselves (input order kept)."""
    if level not in LEVELS:
        raise ValueError(f"unknown split level {level!r}; expected one of {LEVELS}")
    return Split(
        train=tuple(items[i] for i in train_idx),
        val=tuple(items[i] for i in val_idx),
        level=level,
        seed=seed,
        val_fraction=val_fraction,
    )
