"""The run configuration of a fine-tuning run: every knob, one frozen dataclass per concept.

A run is described by a TOML file (``configs/audio.toml``, ``configs/image.toml``) plus
``--set key=value`` overrides (dotted keys: ``optim.lr=0.01``, ``loss.targets="label"``,
``epochs=3``). `load_config` reads and validates it: an unknown key, a wrong type or a
value outside its choices is a `ConfigError` naming the key. Keys a file leaves out take
the defaults below; ``epochs`` and ``batch_size`` default by stage to the paper's (audio:
30 epochs, batch 32; image: 50 epochs, batch 64).

Relative paths are taken relative to the current directory (where the command runs) and
stored absolute in the resolved config the run writes (``RUN_DIR/config.toml``), which
`load_config` reads back unchanged: that file alone reproduces the run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from runtime.errors import MangaMusicError

STAGES = ("audio", "image")
# The paper's recipe (AUDIOCLIP.md, DATASETS.md): 30 more epochs on AudioSet moods, 50 on Manga109.
STAGE_DEFAULTS: dict[str, dict[str, int]] = {
    "audio": {"epochs": 30, "batch_size": 32},
    "image": {"epochs": 50, "batch_size": 64},
}


class ConfigError(MangaMusicError):
    """A run configuration cannot be used (unknown key, wrong type, bad value, missing data)."""


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights come from.

    ``init``: a checkpoint to start from (AudioCLIP-Full-Training.pt, a previous run's
    best.pt, or a partial audio-only / CLIP-only file loaded into a ``size`` model);
    empty means random weights, which is only useful for tests and the demo model.
    """

    init: str = ""
    size: str = "full"  # "full" (the published architecture) or "tiny" (toy widths)
    tiny_embed_dim: int = 64
    tiny_resolution: int = 64


@dataclass(frozen=True)
class DataConfig:
    """Both data sets; a stage reads only its own (audio: AudioSet moods, image: Manga109)."""

    # AudioSet music moods: segments CSV(s) + ontology.json + a folder of clips ...
    segments: tuple[str, ...] = ()
    ontology: str = ""
    clips: str = ""
    # ... or one folder per mood name (the seed paper's layout).
    audio_folders: str = ""
    clip_seconds: float = 5.0
    audio_augment: bool = True
    # The model expects the int16 value range; false feeds [-1, 1] as the paper's code did
    # (about 90 dB too quiet), only to reproduce that mistake.
    int16_range: bool = True
    # The text of a clip with several moods: "primary" (its first mood in ontology order,
    # the same every epoch) or "random" (one of its moods, drawn per epoch from the seed).
    multilabel_text: str = "primary"
    # Manga109: release folder + genre table ...
    manga_root: str = ""
    genres: str = ""
    # ... or one folder per genre name (a user's own pages).
    image_folders: str = ""
    split_level: str = "page"  # "page" (the paper's) or "volume" (measures genre, not volume)
    page_aware_crop: bool = False
    val_fraction: float = 0.2
    split_seed: int = 0
    num_workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """The published recipe: SGD, momentum 0.9 Nesterov, lr 5e-5, weight decay 5e-4, x0.96 per epoch."""

    name: str = "sgd"  # "sgd" or "adamw"
    lr: float = 5e-5
    momentum: float = 0.9
    nesterov: bool = True
    # Not applied to the FBSP parameters and the logit scales (AUDIOCLIP.md).
    weight_decay: float = 5e-4
    lr_decay: float = 0.96  # exponential, per epoch
    # Learning-rate multiplier of the FBSP parameters (m, fb, fc). 1.0 is the recipe. Their
    # gradients are orders of magnitude larger than the trunk's (d/dm of |sinc|^m near m = 0
    # carries log|sinc|), so a learning rate far above the recipe's (tests, demo) needs ~1e-4 here.
    fbsp_lr_scale: float = 1.0
    # Largest L2 norm of the FBSP parameters' gradient, clipped on its own (0: off). Not in
    # the recipe: a guard. Measured on a random tiny model from the DFT init (m = 0) at the
    # recipe's lr 5e-5: the gradient of m is ~1e5 at step 1 and ~1e9 at step 2 (|sinc|^m has
    # an infinite slope where sinc crosses zero when m < 1), and the loss is NaN at step 3.
    fbsp_grad_clip: float = 1.0
    grad_clip_norm: float = 0.0  # 0: off


