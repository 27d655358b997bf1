"""Fine-tuning AudioCLIP on AudioSet music moods (stage "audio") or Manga109 genres ("image").

    python -m training.finetune --config configs/audio.toml [--set optim.lr=1e-4 ...]
    python -m training.finetune --resume runs/audio            # after a kill: next epoch on

Stage ``audio`` trains the audio tower (FBSP front end included, plus its filter-norm
regulariser) and the audio-text temperature on clip <-> mood-name pairs; stage ``image``
trains the image and text towers and the image-text temperature on page <-> genre-name
pairs. Every other parameter is frozen and its tower kept in eval mode (BatchNorm
statistics do not move). The recipe's defaults (SGD, Nesterov momentum 0.9, lr 5e-5,
weight decay 5e-4 except FBSP and temperatures, x0.96 per epoch) live in training.config.

The text of a batch item is its class name (runtime.labels prompts). A clip with several
moods is contrasted with the name of its primary mood (first in ontology order) or, with
``data.multilabel_text = "random"``, one of its moods drawn per epoch from the seed; with
``loss.targets = "label"`` every mood of the clip counts as a positive either way.

The run folder (``run_dir``) holds:
- ``config.toml``: the resolved config (reads back to the same run);
- ``metrics.jsonl``: one JSON line per epoch (losses, lr, validation loss and mAP/accuracy);
- ``last.pt`` / ``best.pt``: checkpoints in training.checkpoints' format (best = lowest
  validation loss by default), loadable by `load_model` and by the export;
- ``state.pt``: everything a resume needs (weights, optimizer, scheduler, AMP scaler,
  epoch, RNG states, history, known-bad clips), tensors and plain values only so it loads
  with ``weights_only=True``.
Every file is written to a temporary name and renamed, state.pt first: a kill at any
moment leaves a run that resumes at the epoch after the last one state.pt records, and a
resumed run ends with the same weights as an uninterrupted one (each epoch's shuffling,
augmentation and RNG are pure functions of (seed, epoch)).

Clips or pages that cannot be decoded (missing, corrupt, silent: runtime's InputError) are
skipped, counted, named in the metrics and left out of later epochs; they never stop a run.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: say which extra is missing, before importing it
    from runtime.extras import exit_unless_installed

    exit_unless_installed("python -m training.finetune", "train")

import argparse
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from runtime.errors import InputError, MangaMusicError, one_line
from runtime.labels import GENRE_LABELS, GENRES, MOOD_LABELS, MOODS
from runtime.manifest import ImagePreprocess
from training.batchnorm import precise_batchnorm
from training.checkpoints import CheckpointError, atomic_torch_save, load_model, save_checkpoint
from training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_config,
    read_toml,
)
from training.losses import clip_pair_loss, normalise, positives_multi, positives_single
from training.metrics import mean_average_precision, per_class_accuracy, softmax, top1_accuracy
from training.model import AudioCLIP, AudioCLIPConfig

log = logging.getLogger("manga_music.training")

STATE_FORMAT = "manga-music-train-state"
STATE_VERSION = 1
# Keys that may differ between a run's saved config and a resume of it without changing
# what is computed (epochs extends or shortens the schedule; the rest are where and how loud).
RESUME_MUTABLE = ("epochs", "device", "progress", "threads", "data.num_workers")
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RunResult:
    """What a finished run left behind. `history` holds one dict per epoch (metrics.jsonl)."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val_loss: float
    epochs_run: int  # epochs computed by this call (0 if the run was already complete)
    history: tuple[dict, ...]
    skipped: tuple[str, ...]  # "path: reason" of every item that could not be read
    split: str
    wall_seconds: float

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


# ---------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config: device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config: device {name!r} asked for, but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"config: device {name!r} is not supported (auto, cpu, cuda, cuda:N)")
    return dev


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for full precision. AMP is a CUDA feature here."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


# ---------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig) -> AudioCLIP:
    """The model the run starts from: random (seeded) weights or `model.init` loaded into them."""
    m = cfg.model
    arch = AudioCLIPConfig.tiny(m.tiny_embed_dim, m.tiny_resolution) if m.size == "tiny" else AudioCLIPConfig.full()
    torch.manual_seed(cfg.seed)
    if not m.init:
        return AudioCLIP(arch)
    # Partial checkpoints (audio-only, CLIP-only) are loaded into a model of `arch`; full
    # ones rebuild their own config when they carry one (our format).
    loaded = load_model(m.init, config=arch)
    for note in loaded.notes:
        log.info("%s: %s", m.init, note)
    return loaded.model


