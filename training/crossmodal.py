"""The seed paper's cross-modal tables: which moods a genre's pages ask for, and the reverse.

Pages and music never meet in training; they meet through text. What is computed, exactly:

- genre -> mood (12 x 7): for every sampled page, its image embedding is compared with the
  text embeddings of the 7 mood prompts ("Happy music", ...); the mood confidences are
  ``softmax(image_text_scale * cosine)`` over the 7 moods (the model's zero-shot
  classifier). Row g is the mean of those distributions over the sampled pages of genre g,
  so each row sums to 1.
- mood -> genre (7 x 12): for every sampled clip, ``softmax(audio_text_scale * cosine)``
  of its audio embedding against the 12 genre prompts ("animal", ...); row m is the mean
  over the sampled clips labelled with mood m. A clip with several moods counts in each of
  their rows.

Each item's confidences depend only on that item and the prompts, never on what else is
in a batch, and the sample is fixed by a seed: `balanced_sample` draws up to ``n`` items
(default 200 per side) round-robin over the classes from a per-class seeded shuffle, so
every class is represented as evenly as the data allows and the same data and seed give
the same sample. Rows of a class with no sampled item are NaN (shown as "-").

Written as Markdown, CSV and a heatmap PNG (matplotlib when installed, else a PIL drawing).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.metrics import softmax


def balanced_sample(labels: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[int]:
    """Indices of up to ``n`` items, round-robin over classes (an item's first label is its class).

    Deterministic in (labels, n, seed); the result is sorted.
    """
    by_class: dict[int, list[int]] = {}
    for i, ls in enumerate(labels):
        by_class.setdefault(int(ls[0]), []).append(i)
    queues = []
    for c in sorted(by_class):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, c])
        queues.append([by_class[c][j] for j in rng.permutation(len(by_class[c]))])
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return sorted(out)


@dataclass(frozen=True)
class CrossModalTable:
    """rows x cols mean confidences; counts[r] = items averaged into row r."""

    name: str
    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: np.ndarray
    counts: tuple[int, ...]
    description: str

    def to_markdown(self, digits: int = 1) -> str:
        head = f"| {self.name.split('_to_')[0]} (n) | " + " | ".join(self.cols) + " |"
        sep = "| --- | " + " | ".join("---:" for _ in self.cols) + " |"
        lines = [f"### {self.title}", "", self.description, "", head, sep]
        for r, label in enumerate(self.rows):
            row = self.values[r]
            best = int(np.nanargmax(row)) if np.isfinite(row).any() else -1
            cells = []
            for c, v in enumerate(row):
                s = "-" if not np.isfinite(v) else f"{100 * v:.{digits}f}"
                cells.append(f"**{s}**" if c == best else s)
            lines.append(f"| {label} ({self.counts[r]}) | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([self.name.split("_to_")[0], "n", *self.cols])
        for r, label in enumerate(self.rows):
            w.writerow([label, self.counts[r], *("" if not np.isfinite(v) else f"{v:.6f}" for v in self.values[r])])
        return buf.getvalue()

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "rows": list(self.rows), "cols": list(self.cols),
                "counts": list(self.counts), "description": self.description,
                "values": [[None if not np.isfinite(v) else float(v) for v in row] for row in self.values]}


def confidence_table(item_emb: np.ndarray, item_labels: Sequence[Sequence[int]], prompt_emb: np.ndarray,
                     scale: float, row_names: Sequence[str], col_names: Sequence[str], name: str, title: str,
                     description: str) -> CrossModalTable:
    """Mean over the items of each row class of softmax(scale * cos(item, prompts))."""
    item_emb = np.asarray(item_emb, dtype=np.float64)
    probs = softmax(scale * item_emb @ np.asarray(prompt_emb, dtype=np.float64).T, axis=1)
    sums = np.zeros((len(row_names), len(col_names)))
    counts = np.zeros(len(row_names), dtype=np.int64)
    for p, labels in zip(probs, item_labels):
        for r in set(int(x) for x in labels):
            sums[r] += p
            counts[r] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts[:, None] > 0, sums / np.maximum(counts[:, None], 1), np.nan)
    return CrossModalTable(name, title, tuple(row_names), tuple(col_names), values,
                           tuple(int(c) for c in counts), description)


def write_table(table: CrossModalTable, out_dir: str | Path) -> list[Path]:
    """<name>.md, <name>.csv and <name>.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{table.name}.md", out / f"{table.name}.csv", out / f"{table.name}.png"]
    paths[0].write_text(table.to_markdown(), encoding="utf-8")
    paths[1].write_text(table.to_csv(), encoding="utf-8")
    heatmap_png(table, paths[2])
    return paths


def heatmap_png(table: CrossModalTable, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _heatmap_pil(table, path)
    rows, cols = len(table.rows), len(table.cols)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * cols, 1.2 + 0.45 * rows), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(table.values * 100), cmap="viridis", aspect="auto")
    ax.set_xticks(range(cols), table.cols, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [f"{r} ({n})" for r, n in zip(table.rows, table.counts)], fontsize=8)
    for r in range(rows):
        for c in range(cols):
            v = table.values[r, c]
            if np.isfinite(v):
                ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < np.nanmax(table.values) * 0.6 else "black")
    ax.set_title(table.title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean confidence (%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _heatmap_pil(table: CrossModalTable, path: str | Path) -> Path:
    """A plain heatmap without matplotlib: cells shaded by value, labels in the default font."""
    from PIL import Image, ImageDraw

    cell, left, top = 44, 190, 110
    rows, cols = len(table.rows), len(table.cols)
    img = Image.new("RGB", (left + cols * cell + 10, top + rows * cell + 10), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), table.title, fill="black")
    vmax = np.nanmax(table.values) if np.isfinite(table.values).any() else 1.0
    for c, name in enumerate(table.cols):
        d.text((left + c * cell + 2, 30 + (c % 4) * 18), name[:14], fill="black")
    for r, name in enumerate(table.rows):
        d.text((8, top + r * cell + cell // 3), f"{name} ({table.counts[r]})"[:30], fill="black")
        for c in range(cols):
            v = table.values[r, c]
            x0, y0 = left + c * cell, top + r * cell
            if np.isfinite(v):
                t = float(v / vmax) if vmax > 0 else 0.0
                colour = (int(255 * (1 - t)), int(255 * (1 - 0.6 * t)), 255)
                d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=colour)
                d.text((x0 + 8, y0 + cell // 3), f"{100 * v:.0f}", fill="black")
            else:
                d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], outline="grey")
    img.save(path)
    return Path(path)


__all__ = ["CrossModalTable", "balanced_sample", "confidence_table", "heatmap_png", "write_table"]
