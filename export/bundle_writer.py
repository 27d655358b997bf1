"""Checkpoint -> bundle folder: export, quantise, convert, measure, and write it atomically.

``build_bundle`` is the one entry point (the CLI, the demo builder, tests and benchmarks
call it). Everything is written into a hidden temporary folder beside the target
(``.NAME.tmp-XXXX``, same filesystem) and moved into place with one ``os.replace`` at the
very end, so an interrupted or failed export never leaves a half-written bundle: either
the old bundle (or nothing) is there, or the complete new one. An existing bundle is only
replaced with ``force=True``, and a folder that is not a bundle is never replaced.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.errors import InputError, MangaMusicError
from runtime.hashing import sha256_file
from runtime.labels import GENRE_LABELS, MOOD_LABELS, LabelSet
from runtime.manifest import (PRECISIONS, SCHEMA_VERSION, AudioPreprocess, EncoderFile, ImagePreprocess,
                              LabelEmbeddings, LogitScales, Manifest, ModelInfo, ParityEntry, TextPreprocess)
from runtime.tokenizer import DEFAULT_VOCAB_FILE, default_tokenizer

from .golden import floor_for, golden_cosine
from .span_graphs import export_span
from .graph_io import INPUT_NAMES
from .parity import measure_session, parity_session

MANIFEST_NAME = "manifest.json"
VOCAB_SOURCE = Path(__file__).resolve().parent.parent / "runtime" / "assets" / DEFAULT_VOCAB_FILE


class BundleWriteError(MangaMusicError):
    """The output folder cannot be written, or holds something that must not be replaced."""


class ParityTargetError(MangaMusicError):
    """``strict`` export: at least one encoder missed its parity target (nothing was written)."""


class ParityWarning(UserWarning):
    """An encoder missed its parity target (the bundle is still written unless strict)."""


@dataclass(frozen=True)
class ExportReport:
    """What ``build_bundle`` did, beyond the manifest: for the CLI summary and benchmarks."""

    manifest: Manifest
    out_dir: Path
    exporters: dict = field(default_factory=dict)  # modality -> "dynamo" | "torchscript"
    notes: tuple[str, ...] = ()
    seconds: float = 0.0


# -- model ------------------------------------------------------------------------------------
def _resolve_model(model_or_checkpoint):
    """(model, ModelInfo fields, notes) from an AudioCLIP, a LoadedModel, or a checkpoint path."""
    from training.checkpoints import LoadedModel, load_model
    from training.model import AudioCLIP

    obj = model_or_checkpoint
    if isinstance(obj, (str, os.PathLike)):
        obj = load_model(obj)
    if isinstance(obj, LoadedModel):
        meta = obj.meta or {}
        info = dict(name=str(meta.get("name") or Path(obj.path).stem), checkpoint=Path(obj.path).name,
                    checkpoint_sha256=obj.sha256, kind=obj.kind, description=str(meta.get("description", "")))
        return obj.model.eval(), info, tuple(obj.notes)
    if isinstance(obj, AudioCLIP):
        info = dict(name="audioclip", checkpoint="(in-memory model)", checkpoint_sha256="", kind="in-memory",
                    description="")
        return obj.eval(), info, ()
    raise TypeError(f"build_bundle takes an AudioCLIP, a LoadedModel or a checkpoint path, "
                    f"not {type(obj).__name__}")


def _describe_model(model, info: dict) -> str:
    n = sum(p.numel() for p in model.parameters())
    base = f"AudioCLIP ({info['kind']} checkpoint), {n / 1e6:.1f}M parameters, {model.config.embed_dim}-d embeddings"
    return f"{base}; {info['description']}" if info.get("description") else base


# -- output folder ------------------------------------------------------------------------------
def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleWriteError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        is_bundle = (out_dir / MANIFEST_NAME).is_file()
        if not is_bundle:
            raise BundleWriteError(f"{out_dir}: folder exists and is not a bundle (no {MANIFEST_NAME}); "
                                   "refusing to replace it, even with --force")
        if not force:
            raise BundleWriteError(f"{out_dir}: a bundle already exists here (pass --force to replace it)")


def _make_staging(out_dir: Path) -> Path:
    """The hidden temporary sibling everything is written into; fails fast if unwritable."""
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
        # mkdtemp makes the folder private (0700); a published bundle gets the usual umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        return staging
    except OSError as exc:
        raise BundleWriteError(f"{out_dir}: cannot write the bundle here ({exc.strerror or exc})") from None


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle into place; an old bundle is swapped out, then deleted."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)  # put the previous bundle back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out_dir.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- labels -----------------------------------------------------------------------------------
def label_embeddings(model, label_sets: Sequence[LabelSet] = (MOOD_LABELS, GENRE_LABELS)) -> tuple[LabelEmbeddings, ...]:
    """L2-normalised fp32 text embeddings of each label set's prompts, by the PyTorch tower."""
    import torch

    tok = default_tokenizer()
    out = []
    for ls in label_sets:
        with torch.no_grad():
            emb = model.text(torch.from_numpy(tok(ls.prompts()))).double().numpy()
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        out.append(LabelEmbeddings(ls.name, tuple(ls.classes), ls.template, emb.astype(np.float32)))
    return tuple(out)


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """A tqdm bar over the export's steps (or silence), on stderr."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False,
                             bar_format="{desc:<34} {bar} {n_fmt}/{total_fmt} [{elapsed}]")

    def step(self, what: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(what)
            self._bar.refresh()

    def done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- the build ----------------------------------------------------------------------------------
def build_bundle(model_or_checkpoint, out_dir: str | os.PathLike, precisions: Sequence[str] = ("fp32", "int8"),
                 calibration: str | os.PathLike | None = None, demo: bool = False, strict: bool = False,
                 force: bool = False, progress: bool = True, *, optimum_preset: str | None = None,
                 quant_tool: str = "auto", parity_inputs: int = 32, calibration_size: tuple[int, int] = (32, 16),
                 threads: int | None = 2, parity_provider: str = "auto", exporter: str = "auto",
                 log: Callable[[str], None] | None = None, span: bool = True) -> Manifest:
    """Export ``model_or_checkpoint`` (an AudioCLIP, a ``LoadedModel`` or a checkpoint path)
    to the bundle folder ``out_dir`` and return its manifest. See ``build_bundle_report``."""
    return build_bundle_report(model_or_checkpoint, out_dir, precisions, calibration, demo, strict, force, progress,
                               optimum_preset=optimum_preset, quant_tool=quant_tool, parity_inputs=parity_inputs,
                               calibration_size=calibration_size, threads=threads, parity_provider=parity_provider,
                               exporter=exporter, log=log, span=span).manifest


def build_bundle_report(model_or_checkpoint, out_dir: str | os.PathLike, precisions: Sequence[str] = ("fp32", "int8"),
                        calibration: str | os.PathLike | None = None, demo: bool = False, strict: bool = False,
                        force: bool = False, progress: bool = True, *, optimum_preset: str | None = None,
                        quant_tool: str = "auto", parity_inputs: int = 32,
                        calibration_size: tuple[int, int] = (32, 16), threads: int | None = 2,
                        parity_provider: str = "auto", exporter: str = "auto",
                        log: Callable[[str], None] | None = None, span: bool = True) -> ExportReport:
    """The whole export. Arguments beyond ``build_bundle``'s common ones:

    - ``optimum_preset`` / ``quant_tool``: see ``export.quantize.quantize_encoder``;
    - ``parity_inputs``: held-out inputs per encoder for the parity report (32 by default;
      fewer only for quick tests, and the manifest records the n used);
    - ``calibration_size``: (pages, clips) of the built-in calibration set;
    - ``threads``: ONNX Runtime intra-op threads for calibration and parity;
    - ``parity_provider``: "auto" (fp16 measured on CUDA when onnxruntime has it), "cpu";
    - ``span``: also write the audio tower's trunk and head graphs for one-pass track
      embedding (``export.span_graphs``), when they agree with the per-window graph;
    - ``log``: receives one-line notes (the CLI prints them); parity misses are also
      raised as ``ParityWarning``s, and with ``strict`` as ``ParityTargetError`` (no bundle).
    """
    import time

    from .calibration import builtin_set, folder_sets, parity_set, with_held_out
    from .fp16 import convert_fp16
    from .golden import make_goldens
    from .onnx_graphs import MODALITIES, export_encoder
    from .parity import describe, measure, reference_embeddings
    from .quantize import plan_for, quantize_encoder

    t0 = time.time()
    say = log or (lambda _msg: None)
    precisions = tuple(dict.fromkeys(precisions))  # de-duplicated, order kept
    bad = [p for p in precisions if p not in PRECISIONS]
    if not precisions or bad:
        raise ValueError(f"precisions must be some of {', '.join(PRECISIONS)} (got {', '.join(bad) or 'none'})")
    if parity_inputs < 1:
        raise ValueError("parity_inputs must be at least 1")
    out_dir = Path(out_dir).absolute()
    _check_target(out_dir, force)
    if calibration is not None and not Path(calibration).is_dir():
        raise InputError(f"{calibration}: calibration folder does not exist or is not a folder")

    # The staging folder first: an unwritable destination fails before minutes of work.
    staging = _make_staging(out_dir)
    # inputs; per tower: export, int8, fp16, parity; labels; manifest
    steps = 1 + 3 * (2 + ("int8" in precisions) + ("fp16" in precisions)) + 2 + bool(span)
    bar = None
    notes: list[str] = []
    try:
        model, info, load_notes = _resolve_model(model_or_checkpoint)
        for n in load_notes:
            say(f"checkpoint: {n}")
        cfg = model.config
        image_cfg = ImagePreprocess(size=cfg.image.resolution)
        audio_cfg = AudioPreprocess(sample_rate=cfg.audio.sample_rate)
        text_cfg = TextPreprocess(context_length=cfg.text.context_length)
        bar = _Progress(steps, progress)
        plan = plan_for(cfg)
        bar.step("preparing calibration and parity inputs")
        held_out = parity_set(image_cfg, audio_cfg, n=parity_inputs)
        calib = None
        builtin = (builtin_set(image_cfg, audio_cfg, n_images=calibration_size[0], n_clips=calibration_size[1])
                   if "int8" in precisions else None)
        if calibration is not None:
            # The user's folder is split: one part calibrates, the other is the parity
            # report's held-out set for the modalities it has (never the generated one).
            split = folder_sets(calibration, image_cfg, audio_cfg, fallback=builtin)
            held_out = with_held_out(held_out, split, calibration)
            calib = split.calibration
            notes.extend(calib.notes)
            if "int8" not in precisions:
                notes.append("the calibration part of the folder was not used: it only serves int8")
        elif builtin is not None:
            calib = builtin
        if calib is not None:
            say(f"calibration inputs: {calib.source}")
        say(f"parity inputs: {held_out.source}")
        goldens = {g.modality: g for g in make_goldens(model, image_cfg, audio_cfg, text_cfg)}
        bar.done()

        encoders: list[EncoderFile] = []
        parity: list[ParityEntry] = []
        exporters = {}
        fp16_provider = _fp16_provider(parity_provider)
        embedded: dict[tuple[str, str], np.ndarray] = {}  # (modality, precision|"torch") -> held-out rows
        span_info = None
        for modality in MODALITIES:
            bar.step(f"{modality}: exporting fp32 graph")
            fp32_path = staging / f"{modality}.fp32.onnx"
            graph = export_encoder(model, modality, fp32_path, exporter=exporter)
            exporters[modality] = graph.exporter
            if graph.note:
                notes.append(f"{modality}: fell back to the {graph.exporter} exporter ({graph.note})")
            reference = reference_embeddings(model, held_out, modality)
            embedded[(modality, "torch")] = reference
            bar.done()
            made: dict[str, tuple[Path, str, object]] = {"fp32": (fp32_path, "", None)}
            if "int8" in precisions:
                bar.step(f"{modality}: int8 quantisation")
                q, _entry, tried = _best_int8(fp32_path, staging, modality, calib, plan[modality], held_out,
                                                  reference, quant_tool, optimum_preset, threads, quantize_encoder,
                                                  measure)
                made["int8"] = (q.path, q.method, q.format)
                notes.extend(f"{modality} int8: {n}" for n in q.notes)
                if len(tried) > 1:
                    notes.append(f"{modality} int8: tried " + "; ".join(tried) + f"; kept: {q.method}")
                if q.format is not None and not q.format.saturation_free:
                    notes.append(f"{modality} int8: weights reach |{q.format.max_abs_weight}|, so u8 x s8 pair sums "
                                 f"reach {q.format.pair_sum_bound} > 32767: the graph can differ on CPUs without "
                                 "VNNI (the runtime's self-check will catch it there)")
                bar.done()
            if "fp16" in precisions:
                bar.step(f"{modality}: fp16 conversion")
                path, kept = convert_fp16(fp32_path, staging / f"{modality}.fp16.onnx", modality)
                made["fp16"] = (path, f"fp16, {kept} nodes kept fp32, float32 IO", None)
                bar.done()
            bar.step(f"{modality}: parity vs PyTorch")
            for precision in precisions:
                path, method, fmt = made[precision]
                providers = fp16_provider if precision == "fp16" else ("CPUExecutionProvider",)
                sess = parity_session(path, threads, providers)
                entry, got = measure_session(sess, modality, precision, held_out, reference)
                embedded[(modality, precision)] = got
                export_cos = golden_cosine(lambda x, s=sess: s.run(["embedding"], {INPUT_NAMES[modality]: x})[0],
                                           goldens[modality], image_cfg)
                parity.append(entry)
                say(describe(entry) + (f" [{providers[0]}]" if precision == "fp16" else "")
                    + f"; golden input cosine {export_cos:.6f}")
                if precision == "fp16" and providers[0] == "CPUExecutionProvider":
                    # ORT's CPU provider runs most fp16 ops by casting them up to fp32, so this
                    # parity says little about fp16 arithmetic on CUDA; the manifest says where.
                    method += "; parity measured on CPU (re-measure on CUDA)"
                encoders.append(EncoderFile(modality, precision, path.name, "", path.stat().st_size,
                                            graph.inputs, graph.outputs, method, fmt,
                                            floor_for(precision, export_cos), round(export_cos, 6)))
            bar.done()
            if modality == "audio" and span and ({"fp32", "int8"} & set(precisions)):
                bar.step("audio: one-pass trunk and head")
                whole = {p: made[p][0] for p in ("fp32", "int8") if p in made}
                result = export_span(model, staging, whole, held_out, reference, goldens["audio"], image_cfg,
                                     audio_cfg, calib, plan["audio"][0], threads, quant_tool, optimum_preset)
                span_info = result.span
                encoders.extend(e for e in result.encoders if e.precision in precisions or e.part == "head")
                parity.extend(e for e in result.parity if e.precision in precisions)
                for n in result.notes:
                    say(n)
                notes.extend(result.notes)
                if "fp32" not in precisions and result.span is not None:
                    (staging / "audio.trunk.fp32.onnx").unlink()
                bar.done()
            if "fp32" not in precisions:
                fp32_path.unlink()  # needed as the source of int8/fp16, not asked for
        parity = _with_retrieval_agreement(parity, embedded, held_out)
        shutil.rmtree(staging / ".work", ignore_errors=True)

        bar.step("label embeddings")
        labels = label_embeddings(model)
        bar.done()

        bar.step("writing manifest")
        shutil.copyfile(VOCAB_SOURCE, staging / text_cfg.vocab_file)
        encoders = [replace(e, sha256=sha256_file(staging / e.file), bytes=(staging / e.file).stat().st_size)
                    for e in encoders]
        scales = {k: float(v.detach()) for k, v in model.logit_scales().items()}
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            model=ModelInfo(name=info["name"], description=_describe_model(model, info), checkpoint=info["checkpoint"],
                            checkpoint_sha256=info["checkpoint_sha256"], demo=bool(demo), config=cfg.to_dict()),
            embed_dim=cfg.embed_dim,
            logit_scales=LogitScales(image_text=scales["image_text"], audio_text=scales["audio_text"],
                                     audio_image=scales["audio_image"]),
            image=image_cfg, audio=audio_cfg, text=text_cfg,
            encoders=tuple(encoders), labels=labels, parity=tuple(parity),
            vocab_sha256=sha256_file(staging / text_cfg.vocab_file), goldens=tuple(goldens.values()),
            audio_span=span_info,
        )
        _write_manifest(staging / MANIFEST_NAME, manifest)
        bar.done()

        missed = [p for p in parity if not p.passed]
        for p in missed:
            warnings.warn(f"parity target missed: {describe(p)}", ParityWarning, stacklevel=3)
        if missed and strict:
            raise ParityTargetError(f"{len(missed)} encoder(s) missed their parity target "
                                    f"({', '.join(f'{p.modality}.{p.precision}' for p in missed)}); "
                                    "strict: no bundle written")
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return ExportReport(manifest, out_dir, exporters, tuple(notes), time.time() - t0)


def _best_int8(fp32_path: Path, staging: Path, modality: str, calib, candidates, held_out, reference, tool,
               preset, threads, quantize_encoder, measure):
    """Quantise with each candidate recipe in turn until one meets the int8 parity target;
    if none does, keep the one with the best min cosine. Returns (result, parity, tried)."""
    best = None
    tried = []
    final = staging / f"{modality}.int8.onnx"
    for k, choice in enumerate(candidates):
        path = staging / ".work" / f"{modality}.int8.candidate{k}.onnx"
        q = quantize_encoder(fp32_path, path, modality, calib, choice, tool=tool, preset=preset,
                             workdir=staging / ".work")
        entry = measure(path, modality, "int8", held_out, reference, threads=threads)
        tried.append(f"{choice.describe()} (min {entry.min_cosine:.4f}, mean {entry.mean_cosine:.4f})")
        if best is None or (entry.passed, entry.min_cosine) > (best[1].passed, best[1].min_cosine):
            best = (q, entry)
        if entry.passed:
            break
    q, entry = best
    os.replace(q.path, final)
    return replace(q, path=final), entry, tried


def _with_retrieval_agreement(parity: list[ParityEntry], embedded: dict, held_out) -> list[ParityEntry]:
    """Add top-k agreement to each graph's entry when the held-out set is the user's.

    Page -> music is the product, so a page graph is judged by the music it would pick and
    a music graph by the pages' picks among the clips (the other side embedded by
    PyTorch, so each number is one graph's doing); with only one of the two from the user,
    its items' nearest neighbours among themselves.
    """
    from .parity import topk_overlap

    user = {m for m in ("image", "audio") if held_out.source_of(m) != "built-in"}
    out = []
    for e in parity:
        if e.modality not in user or (e.modality, e.precision) not in embedded:
            out.append(e)
            continue
        got, ref = embedded[(e.modality, e.precision)], embedded[(e.modality, "torch")]
        other = "audio" if e.modality == "image" else "image"
        if other in user:
            lib_ref = embedded[(other, "torch")]
            if e.modality == "image":
                k = min(10, len(lib_ref))
                value = topk_overlap(got, lib_ref, ref, lib_ref, k)
            else:
                k = min(10, len(got))
                value = topk_overlap(lib_ref, got, lib_ref, ref, k)
        else:
            k = min(10, len(got) - 1)
            value = topk_overlap(got, got, ref, ref, k, same_set=True) if k >= 1 else None
        out.append(e if value is None else replace(e, topk_overlap=round(value, 4), topk=k))
    return out


def _fp16_provider(choice: str) -> tuple[str, ...]:
    if choice == "cpu":
        return ("CPUExecutionProvider",)
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


def _write_manifest(path: Path, manifest: Manifest) -> None:
    data = json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False) + "\n"
    # Validate what we are about to write with the reader's own parser: a bundle the
    # runtime would refuse must never be published.
    Manifest.from_dict(json.loads(data))
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