def trainable_names(model: AudioCLIP, stage: str, train_logit_scale: bool) -> list[str]:
    if stage == "audio":
        keep = lambda n: n.startswith("audio.") or (train_logit_scale and n == "logit_scale_at")  # noqa: E731
    else:
        keep = lambda n: (n.startswith("visual.") or n.startswith(_TEXT_PREFIXES)  # noqa: E731
                          or (train_logit_scale and n == "logit_scale"))
    return [n for n, p in model.named_parameters() if keep(n) and p.numel() > 0]


def _no_decay(name: str) -> bool:
    # The recipe: no weight decay on the FBSP filter parameters and the temperatures.
    return name.startswith("audio.fbsp.") or name.startswith("logit_scale")


def freeze_for_stage(model: AudioCLIP, stage: str, train_logit_scale: bool) -> list[str]:
    names = set(trainable_names(model, stage, train_logit_scale))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return sorted(names)


def set_train_mode(model: AudioCLIP, stage: str) -> None:
    """Trained towers in train mode, frozen ones in eval mode (their BatchNorm stays put)."""
    model.eval()
    if stage == "audio":
        model.audio.train()
    else:
        model.visual.train()
        model.transformer.train()


def make_optimizer(model: AudioCLIP, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Three groups: decayed weights; FBSP (no decay, lr x fbsp_lr_scale); temperatures (no decay)."""
    o = cfg.optim
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fbsp = lambda n: n.startswith("audio.fbsp.")  # noqa: E731
    groups = [
        {"params": [p for n, p in named if not _no_decay(n)], "weight_decay": o.weight_decay, "lr": o.lr},
        {"params": [p for n, p in named if fbsp(n)], "weight_decay": 0.0, "lr": o.lr * o.fbsp_lr_scale},
        {"params": [p for n, p in named if _no_decay(n) and not fbsp(n)], "weight_decay": 0.0, "lr": o.lr},
    ]
    groups = [g for g in groups if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr)


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StageData:
    """The records of one stage, split, with the class names the text side uses."""

    train: tuple
    val: tuple
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    split: str
    notes: tuple[str, ...] = ()


def check_paths(cfg: TrainConfig, model_init: bool = True) -> None:
    """Fail in a second, naming the key, when a configured file or folder is not there."""
    d = cfg.data
    wanted = [("model.init", cfg.model.init, "file")] if model_init else []
    if cfg.stage == "audio":
        wanted += [("data.audio_folders", d.audio_folders, "dir")] if d.audio_folders else (
            [("data.segments", s, "file") for s in d.segments]
            + [("data.ontology", d.ontology, "file"), ("data.clips", d.clips, "dir")])
    else:
        wanted += [("data.image_folders", d.image_folders, "dir")] if d.image_folders else [
            ("data.manga_root", d.manga_root, "dir"), ("data.genres", d.genres, "file")]
    for key, path, kind in wanted:
        if not path:
            continue
        p = Path(path)
        if not (p.is_file() if kind == "file" else p.is_dir()):
            raise ConfigError(f"config: {key} = {path}: no such {'file' if kind == 'file' else 'folder'}")


def load_stage_data(cfg: TrainConfig) -> StageData:
    """Read the stage's data set from the configured layout and split it (seeded, stratified)."""
    d = cfg.data
    notes: list[str] = []
    if cfg.stage == "audio":
        from training.data.audioset import AudioSetMoods

        if d.audio_folders:
            ds = AudioSetMoods.from_class_folders(d.audio_folders)
            if ds.ignored:
                notes.append(f"ignored folders that are not moods: {', '.join(ds.ignored)}")
        elif d.segments and d.ontology and d.clips:
            ds = AudioSetMoods(list(d.segments), d.ontology, d.clips)
            if ds.missing:
                notes.append(f"{ds.missing} mood clip(s) listed in the segments CSV are missing from {d.clips}")
            if ds.unsupported:
                notes.append(f"{len(ds.unsupported)} clip(s) only in formats libsndfile cannot decode (e.g. "
                             f"{ds.unsupported[0].name}); convert them to WAV/FLAC/OGG")
        else:
            raise ConfigError("config: stage audio needs data.segments + data.ontology + data.clips, "
                              "or data.audio_folders")
        if len(ds) < 2:
            raise ConfigError(f"config: the AudioSet mood data holds {len(ds)} usable clip(s); need at least 2")
        split = ds.split(d.val_fraction, d.split_seed)
        classes, prompts = MOODS, tuple(MOOD_LABELS.prompts())
    else:
        from training.data.folders import IMAGE_EXTENSIONS, LabelFolders
        from training.data.manga109 import Manga109
        from training.data.splits import make_split, stratified_partition

        if d.image_folders:
            folders = LabelFolders(d.image_folders, IMAGE_EXTENSIONS, classes=GENRES)
            records = folders.records
            if folders.ignored:
                notes.append(f"ignored folders that are not genres: {', '.join(folders.ignored)}")
            if d.split_level == "volume":
                raise ConfigError("config: data.split_level = 'volume' needs Manga109 (folders have no volumes)")
            tr, va = stratified_partition([str(r.path) for r in records], [r.index for r in records],
                                          d.val_fraction, d.split_seed)
            split = make_split(records, tr, va, "page", d.split_seed, d.val_fraction)
        elif d.manga_root and d.genres:
            manga = Manga109(d.manga_root, d.genres)
            if manga.unplaced:
                notes.append(f"{len(manga.unplaced)} volume(s) without a genre or pages: "
                             + ", ".join(manga.unplaced_titles))
            if len(manga) < 2:
                raise ConfigError(f"config: Manga109 at {d.manga_root} gives {len(manga)} page(s) with a genre")
            split = manga.split(d.val_fraction, d.split_seed, d.split_level)
        else:
            raise ConfigError("config: stage image needs data.manga_root + data.genres, or data.image_folders")
        classes, prompts = GENRES, tuple(GENRE_LABELS.prompts())
    if len(split.train) < 2 or not split.val:
        raise ConfigError(f"config: the split leaves {len(split.train)} train / {len(split.val)} val item(s)")
    return StageData(split.train, split.val, tuple(classes), prompts, split.describe(), tuple(notes))


def _record_labels(record: Any) -> tuple[int, ...]:
    labels = getattr(record, "labels", None)
    return tuple(labels) if labels is not None else (int(record.target),)


class _Guarded(Dataset):
    """Wraps a data set so an unreadable item becomes (index, None, reason) instead of an exception."""

    def __init__(self, inner: Dataset, num_classes: int):
        self.inner = inner
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __getitem__(self, i: int):
        try:
            x, y = self.inner[i]
        except InputError as exc:
            return i, None, str(exc)
        if not torch.is_tensor(y) or y.ndim == 0:  # a page's class index -> one-hot
            onehot = torch.zeros(self.num_classes)
            onehot[int(y)] = 1.0
            y = onehot
        return i, x, y


class Batch(NamedTuple):
    index: torch.Tensor  # int64 [B] into the data set
    x: torch.Tensor
    y: torch.Tensor  # multi-hot float [B, C]
    bad: tuple  # ((index, reason), ...) of items dropped from this batch


def collate(items: Sequence[tuple]) -> Batch:
    ok = [it for it in items if it[1] is not None]
    bad = tuple((it[0], it[2]) for it in items if it[1] is None)
    if not ok:
        return Batch(torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0), bad)
    return Batch(torch.tensor([it[0] for it in ok], dtype=torch.long), torch.stack([it[1] for it in ok]),
                 torch.stack([it[2] for it in ok]).float(), bad)