@dataclass(frozen=True)
class LossConfig:
    # "label": every same-label pair of the batch is a positive; "diagonal": the paper's InfoNCE.
    targets: str = "label"
    fbsp_regulariser: float = 1.0  # weight of the FBSP filter-norm penalty (audio stage)
    train_logit_scale: bool = True  # the stage's temperature (audio-text or image-text) learns too


@dataclass(frozen=True)
class TrainConfig:
    stage: str
    run_dir: str
    epochs: int
    batch_size: int
    seed: int = 0
    eval_batch_size: int = 0  # 0: same as batch_size (validation loss then sees the same batch shape)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
    amp: str = "auto"  # "auto" (bf16 on CUDA if supported, else fp16; off on CPU), "off", "bf16", "fp16"
    deterministic: bool = True
    threads: int = 0  # CPU threads for torch (0: torch's default); 1 is fastest on a busy shared machine
    max_steps_per_epoch: int = 0  # 0: whole epoch; >0 caps it (smoke runs, timing)
    # Before each validation, re-estimate the trained tower's BatchNorm running statistics
    # over this many training batches (0: off, the recipe). A pretrained tower's statistics
    # are already right; a tower trained from scratch for a few dozen steps lags far behind
    # its weights (momentum 0.1), and evaluates at chance until they catch up.
    bn_recalibrate_batches: int = 0
    select_best_by: str = "val_loss"  # "val_loss" (the recipe) or "val_metric" (mAP / accuracy)
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    @classmethod
    def for_stage(cls, stage: str, run_dir: str | os.PathLike, **kw: Any) -> "TrainConfig":
        """A config with the stage's defaults; keyword arguments override (sections as dicts or dataclasses)."""
        d: dict[str, Any] = {"stage": stage, "run_dir": str(run_dir)}
        for k, v in kw.items():
            d[k] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        return config_from_dict(d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


_CHOICES: dict[str, tuple[str, ...]] = {
    "stage": STAGES,
    "amp": ("auto", "off", "bf16", "fp16"),
    "select_best_by": ("val_loss", "val_metric"),
    "model.size": ("full", "tiny"),
    "data.multilabel_text": ("primary", "random"),
    "data.split_level": ("page", "volume"),
    "optim.name": ("sgd", "adamw"),
    "loss.targets": ("diagonal", "label"),
}
_PATHS = ("run_dir", "model.init", "data.segments", "data.ontology", "data.clips", "data.audio_folders",
          "data.manga_root", "data.genres", "data.image_folders")
_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert one TOML value to the field's type, naming the key on failure."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config: {key} must be a list of strings, got {value!r}")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # a bug here, not the user's


def _build(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        key = prefix + f.name
        if f.name not in d:
            continue
        if f.name in _SECTIONS and prefix == "":
            if not isinstance(d[f.name], Mapping):
                raise ConfigError(f"config: [{f.name}] must be a table")
            kwargs[f.name] = _build(_SECTIONS[f.name], d[f.name], f"{f.name}.")
        else:
            kwargs[f.name] = _coerce(key, d[f.name], hints[f.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required top-level key is missing
        missing = str(exc).split("argument", 1)[-1].strip(": ")
        raise ConfigError(f"config: missing required key(s) {missing}") from None


def _get(cfg: TrainConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _validate(cfg: TrainConfig) -> None:
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"config: {key} = {_get(cfg, key)!r}; expected one of {', '.join(choices)}")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "data.clip_seconds": cfg.data.clip_seconds,
                "optim.lr": cfg.optim.lr, "model.tiny_embed_dim": cfg.model.tiny_embed_dim,
                "model.tiny_resolution": cfg.model.tiny_resolution}
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"config: {key} must be positive, got {v}")
    if cfg.batch_size < 2:
        raise ConfigError("config: batch_size must be at least 2 (a contrastive batch of one has no negatives)")
    non_negative = {"eval_batch_size": cfg.eval_batch_size, "max_steps_per_epoch": cfg.max_steps_per_epoch,
                    "bn_recalibrate_batches": cfg.bn_recalibrate_batches, "threads": cfg.threads,
                    "data.num_workers": cfg.data.num_workers, "optim.weight_decay": cfg.optim.weight_decay,
                    "optim.momentum": cfg.optim.momentum, "optim.fbsp_lr_scale": cfg.optim.fbsp_lr_scale,
                    "optim.fbsp_grad_clip": cfg.optim.fbsp_grad_clip,
                    "optim.grad_clip_norm": cfg.optim.grad_clip_norm,
                    "loss.fbsp_regulariser": cfg.loss.fbsp_regulariser}
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"config: {key} must be >= 0, got {v}")
    if not 0.0 < cfg.optim.lr_decay <= 1.0:
        raise ConfigError(f"config: optim.lr_decay must be in (0, 1], got {cfg.optim.lr_decay}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"config: data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.optim.nesterov and cfg.optim.name == "sgd" and cfg.optim.momentum == 0:
        raise ConfigError("config: optim.nesterov needs optim.momentum > 0")
    if not cfg.run_dir:
        raise ConfigError("config: run_dir is empty (the folder the run writes into)")


def _absolute_paths(d: dict) -> dict:
    out = json.loads(json.dumps(d))  # deep copy of plain data
    for dotted in _PATHS:
        parts = dotted.split(".")
        node = out
        for p in parts[:-1]:
            node = node.get(p, {})
        leaf = parts[-1]
        if leaf not in node:
            continue
        v = node[leaf]
        if isinstance(v, str) and v:
            node[leaf] = str(Path(v).expanduser().resolve())
        elif isinstance(v, list):
            node[leaf] = [str(Path(x).expanduser().resolve()) if isinstance(x, str) and x else x for x in v]
    return out


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Validate a plain dict (as TOML gives it) into a TrainConfig with the stage's defaults."""
    d = dict(d)
    stage = d.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"config: stage = {stage!r}; expected one of {', '.join(STAGES)}")
    for k, v in STAGE_DEFAULTS[stage].items():
        d.setdefault(k, v)
    cfg = _build(TrainConfig, _absolute_paths(d), "")
    _validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key or not all(part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key like optim.lr")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        # Unquoted text (a path, a choice like label) is meant as a string.
        value = raw
    return key.split("."), value


def apply_overrides(d: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    out = json.loads(json.dumps(dict(d)))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {p} is not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def read_toml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> TrainConfig:
    """TOML file (or `base` dict) + ``key=value`` overrides -> validated TrainConfig."""
    d = read_toml(path) if path is not None else dict(base or {})
    try:
        return config_from_dict(apply_overrides(d, overrides))
    except ConfigError as exc:
        msg = str(exc).removeprefix("config: ")
        raise ConfigError(f"{path}: {msg}" if path is not None else str(exc)) from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def config_to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML that `load_config` reads back to an equal TrainConfig."""
    d = cfg.to_dict()
    lines = ["# Resolved run configuration (written by training.finetune; load_config reads it back).", ""]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in _SECTIONS]
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in d[section].items()]
    return "\n".join(lines) + "\n"


__all__ = [
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "STAGES",
    "STAGE_DEFAULTS",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_toml",
    "load_config",
    "parse_override",
]
