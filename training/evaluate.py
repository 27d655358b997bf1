"""Evaluation of a checkpoint or an exported bundle: the seed paper's Table 1 and cross-modal tables.

    python -m training.evaluate runs/audio/best.pt --audioset data/audioset --out eval/audio
    python -m training.evaluate bundles/model --manga data/Manga109 --genres genres.csv \\
        --audioset data/audioset --baseline AudioCLIP-Full-Training.pt --out eval/bundle

What is measured (all on the held-out side of the same seeded split training uses, unless
``--subset all``):
- AudioSet music mood: mAP over the 7 moods computed once over every held-out clip (not
  averaged over batches), and the AP of each mood. A clip's scores are its zero-shot
  confidences, softmax(audio-text scale x cosine) over the 7 mood prompts; AP is
  training.metrics.average_precision. Clips are decoded by the runtime's loader and
  centre padded/cropped to ``--clip-seconds`` (5 s, the training length) and embedded with
  the runtime's windowing (one window up to 5 s; under 1 s zero-padded to 1 s, so a sub-second
  setting scores differently from training validation); clips that cannot be decoded or are
  silent are skipped and counted.
- Manga109 genre: top-1 accuracy of the 12 genre prompts and the accuracy of each genre,
  on the split named in the report (page- or volume-level).
- Zero-shot baseline: ``--baseline CKPT`` runs the same evaluation on another model (the
  published weights) and the report puts both side by side.
- Cross-modal tables (training.crossmodal): genre -> mood and mood -> genre mean
  confidences over a fixed seeded sample (``--sample``, default 200 per side).
- Soundtrack (``--soundtrack``, a bundle and a music library built with it): chapters made
  of runs of consecutive pages from Manga109 volumes of 2-4 genres, planned whole and page
  by page; boundary precision/recall against the genre changes, switches per 100 pages
  and fit kept against each page's best track (training.soundtrack_eval).

Every backend (PyTorch checkpoint, or a bundle folder through the runtime at any
precision) goes through training.backends, so quantisation's effect on these numbers is
one command. Outputs in ``--out``: report.md, report.json, per_class_ap.csv,
per_genre_accuracy.csv and the tables as .md/.csv/.png; written to a temporary folder and
moved into place, so an interrupted evaluation never leaves a half-written report.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: say which extra is missing, before importing it
    from runtime.extras import exit_unless_installed

    exit_unless_installed("python -m training.evaluate", "train")

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from runtime.errors import InputError, MangaMusicError, one_line
from runtime.labels import GENRE_LABELS, GENRES, MOOD_LABELS, MOODS
from training.backends import EmbeddingBackend, open_backend
from training.crossmodal import CrossModalTable, balanced_sample, confidence_table, write_table
from training.record_embedding import embed_clips, embed_pages
from training.metrics import mean_average_precision, per_class_accuracy, softmax, top1_accuracy

DEFAULT_SAMPLE = 200


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class EvalSet:
    """Records to evaluate (PageRecord / FolderRecord pages, ClipRecord clips) and where they came from."""

    records: tuple
    description: str


def _as_set(data: Any, kind: str) -> Optional[EvalSet]:
    if data is None or isinstance(data, EvalSet):
        return data
    records = tuple(data)
    return EvalSet(records, f"{len(records)} {kind}")


def manga_eval_set(root: str | os.PathLike | None = None, genres_csv: str | os.PathLike | None = None, *,
                   image_folders: str | os.PathLike | None = None, split: str = "page", val_fraction: float = 0.2,
                   seed: int = 0, subset: str = "val") -> EvalSet:
    """Pages of Manga109 (root + genre CSV) or of one-folder-per-genre, split as training splits them."""
    from training.data.splits import make_split, stratified_partition

    if image_folders:
        from training.data.folders import IMAGE_EXTENSIONS, LabelFolders

        if split == "volume":
            raise InputError("--split volume needs Manga109 (genre folders have no volumes)")
        records = LabelFolders(image_folders, IMAGE_EXTENSIONS, classes=GENRES).records
        tr, va = stratified_partition([str(r.path) for r in records], [r.index for r in records], val_fraction, seed)
        sp = make_split(records, tr, va, "page", seed, val_fraction)
        where = f"genre folders {image_folders}"
    else:
        from training.data.manga109 import Manga109

        if not (root and genres_csv):
            raise InputError("Manga109 evaluation needs --manga ROOT and --genres CSV")
        sp = Manga109(root, genres_csv).split(val_fraction, seed, split)
        where = f"Manga109 {root}"
    return _subset(sp, subset, where, "pages")


def audioset_eval_set(source: str | os.PathLike, *, segments: Sequence[str | os.PathLike] = (),
                      ontology: str | os.PathLike | None = None, clips: str | os.PathLike | None = None,
                      val_fraction: float = 0.2, seed: int = 0, subset: str = "val") -> EvalSet:
    """AudioSet mood clips from a folder, split as training splits them.

    ``source`` is either one folder per mood (``Happy music/...``) or a folder holding
    ``ontology.json``, the segments CSV(s) (``*segments*.csv``) and the clips (in ``clips/``,
    ``audio/`` or the folder itself); ``segments`` / ``ontology`` / ``clips`` override what
    is found there.
    """
    from training.data.audioset import AudioSetMoods

    src = Path(source) if source else None
    if src is not None and not src.is_dir():
        raise InputError(f"{src}: AudioSet folder not found")
    onto = Path(ontology) if ontology else (src / "ontology.json" if src is not None else None)
    if onto is not None and onto.is_file():
        segs = [Path(s) for s in segments]
        if not segs and src is not None:
            segs = sorted(src.glob("*segments*.csv"))
        if not segs:
            raise InputError(f"{src or onto.parent}: no *segments*.csv next to ontology.json (give --segments)")
        if clips:
            clip_dir = Path(clips)
        elif src is None:
            raise InputError("give --clips DIR with --ontology (or --audioset DIR)")
        else:
            clip_dir = next((src / d for d in ("clips", "audio", "wav") if (src / d).is_dir()), src)
        ds = AudioSetMoods([str(s) for s in segs], onto, clip_dir)
        where = f"AudioSet segments {', '.join(s.name for s in segs)} ({ds.missing} missing clip(s))"
    elif src is not None:
        ds = AudioSetMoods.from_class_folders(src)
        where = f"AudioSet mood folders {src}"
    else:
        raise InputError("AudioSet evaluation needs --audioset DIR (or --ontology/--segments/--clips)")
    if len(ds) == 0:
        raise InputError(f"{where}: no clip with a mood label was found")
    return _subset(ds.split(val_fraction, seed), subset, where, "clips")


def _subset(sp, subset: str, where: str, noun: str) -> EvalSet:
    if subset == "all":
        records = tuple(sp.train) + tuple(sp.val)
        return EvalSet(records, f"{where}: all {len(records)} {noun} (no split)")
    if subset != "val":
        raise InputError(f"subset must be 'val' or 'all', got {subset!r}")
    if not sp.val:
        raise InputError(f"{where}: the split leaves no held-out {noun}")
    return EvalSet(tuple(sp.val), f"{where}: held-out side of the {sp.describe()}")


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MoodResult:
    map: float
    per_class: dict[str, float]  # NaN where the held-out set has no clip of that mood
    positives: dict[str, int]
    clips: int
    skipped: tuple[str, ...]
    description: str
    scores: str = "softmax over the 7 mood prompts of audio-text scale x cosine"


@dataclass(frozen=True)
class GenreResult:
    accuracy: float
    per_genre: dict[str, tuple[int, int]]  # genre -> (correct, total), genres present only
    pages: int
    skipped: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class EvalReport:
    model: str
    moods: Optional[MoodResult] = None
    genres: Optional[GenreResult] = None
    genre_to_mood: Optional[CrossModalTable] = None
    mood_to_genre: Optional[CrossModalTable] = None
    logit_scales: dict = field(default_factory=dict)
    soundtrack: Optional[Any] = None  # training.soundtrack_eval.SoundtrackResult

    def to_dict(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x

        d: dict[str, Any] = {"model": self.model, "logit_scales": self.logit_scales}
        if self.moods:
            m = self.moods
            d["audioset_mood"] = {"mAP": m.map, "per_class_ap": m.per_class, "positives": m.positives,
                                  "clips": m.clips, "skipped": list(m.skipped), "data": m.description,
                                  "scores": m.scores}
        if self.genres:
            g = self.genres
            d["manga109_genre"] = {"accuracy": g.accuracy, "pages": g.pages, "data": g.description,
                                   "per_genre": {k: {"correct": c, "total": t, "accuracy": c / t}
                                                 for k, (c, t) in g.per_genre.items()},
                                   "skipped": list(g.skipped)}
        for t in (self.genre_to_mood, self.mood_to_genre):
            if t is not None:
                d[t.name] = t.to_dict()
        if self.soundtrack is not None:
            d["soundtrack"] = self.soundtrack.to_dict()
        return clean(d)


# ---------------------------------------------------------------------------- evaluation


def _clip_labels(record) -> tuple[int, ...]:
    labels = getattr(record, "labels", None)
    return tuple(labels) if labels is not None else (int(record.target),)


def evaluate_backend(backend: EmbeddingBackend, manga: EvalSet | Sequence | None = None,
                     audioset: EvalSet | Sequence | None = None, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                     clip_seconds: float = 5.0, sample_rate: int = 44100, progress: bool = False) -> EvalReport:
    """Run the paper's evaluation on whichever data sets are given (records or EvalSets)."""
    manga, audioset = _as_set(manga, "pages"), _as_set(audioset, "clips")
    if manga is None and audioset is None:
        raise InputError("nothing to evaluate: give Manga109 pages and/or AudioSet clips")
    scales = backend.logit_scales
    mood_text = backend.embed_texts(MOOD_LABELS.prompts())
    genre_text = backend.embed_texts(GENRE_LABELS.prompts())
    moods = genres = g2m = m2g = None
    if audioset is not None:
        emb, kept, skipped = embed_clips(backend, audioset.records, clip_seconds, sample_rate, progress)
        if not kept:
            raise InputError(f"{audioset.description}: no clip could be read ({len(skipped)} skipped)")
        labels = [_clip_labels(audioset.records[i]) for i in kept]
        targets = np.zeros((len(kept), len(MOODS)), dtype=np.float32)
        for r, ls in enumerate(labels):
            targets[r, list(ls)] = 1.0
        probs = softmax(scales["audio_text"] * emb @ mood_text.T, axis=1)
        res = mean_average_precision(probs, targets)
        moods = MoodResult(res.mean, dict(zip(MOODS, res.per_class)), dict(zip(MOODS, res.positives)), len(kept),
                           tuple(skipped), audioset.description)
        pick = balanced_sample(labels, sample, seed)
        m2g = confidence_table(
            emb[pick], [labels[i] for i in pick], genre_text, scales["audio_text"], MOODS, GENRES, "mood_to_genre",
            "Music mood -> manga genre: mean genre confidence of the clips of each mood",
            f"{len(pick)} clips (balanced seeded sample, seed {seed}) of {audioset.description}; per clip "
            f"softmax(audio-text scale {scales['audio_text']:.2f} x cosine) over the 12 genre prompts, averaged "
            "per mood (a multi-mood clip counts for each); values in %.")
    if manga is not None:
        emb, kept, skipped = embed_pages(backend, manga.records, progress)
        if not kept:
            raise InputError(f"{manga.description}: no page could be read ({len(skipped)} skipped)")
        labels = [int(manga.records[i].target) for i in kept]
        logits = scales["image_text"] * emb @ genre_text.T
        per = per_class_accuracy(logits, labels, len(GENRES))
        genres = GenreResult(top1_accuracy(logits, labels),
                             {g: (per[i].correct, per[i].total) for i, g in enumerate(GENRES) if per[i].total},
                             len(kept), tuple(skipped), manga.description)
        pick = balanced_sample([(x,) for x in labels], sample, seed)
        g2m = confidence_table(
            emb[pick], [(labels[i],) for i in pick], mood_text, scales["image_text"], GENRES, MOODS, "genre_to_mood",
            "Manga genre -> music mood: mean mood confidence of the pages of each genre",
            f"{len(pick)} pages (balanced seeded sample, seed {seed}) of {manga.description}; per page "
            f"softmax(image-text scale {scales['image_text']:.2f} x cosine) over the 7 mood prompts, averaged per "
            "genre; values in %.")
    return EvalReport(getattr(backend, "name", type(backend).__name__), moods, genres, g2m, m2g,
                      {k: float(v) for k, v in scales.items()})