def build_datasets(cfg: TrainConfig, data: StageData, model_cfg: AudioCLIPConfig) -> tuple[_Guarded, _Guarded]:
    if cfg.stage == "audio":
        from training.data.audioset import ClipDataset
        from training.data.augment import audio_train_augment

        sr = model_cfg.audio.sample_rate
        aug = audio_train_augment(sr, cfg.data.clip_seconds) if cfg.data.audio_augment else None
        common = dict(sample_rate=sr, clip_seconds=cfg.data.clip_seconds, int16_range=cfg.data.int16_range,
                      seed=cfg.seed)
        train = ClipDataset(data.train, augment=aug, **common)
        val = ClipDataset(data.val, augment=None, **common)
    else:
        from training.data.augment import ImageTransform, PageAwareCrop
        from training.data.manga109 import PageDataset

        pre = ImagePreprocess(size=model_cfg.image.resolution)
        crop = PageAwareCrop() if cfg.data.page_aware_crop else None
        train = PageDataset(data.train, transform=ImageTransform(pre, crop), seed=cfg.seed)
        val = PageDataset(data.val, transform=ImageTransform(pre, None), seed=cfg.seed)
    n = len(data.classes)
    return _Guarded(train, n), _Guarded(val, n)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, exclude: set[int] = frozenset(),
                  shuffle: bool = True) -> list[list[int]]:
    """Index batches of one epoch: a permutation that depends only on (seed, epoch).

    Known-bad items are left out; a trailing batch of one item is dropped (a contrastive
    batch of one has no negatives and its loss is 0).
    """
    order = np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x5EED]).permutation(n) if shuffle else np.arange(n)
    order = [int(i) for i in order if int(i) not in exclude]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < 2:
        batches.pop()
    return batches


def text_classes(batch: Batch, stage: str, mode: str, seed: int, epoch: int) -> torch.Tensor:
    """The class whose name is each item's text (see module docstring for multi-label clips)."""
    if stage == "image" or mode == "primary":
        return batch.y.argmax(dim=1)  # one-hot: the label; multi-hot: its first mood
    out = []
    for idx, row in zip(batch.index.tolist(), batch.y):
        labels = torch.nonzero(row > 0).flatten().tolist()
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, int(idx), 0x7E47])
        out.append(labels[int(rng.integers(len(labels)))])
    return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------------------- steps


class _Tokens:
    """Tokenised prompts of the stage's classes, built once."""

    def __init__(self, prompts: Sequence[str], context_length: int):
        from runtime.tokenizer import default_tokenizer

        tokens = default_tokenizer()(list(prompts))
        if tokens.shape[1] != context_length:
            raise ConfigError(f"tokenizer context {tokens.shape[1]} != model context {context_length}")
        self.tokens = torch.from_numpy(tokens)


def class_text_embeddings(model: AudioCLIP, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    return model.encode_text(tokens.to(device))


@contextmanager
def shared_fbsp_weights(model: AudioCLIP):
    """Compute the FBSP filter weights once for a step's forward pass and its regulariser.

    Both call ``fbsp.weights(n_fft)``; building the 1025 x 2048 complex filters with autograd
    is a large part of a tiny model's step, and the result is identical, so the second call
    reuses the first (same graph, same gradient).
    """
    fbsp = model.audio.fbsp
    original = fbsp.weights
    cache: dict[int, Any] = {}

    def weights(in_features: int):
        if in_features not in cache:
            cache[in_features] = original(in_features)
        return cache[in_features]

    fbsp.weights = weights
    try:
        yield
    finally:
        del fbsp.weights  # back to the class's method


def batch_loss(model: AudioCLIP, cfg: TrainConfig, batch: Batch, text_cls: torch.Tensor, device: torch.device,
               tokens: torch.Tensor, frozen_text: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(total loss, {"contrastive", "regulariser"} floats, item embeddings) of one batch."""
    x, y, t_cls = batch.x.to(device, non_blocking=True), batch.y.to(device), text_cls.to(device)
    scales = model.logit_scales()
    if cfg.stage == "audio":
        emb = model.encode_audio(x)
        text = frozen_text[t_cls]  # the text tower is frozen: its 7 embeddings are constants
        scale = scales["audio_text"]
        positives = positives_multi(y, t_cls)
    else:
        emb = model.encode_image(x)
        # Encode each class present once and gather: the same gradient as encoding B copies.
        uniq, inverse = torch.unique(t_cls, return_inverse=True)
        text = model.encode_text(tokens[uniq.cpu()].to(device))[inverse]
        scale = scales["image_text"]
        positives = positives_single(t_cls)
    contrastive = clip_pair_loss(emb, text, scale, cfg.loss.targets, positives)
    loss = contrastive
    reg = torch.zeros((), device=device)
    if cfg.stage == "audio" and cfg.loss.fbsp_regulariser > 0:
        reg = model.audio.fbsp.regulariser(model.config.audio.n_fft).float()
        loss = loss + cfg.loss.fbsp_regulariser * reg
    return loss, {"contrastive": float(contrastive.detach()), "regulariser": float(reg.detach())}, emb


def train_step(model: AudioCLIP, cfg: TrainConfig, optimizer: torch.optim.Optimizer, scaler, batch: Batch,
               text_cls: torch.Tensor, device: torch.device, tokens: torch.Tensor,
               frozen_text: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> tuple[float, dict]:
    """One optimisation step on one batch: forward, backward, clipping, update. Returns (loss, parts)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None), \
            shared_fbsp_weights(model):
        loss, parts, _ = batch_loss(model, cfg, batch, text_cls, device, tokens, frozen_text)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {float(loss.detach())}; lower optim.lr (or optim.fbsp_lr_scale) "
                                 "or check the data")
    scaler.scale(loss).backward()
    fbsp = [p for n, p in model.named_parameters()
            if n.startswith("audio.fbsp.") and p.grad is not None] if cfg.optim.fbsp_grad_clip > 0 else []
    if fbsp or cfg.optim.grad_clip_norm > 0:
        scaler.unscale_(optimizer)
        if fbsp:
            torch.nn.utils.clip_grad_norm_(fbsp, cfg.optim.fbsp_grad_clip)
        if cfg.optim.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                           cfg.optim.grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach()), parts