# ---------------------------------------------------------------------------- writing


def _pct(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


def report_markdown(report: EvalReport, baseline: Optional[EvalReport] = None) -> str:
    cols = ["model"] if baseline is None else ["baseline (zero-shot)", "model"]
    reports = [report] if baseline is None else [baseline, report]
    lines = ["# Evaluation", "", f"- model: `{report.model}`"]
    if baseline is not None:
        lines.append(f"- baseline: `{baseline.model}`")
    lines += ["", "## Table 1", "", "| data | metric | " + " | ".join(cols) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    if report.moods:
        lines.append(f"| AudioSet music mood ({report.moods.clips} held-out clips) | mAP | "
                     + " | ".join(_pct(r.moods.map if r.moods else None) for r in reports) + " |")
    if report.genres:
        lines.append(f"| Manga109 ({report.genres.pages} pages) | top-1 accuracy | "
                     + " | ".join(_pct(r.genres.accuracy if r.genres else None) for r in reports) + " |")
    if report.moods:
        m = report.moods
        lines += ["", "## AudioSet music mood: AP per class", "", f"Data: {m.description}.",
                  f"Scores: {m.scores}; mAP over the moods present, computed once over all {m.clips} clips.",
                  f"Skipped (unreadable or silent): {len(m.skipped)}.", "",
                  "| mood | clips | " + " | ".join(f"AP {c}" for c in cols) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
        for mood in MOODS:
            lines.append(f"| {mood} | {m.positives[mood]} | "
                         + " | ".join(_pct(r.moods.per_class.get(mood) if r.moods else None) for r in reports) + " |")
    if report.genres:
        g = report.genres
        lines += ["", "## Manga109 genre: accuracy per genre", "", f"Split: {g.description}.",
                  f"Skipped (unreadable): {len(g.skipped)}.", "",
                  "| genre | pages | " + " | ".join(f"accuracy {c}" for c in cols) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
        for genre, (_, total) in g.per_genre.items():
            cells = []
            for r in reports:
                cg = r.genres.per_genre.get(genre) if r.genres else None
                cells.append(_pct(cg[0] / cg[1]) if cg else "-")
            lines.append(f"| {genre} | {total} | " + " | ".join(cells) + " |")
    for t in (report.genre_to_mood, report.mood_to_genre):
        if t is not None:
            lines += ["", t.to_markdown()]
    if report.soundtrack is not None:
        lines += report.soundtrack.markdown()
    return "\n".join(lines) + "\n"


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_report(report: EvalReport, out_dir: str | os.PathLike, baseline: Optional[EvalReport] = None) -> list[Path]:
    """Write every output into a temporary folder, then move each file into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".eval-", dir=out))
    try:
        (tmp / "report.md").write_text(report_markdown(report, baseline), encoding="utf-8")
        payload = {"model": report.to_dict()}
        if baseline is not None:
            payload["baseline"] = baseline.to_dict()
        (tmp / "report.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if report.moods:
            rows = [["mood", "clips", "ap"] + (["baseline_ap"] if baseline else [])]
            for mood in MOODS:
                row = [mood, report.moods.positives[mood], _num(report.moods.per_class[mood])]
                if baseline:
                    row.append(_num(baseline.moods.per_class.get(mood)) if baseline.moods else "")
                rows.append(row)
            rows.append(["mAP", report.moods.clips, _num(report.moods.map)]
                        + ([_num(baseline.moods.map) if baseline.moods else ""] if baseline else []))
            (tmp / "per_class_ap.csv").write_text(_csv_text(rows), encoding="utf-8")
        if report.genres:
            rows = [["genre", "correct", "total", "accuracy"]]
            rows += [[g, c, t, _num(c / t)] for g, (c, t) in report.genres.per_genre.items()]
            rows.append(["all", round(report.genres.accuracy * report.genres.pages), report.genres.pages,
                         _num(report.genres.accuracy)])
            (tmp / "per_genre_accuracy.csv").write_text(_csv_text(rows), encoding="utf-8")
        for t in (report.genre_to_mood, report.mood_to_genre):
            if t is not None:
                write_table(t, tmp)
        written = []
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _num(x: Optional[float]) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.6f}"


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate a checkpoint (.pt) or an exported bundle (folder) the way the seed paper does: "
                    "AudioSet mood mAP, Manga109 genre accuracy, and the genre<->mood tables.",
        epilog="The split (--split, --split-seed, --val-fraction) must match the one used in training "
               "(the defaults do) so that only held-out items are scored.\n"
               "example: python -m training.evaluate runs/image/best.pt --manga Manga109 --genres genres.csv "
               "--audioset audioset --baseline AudioCLIP-Full-Training.pt --out eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="CHECKPOINT_OR_BUNDLE", help="a .pt checkpoint or a bundle folder")
    p.add_argument("--manga", metavar="ROOT", help="Manga109 release folder (books.txt, images/)")
    p.add_argument("--genres", metavar="CSV", help="genre table for --manga (ENGLISH_NAME,GENRE or title,genre)")
    p.add_argument("--image-folders", metavar="DIR", help="pages in one folder per genre, instead of --manga")
    p.add_argument("--audioset", metavar="DIR",
                   help="one folder per mood, or a folder with ontology.json, *segments*.csv and clips/")
    p.add_argument("--segments", nargs="+", default=[], metavar="CSV", help="segments CSV(s) (override)")
    p.add_argument("--ontology", metavar="JSON", help="ontology.json (override)")
    p.add_argument("--clips", metavar="DIR", help="folder of downloaded clips (override)")
    p.add_argument("--split", choices=("page", "volume"), default="page", help="Manga109 split level (default page)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction (default 0.2)")
    p.add_argument("--subset", choices=("val", "all"), default="val",
                   help="score the held-out side (default) or every item (a model never trained on them)")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"items per side in the cross-modal tables (default {DEFAULT_SAMPLE})")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-modal sample (default 0)")
    p.add_argument("--clip-seconds", type=float, default=5.0,
                   help="clips centre padded/cropped to this, as in training validation (default 5); both "
                        "backends then zero-pad anything under the runtime's 1 s minimum window to 1 s")
    p.add_argument("--soundtrack", action="store_true",
                   help="also plan soundtracks for chapters made of runs of Manga109 volumes of 2-4 genres and "
                        "report boundary precision/recall, switches per 100 pages and fit kept (needs a bundle, "
                        "--manga and a music library built with the bundle)")
    p.add_argument("--library", metavar="L", default=None,
                   help="music library for --soundtrack (default: the demo library shipped with the package)")
    p.add_argument("--chapters", type=int, default=40, help="chapters for --soundtrack (default 40)")
    p.add_argument("--switch-cost", type=float, default=None, metavar="C",
                   help="soundtrack switching cost (default: the runtime's)")
    p.add_argument("--seconds-per-page", type=float, default=None, metavar="S",
                   help="soundtrack reading time per page (default: the runtime's)")
    p.add_argument("--baseline", metavar="CHECKPOINT_OR_BUNDLE",
                   help="also evaluate this model (e.g. the published weights: the zero-shot column)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", default="auto", help="bundle precision: auto, int8, fp16, fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch for a checkpoint, ONNX Runtime for a bundle); default: all")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, report.json, tables")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.sample < 1 or not 0 < args.val_fraction < 1 or args.clip_seconds <= 0:
            raise InputError("--sample must be >= 1, --val-fraction in (0, 1), --clip-seconds > 0")
        if args.soundtrack and not args.manga:
            raise InputError("--soundtrack needs Manga109 volumes: give --manga and --genres")
        manga = audioset = None
        if args.manga or args.image_folders or args.genres:
            manga = manga_eval_set(args.manga, args.genres, image_folders=args.image_folders, split=args.split,
                                   val_fraction=args.val_fraction, seed=args.split_seed, subset=args.subset)
        if args.audioset or args.ontology:
            audioset = audioset_eval_set(args.audioset, segments=args.segments, ontology=args.ontology,
                                         clips=args.clips, val_fraction=args.val_fraction, seed=args.split_seed,
                                         subset=args.subset)
        if manga is None and audioset is None:
            raise InputError("nothing to evaluate: give --manga/--genres (or --image-folders) and/or --audioset")
        if args.chapters < 1:
            raise InputError("--chapters must be >= 1")
        kw = dict(sample=args.sample, seed=args.seed, clip_seconds=args.clip_seconds, progress=not args.quiet)
        backend = open_backend(args.model, args.device, args.precision, args.threads)
        report = evaluate_backend(backend, manga, audioset, **kw)
        if args.soundtrack:
            report = _with_soundtrack(report, backend, manga, args)
        baseline = None
        if args.baseline:
            baseline = evaluate_backend(open_backend(args.baseline, args.device, args.precision, args.threads),
                                        manga, audioset, **kw)
        written = write_report(report, args.out, baseline)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except (MangaMusicError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    if report.moods:
        print(f"AudioSet mood mAP {_pct(report.moods.map)} over {report.moods.clips} clips"
              + (f" (baseline {_pct(baseline.moods.map)})" if baseline and baseline.moods else ""))
    if report.genres:
        print(f"Manga109 genre accuracy {_pct(report.genres.accuracy)} over {report.genres.pages} pages "
              f"[{report.genres.description}]"
              + (f" (baseline {_pct(baseline.genres.accuracy)})" if baseline and baseline.genres else ""))
    if report.soundtrack:
        r = report.soundtrack.plan
        print(f"Soundtrack over {report.soundtrack.chapters} chapters: boundary precision "
              f"{r['boundary_precision']:.2f}, recall {r['boundary_recall']:.2f}, "
              f"{r['story_switches_per_100_pages']:.1f} switches per 100 pages (greedy "
              f"{r['greedy_switches_per_100_pages']:.1f}), fit kept {r['fit_kept']:.3f}")
    print(f"wrote {len(written)} file(s) to {args.out}")
    return 0


def _with_soundtrack(report: EvalReport, backend, manga: EvalSet, args) -> EvalReport:
    from dataclasses import replace

    from runtime.soundtrack import SoundtrackSettings
    from training.soundtrack_eval import evaluate_soundtrack

    given = {k: v for k, v in (("switch_cost", args.switch_cost), ("seconds_per_page", args.seconds_per_page))
             if v is not None}
    result = evaluate_soundtrack(backend, manga.records, manga.description, library=args.library,
                                 settings=SoundtrackSettings(**given), n_chapters=args.chapters, seed=args.seed,
                                 progress=not args.quiet)
    return replace(report, soundtrack=result)


if __name__ == "__main__":
    sys.exit(main())