def recalibrate_batchnorm(model: AudioCLIP, stage: str, batches: Iterable[Batch], device: torch.device,
                          dtype: Optional[torch.dtype]) -> int:
    """Precise BN (`training.batchnorm`) for the stage's tower over `batches`; returns the
    number of batches used."""
    tower = model.audio if stage == "audio" else model.visual
    encode = model.encode_audio if stage == "audio" else model.encode_image

    def forward(batch: Batch) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            encode(batch.x.to(device))

    return precise_batchnorm(tower, batches, forward, size=lambda batch: len(batch.index))


@torch.no_grad()
def validate(model: AudioCLIP, cfg: TrainConfig, loader_batches: Callable[[], Any], device: torch.device,
             tokens: torch.Tensor, dtype: Optional[torch.dtype], classes: Sequence[str]) -> dict:
    """Validation loss (same loss, fixed batches) and the stage's metric over the whole val set.

    Audio: mAP over the moods of softmax(audio-text scale x cosine to each mood prompt);
    image: top-1 accuracy of the genre prompts. Both from one pass over the val set.
    """
    model.eval()
    text_all = class_text_embeddings(model, tokens, device).float()
    frozen = text_all if cfg.stage == "audio" else None
    losses, weights, embs, ys, bad = [], [], [], [], []
    for batch in loader_batches():
        bad.extend(batch.bad)
        if len(batch.index) == 0:
            continue
        t_cls = text_classes(batch, cfg.stage, "primary", cfg.seed, 0)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None), \
                shared_fbsp_weights(model):
            loss, parts, emb = batch_loss(model, cfg, batch, t_cls, device, tokens, frozen)
        if len(batch.index) >= 2:
            losses.append(parts["contrastive"])
            weights.append(len(batch.index))
        embs.append(normalise(emb).cpu())
        ys.append(batch.y)
    if not embs:
        raise InputError("no validation item could be read")
    emb = torch.cat(embs).numpy()
    y = torch.cat(ys).numpy()
    scales = model.logit_scales()
    scale = float(scales["audio_text" if cfg.stage == "audio" else "image_text"])
    logits = scale * emb @ normalise(text_all).cpu().numpy().T
    out: dict[str, Any] = {
        "val_loss": float(np.average(losses, weights=weights)) if losses else float("nan"),
        "val_items": int(len(emb)),
    }
    if cfg.stage == "audio":
        res = mean_average_precision(softmax(logits, axis=1), y)
        out.update(val_metric=res.mean, val_map=res.mean,
                   val_per_class={c: res.per_class[i] for i, c in enumerate(classes)})
    else:
        labels = y.argmax(axis=1)
        acc = top1_accuracy(logits, labels)
        per = per_class_accuracy(logits, labels, len(classes))
        out.update(val_metric=acc, val_accuracy=acc,
                   val_per_class={c: per[i].accuracy for i, c in enumerate(classes) if per[i].total})
    out["_bad"] = bad
    return out


# ---------------------------------------------------------------------------- files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; a missing number reads as null
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_metrics(run_dir: Path, history: Sequence[dict]) -> None:
    text = "".join(json.dumps(_json_safe(h), sort_keys=True) + "\n" for h in history)
    _atomic_write_bytes(run_dir / "metrics.jsonl", text.encode("utf-8"))


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": s["numpy_key"].numpy().astype(np.uint32), "pos": s["numpy_pos"]},
                         "has_gauss": 0, "gauss": 0.0})


def _seed_epoch(seed: int, epoch: int) -> None:
    # Every epoch starts from RNG states that depend only on (seed, epoch), so an epoch run
    # after a resume draws exactly what it would have drawn in one go.
    s = (int(seed) * 1_000_003 + int(epoch)) & 0x7FFFFFFF
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: name it, do not guess
        raise CheckpointError(f"{path}: cannot read the training state ({one_line(exc, 160)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a manga-music training state")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: training state version {state.get('version')}, this code reads {STATE_VERSION}")
    return state


def _diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = prefix + k
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_configs(va, vb, key + ".")
        elif va != vb and key not in RESUME_MUTABLE:
            out.append(f"{key} ({va!r} in the run, {vb!r} now)")
    return out


# ---------------------------------------------------------------------------- the run


def _say(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        try:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except ImportError:
            print(msg, file=sys.stderr)
    log.info(msg)


def _progress(iterable, cfg: TrainConfig, total: int, desc: str):
    if not cfg.progress:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def run_training(cfg: TrainConfig, *, resume: bool = False,
                 on_epoch_end: Optional[Callable[[int, dict], None]] = None) -> RunResult:
    """Train one stage into ``cfg.run_dir``; with resume=True continue the run found there.

    ``on_epoch_end(epoch, metrics)`` is called after each epoch's files are written (a test
    raises from it to simulate a kill). Returns the RunResult; raises ConfigError /
    InputError / CheckpointError (one-line messages) on unusable input.
    """
    t_start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    state_path = run_dir / "state.pt"
    state: Optional[dict] = None
    if resume:
        if not state_path.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no state.pt: no epoch of this run was completed)")
        state = _load_state(state_path)
        diffs = _diff_configs(state["config"], cfg.to_dict())
        if diffs:
            raise ConfigError(f"{run_dir}: resuming with a different config: {'; '.join(diffs[:4])}")
    elif state_path.is_file():
        raise ConfigError(f"{run_dir}: already holds a run (state.pt); resume it with --resume {run_dir} "
                          "or choose another run_dir")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device)
    if cfg.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if device.type == "cuda":
            # cuBLAS reads this when it starts; deterministic kernels where CUDA has them, a
            # warning (not a failure) where it has none (e.g. some scatter backward passes).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

    check_paths(cfg, model_init=state is None)
    data = load_stage_data(cfg)
    for note in data.notes:
        _say(cfg, f"note: {note}")
    if state is not None and state.get("split") != data.split:
        raise ConfigError(f"{run_dir}: the data changed since this run started ({state.get('split')} then, "
                          f"{data.split} now); start a new run")
    if state is not None:
        # The weights come from state.pt: rebuild the architecture it records instead of
        # reading model.init again (which may have moved since).
        model = AudioCLIP(AudioCLIPConfig.from_dict(state["model_config"]))
    else:
        model = build_model(cfg)
    names = freeze_for_stage(model, cfg.stage, cfg.loss.train_logit_scale)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.optim.lr_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    tokens = _Tokens(data.prompts, model.config.text.context_length).tokens
    train_ds, val_ds = build_datasets(cfg, data, model.config)

    history: list[dict] = []
    bad: dict[int, str] = {}  # train index -> reason
    bad_val: dict[int, str] = {}
    best_epoch, best_loss, best_score = 0, float("inf"), float("-inf")
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        history = [dict(h) for h in state["history"]]
        bad = {int(k): v for k, v in state["bad_train"]}
        bad_val = {int(k): v for k, v in state["bad_val"]}
        best_epoch, best_loss, best_score = int(state["best_epoch"]), float(state["best_val_loss"]), float(
            state["best_score"])
        start_epoch = int(state["epoch"])
        _say(cfg, f"resuming {run_dir} after epoch {start_epoch} of {cfg.epochs}")
        _repair_checkpoints(run_dir, model, cfg, data, state)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Rewritten on resume too: `epochs` may have been extended.
    _atomic_write_bytes(run_dir / "config.toml", config_to_toml(cfg).encode("utf-8"))

    n_params = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    _say(cfg, f"stage {cfg.stage}: {n_params / 1e6:.2f} M trainable parameters on {device}"
              f"{f' with {dtype}'.replace('torch.', '') if dtype else ''}; {data.split}; loss targets "
              f"{cfg.loss.targets!r}")

    pin = device.type == "cuda"

    def loader(ds: _Guarded, batches: list[list[int]]) -> DataLoader:
        return DataLoader(ds, batch_sampler=batches, num_workers=cfg.data.num_workers, collate_fn=collate,
                          pin_memory=pin)

    val_batches = epoch_batches(len(val_ds), cfg.eval_batch, cfg.seed, 0, shuffle=False)
    # Validation keeps a lone trailing item: the metric wants every held-out clip or page.
    if len(val_ds) % cfg.eval_batch == 1:
        val_batches.append([len(val_ds) - 1])
    epochs_run = 0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        _seed_epoch(cfg.seed, epoch)
        train_ds.set_epoch(epoch)
        frozen_text = None
        if cfg.stage == "audio":
            with torch.no_grad():
                model.eval()
                frozen_text = class_text_embeddings(model, tokens, device).float()
        set_train_mode(model, cfg.stage)
        batches = epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, epoch, set(bad))
        if cfg.max_steps_per_epoch:
            batches = batches[:cfg.max_steps_per_epoch]
        if not batches:
            raise InputError("no training batch left: every training item failed to load")
        sums = {"loss": 0.0, "contrastive": 0.0, "regulariser": 0.0}
        items = steps = 0
        lr = optimizer.param_groups[0]["lr"]
        bar = _progress(loader(train_ds, batches), cfg, len(batches), f"epoch {epoch}/{cfg.epochs}")
        for batch in bar:
            for i, reason in batch.bad:
                if i not in bad:
                    bad[i] = reason
                    _say(cfg, f"skipped: {reason}")
            if len(batch.index) < 2:
                continue
            t_cls = text_classes(batch, cfg.stage, cfg.data.multilabel_text, cfg.seed, epoch)
            try:
                loss, parts = train_step(model, cfg, optimizer, scaler, batch, t_cls, device, tokens, frozen_text,
                                         dtype)
            except FloatingPointError as exc:
                raise InputError(f"epoch {epoch}: {exc}") from None
            n = len(batch.index)
            sums["loss"] += loss * n
            sums["contrastive"] += parts["contrastive"] * n
            sums["regulariser"] += parts["regulariser"] * n
            items += n
            steps += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.4f}")
        if steps == 0:
            raise InputError(f"epoch {epoch}: no batch of two or more readable items")
        scheduler.step()
        train_seconds = time.perf_counter() - t0

        if cfg.bn_recalibrate_batches:
            recalibrate_batchnorm(model, cfg.stage, loader(train_ds, batches[:cfg.bn_recalibrate_batches]), device,
                                  dtype)
        val = validate(model, cfg, lambda: loader(val_ds, val_batches), device, tokens, dtype, data.classes)
        for i, reason in val.pop("_bad"):
            if i not in bad_val:
                bad_val[i] = reason
                _say(cfg, f"skipped (val): {reason}")
        score = val["val_metric"] if math.isfinite(val["val_metric"]) else float("-inf")
        improved = (val["val_loss"] < best_loss) if cfg.select_best_by == "val_loss" else (score > best_score)
        if improved or best_epoch == 0:
            best_epoch, best_loss, best_score = epoch, val["val_loss"], score
        scales = model.logit_scales()
        row = {
            "epoch": epoch, "lr": lr, "train_loss": sums["loss"] / items,
            "train_contrastive": sums["contrastive"] / items, "train_regulariser": sums["regulariser"] / items,
            "train_items": items, "steps": steps, "seconds_per_step": train_seconds / steps,
            "logit_scale": float(scales["audio_text" if cfg.stage == "audio" else "image_text"].detach()),
            **val, "best": best_epoch == epoch, "skipped_train": len(bad), "skipped_val": len(bad_val),
            "skipped": sorted(bad.values()) + sorted(bad_val.values()),
            "epoch_seconds": time.perf_counter() - t0,
        }
        history.append(row)
        _save_epoch(run_dir, model, optimizer, scheduler, scaler, cfg, data, epoch, history, bad, bad_val,
                    best_epoch, best_loss, best_score)
        epochs_run += 1
        metric_name = "mAP" if cfg.stage == "audio" else "acc"
        _say(cfg, f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                  f"val {metric_name} {row['val_metric']:.3f}{' (best)' if row['best'] else ''}, "
                  f"{row['epoch_seconds']:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if not history:
        raise ConfigError(f"{run_dir}: epochs = {cfg.epochs}: nothing to train")
    skipped = tuple(sorted(bad.values()) + sorted(bad_val.values()))
    if skipped:
        _say(cfg, f"{len(skipped)} item(s) could not be read and were skipped (listed in metrics.jsonl)")
    return RunResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", best_epoch, best_loss, epochs_run,
                     tuple(history), skipped, data.split, time.perf_counter() - t_start)


def _checkpoint_meta(cfg: TrainConfig, data: StageData, epoch: int, row: dict) -> dict:
    return {"stage": cfg.stage, "epoch": epoch, "split": data.split, "config": cfg.to_dict(),
            "val_loss": row.get("val_loss"), "val_metric": row.get("val_metric"),
            "loss_targets": cfg.loss.targets}


def _save_epoch(run_dir: Path, model, optimizer, scheduler, scaler, cfg, data, epoch, history, bad, bad_val,
                best_epoch, best_loss, best_score) -> None:
    """state.pt first (the resume point), then last.pt, best.pt, metrics.jsonl: each atomic."""
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "epoch": epoch, "config": cfg.to_dict(),
        "model_config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": _rng_state(), "history": [_json_safe(h) for h in history],
        "bad_train": [[int(k), v] for k, v in bad.items()], "bad_val": [[int(k), v] for k, v in bad_val.items()],
        "best_epoch": best_epoch, "best_val_loss": best_loss, "best_score": best_score, "split": data.split,
    }
    atomic_torch_save(state, run_dir / "state.pt")
    meta = _checkpoint_meta(cfg, data, epoch, history[-1])
    save_checkpoint(run_dir / "last.pt", model, meta)
    if best_epoch == epoch:
        save_checkpoint(run_dir / "best.pt", model, meta)
    write_metrics(run_dir, history)


def _repair_checkpoints(run_dir: Path, model: AudioCLIP, cfg: TrainConfig, data: StageData, state: dict) -> None:
    """After a kill between state.pt and the files after it, bring them up to state.pt's epoch."""
    epoch = int(state["epoch"])
    row = state["history"][-1] if state["history"] else {}

    def saved_epoch(path: Path) -> Optional[int]:
        try:
            return int(load_model(path).meta.get("epoch", -1))
        except CheckpointError:
            return None

    if saved_epoch(run_dir / "last.pt") != epoch:
        save_checkpoint(run_dir / "last.pt", model, _checkpoint_meta(cfg, data, epoch, row))
    if int(state["best_epoch"]) == epoch and saved_epoch(run_dir / "best.pt") != epoch:
        save_checkpoint(run_dir / "best.pt", model, _checkpoint_meta(cfg, data, epoch, row))
    write_metrics(run_dir, state["history"])


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description="Fine-tune AudioCLIP: stage 'audio' (AudioSet moods, audio tower + FBSP) or 'image' "
                    "(Manga109 genres, image + text towers). Writes config.toml, metrics.jsonl, last.pt, best.pt "
                    "and state.pt into the run folder.",
        epilog="examples:\n"
               "  python -m training.finetune --config configs/audio.toml --set data.clips=/data/audioset/clips\n"
               "  python -m training.finetune --config configs/image.toml --set loss.targets=diagonal "
               "--set run_dir=runs/image-paper\n"
               "  python -m training.finetune --resume runs/audio          # continue after a kill\n"
               "  python -m training.finetune --resume runs/audio --set epochs=40\n"
               "Keys: see configs/*.toml and training/config.py.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="CFG.toml", help="run configuration (TOML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. optim.lr=1e-4 or loss.targets=label (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR at the epoch after its last completed one "
                        f"(only {', '.join(RESUME_MUTABLE)} may change)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def resolve_cli_config(config: Optional[str], overrides: Sequence[str], resume: Optional[str]) -> TrainConfig:
    if resume is None:
        if config is None:
            raise ConfigError("give --config CFG.toml (or --resume RUN_DIR)")
        return load_config(config, overrides)
    saved_path = Path(resume) / "config.toml"
    if not saved_path.is_file():
        raise ConfigError(f"{resume}: not a run folder (no config.toml)")
    saved = read_toml(saved_path)
    if config is not None:
        # The same command line with --resume added: must describe the same run.
        cfg = load_config(config, overrides)
        if Path(cfg.run_dir).resolve() != Path(resume).resolve():
            raise ConfigError(f"--resume {resume} but the config's run_dir is {cfg.run_dir}")
        return cfg
    return config_from_dict(apply_overrides(saved, overrides))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = resolve_cli_config(args.config, args.overrides, args.resume)
        if args.quiet:
            cfg = cfg.replace(progress=False)
        result = run_training(cfg, resume=args.resume is not None)
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch is kept: resume with "
              f"python -m training.finetune --resume {cfg.run_dir if 'cfg' in locals() else 'RUN_DIR'}",
              file=sys.stderr)
        return 130
    except (MangaMusicError, OSError) as exc:
        if args.debug:
            raise
        msg = one_line(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    f = result.final
    name = "mAP" if cfg.stage == "audio" else "accuracy"
    print(f"done: {len(result.history)} epoch(s) in {result.run_dir}; best epoch {result.best_epoch} "
          f"(val loss {result.best_val_loss:.4f}); last val {name} {f.get('val_metric', float('nan')):.3f}; "
          f"best checkpoint {result.best_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
