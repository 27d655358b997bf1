"""Inputs for int8 calibration and for the parity report: built-in, or from the user's folder.

Static int8 quantisation needs activation ranges, measured by running the fp32 graph on
inputs like the ones it will see. With no ``--calibration DIR`` the export makes its own:
page-like images (white paper, panel borders, screentone, ink strokes, speech bubbles with
text-like marks, some colour covers) and music-like clips (chords with harmonics, a bass
line, a melody with envelopes, kick/snare/hi-hat), all drawn with numpy from a seed.

The parity report uses the same generators with seeds from a disjoint range, so the
held-out set never overlaps the calibration set. A user folder goes through the runtime's
own preprocessing (``runtime.image_preprocess`` / ``runtime.audio_preprocess``), exactly
what the graphs will be fed in production.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.audio_preprocess import load_audio, windows
from runtime.errors import InputError, MangaMusicError
from runtime.formats import is_audio_name, is_image_name
from runtime.image_preprocess import preprocess_image
from runtime.labels import GENRE_LABELS, MOOD_LABELS
from runtime.manifest import AudioPreprocess, ImagePreprocess
from runtime.tokenizer import default_tokenizer

# Seeds: calibration draws from [0, 10000), parity from [PARITY_SEED, ...): never the same input.
PARITY_SEED = 1_000_003
# A user folder can be huge; calibration needs tens of inputs, not thousands.
MAX_USER_IMAGES = 64
MAX_USER_CLIPS = 32

# Text for the parity report (and static text calibration, should one be used): the label
# prompts the bundle ships plus free text of the kind a reader app sends. Two disjoint lists.
_PARITY_TEXTS = (
    "a quiet piano piece for a rainy evening", "epic orchestral battle music with drums",
    "a lonely character walks home at night", "upbeat pop song for a school festival",
    "creepy ambient drones in an abandoned hospital", "two friends laughing at a silly mistake",
    "samurai duel under cherry blossoms", "a spaceship drifts past a dying star",
    "tense strings as the detective finds a clue", "a gentle lullaby", "heavy metal guitar riff",
    "the final match of the basketball tournament", "a confession on the rooftop at sunset",
)
_CALIBRATION_TEXTS = (
    "music for a sword fight", "slow sad violin", "a funny chase scene", "a love letter",
    "ghost story at midnight", "robots marching", "the team wins the championship",
    "a cat sleeping in the sun", "mysterious footsteps in the fog", "festival drums and flutes",
    "a tearful goodbye at the station", "comic relief with a kazoo", "dragons over the mountains",
    "jazz in a smoky bar", "a calm morning by the sea", "an explosion in the city",
)


@dataclass(frozen=True)
class InputSet:
    """Inputs for one purpose (calibration or parity), already in graph form.

    ``images`` float32 [N, 3, S, S] (normalised); ``tokens`` int64 [N, 77] with the
    ``texts`` they came from; ``audio`` float32 waveforms in [-1, 1] at the model's rate
    (a tuple, because a user's clips may differ in length).
    """

    images: np.ndarray = field(repr=False)
    texts: tuple[str, ...]
    tokens: np.ndarray = field(repr=False)
    audio: tuple[np.ndarray, ...] = field(repr=False)
    source: str  # "built-in" or the folder, per modality where they differ
    notes: tuple[str, ...] = ()

    def source_of(self, modality: str) -> str:
        """Where this set's inputs of one modality come from ("built-in" or "FOLDER (n held out)")."""
        for part in self.source.split("; "):
            if part.startswith(f"{modality}: "):
                return part[len(modality) + 2:]
        return "built-in"

    def count(self, modality: str) -> int:
        return {"image": len(self.images), "text": len(self.tokens), "audio": len(self.audio)}[modality]

    def batches(self, modality: str, batch_size: int = 4):
        """Inputs of one modality in graph-ready batches (audio: equal lengths together)."""
        if modality == "image":
            data = self.images
        elif modality == "text":
            data = self.tokens
        else:
            # Clips of different lengths cannot share a batch; keep each length's run together.
            i = 0
            while i < len(self.audio):
                j = i + 1
                while j < len(self.audio) and j - i < batch_size and len(self.audio[j]) == len(self.audio[i]):
                    j += 1
                yield np.stack(self.audio[i:j])
                i = j
            return
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]


# -- synthetic pages ----------------------------------------------------------------------
def _ellipse_mask(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / max(ry, 1.0)) ** 2 + ((xx - cx) / max(rx, 1.0)) ** 2 <= 1.0


def _line(img: np.ndarray, y0: float, x0: float, y1: float, x1: float, width: int, value) -> None:
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    ys = np.linspace(y0, y1, n).astype(int)
    xs = np.linspace(x0, x1, n).astype(int)
    h, w = img.shape[:2]
    for d in range(-(width // 2), width - width // 2):
        img[np.clip(ys + d, 0, h - 1), np.clip(xs, 0, w - 1)] = value
        img[np.clip(ys, 0, h - 1), np.clip(xs + d, 0, w - 1)] = value


def synthetic_page(rng: np.random.Generator, height: int = 560, width: int = 400) -> np.ndarray:
    """A uint8 RGB page [H, W, 3] that looks like manga to a CNN: paper, panels, tone, ink."""
    colour = rng.random() < 0.2  # covers and colour inserts
    page = np.full((height, width, 3), 255, np.uint8)
    if colour:
        page[:] = rng.integers(150, 256, 3, dtype=np.uint8)
    margin, gutter = int(rng.integers(12, 30)), int(rng.integers(6, 16))
    rows = int(rng.integers(2, 5))
    cuts = np.sort(rng.uniform(0.2, 0.8, rows - 1)) if rows > 1 else np.array([])
    ys = np.concatenate([[margin], margin + cuts * (height - 2 * margin), [height - margin]]).astype(int)
    for r in range(rows):
        cols = int(rng.integers(1, 4))
        xcuts = np.sort(rng.uniform(0.25, 0.75, cols - 1)) if cols > 1 else np.array([])
        xs = np.concatenate([[margin], margin + xcuts * (width - 2 * margin), [width - margin]]).astype(int)
        for c in range(cols):
            y0, y1 = ys[r] + gutter // 2, ys[r + 1] - gutter // 2
            x0, x1 = xs[c] + gutter // 2, xs[c + 1] - gutter // 2
            if y1 - y0 < 12 or x1 - x0 < 12:
                continue
            _paint_panel(page, rng, y0, y1, x0, x1, colour)
            border = int(rng.integers(2, 5))
            page[y0:y0 + border, x0:x1] = 0
            page[y1 - border:y1, x0:x1] = 0
            page[y0:y1, x0:x0 + border] = 0
            page[y0:y1, x1 - border:x1] = 0
    noise = rng.normal(0, rng.uniform(0, 6), page.shape)  # scanner grain
    return np.clip(page + noise, 0, 255).astype(np.uint8)


def _paint_panel(page: np.ndarray, rng: np.random.Generator, y0: int, y1: int, x0: int, x1: int,
                 colour: bool) -> None:
    h, w = y1 - y0, x1 - x0
    panel = page[y0:y1, x0:x1]
    if rng.random() < 0.6:  # screentone: a dot grid of random period, angle and density
        period = rng.uniform(3, 8)
        yy, xx = np.mgrid[:h, :w]
        a = rng.uniform(0, np.pi)
        u = (xx * np.cos(a) + yy * np.sin(a)) % period - period / 2
        v = (-xx * np.sin(a) + yy * np.cos(a)) % period - period / 2
        dots = u ** 2 + v ** 2 < (rng.uniform(0.2, 0.45) * period) ** 2
        region = _ellipse_mask(h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 3, h), rng.uniform(w / 3, w))
        panel[dots & region] = rng.integers(0, 120)
    if rng.random() < 0.3:  # speed lines or a dark background
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        for _ in range(int(rng.integers(10, 40))):
            a = rng.uniform(0, 2 * np.pi)
            r0, r1 = rng.uniform(0.3, 0.6) * max(h, w), max(h, w)
            _line(panel, cy + r0 * np.sin(a), cx + r0 * np.cos(a), cy + r1 * np.sin(a), cx + r1 * np.cos(a),
                  1, 0)
    ink = rng.integers(0, 60, 3) if colour else np.zeros(3, int)
    for _ in range(int(rng.integers(2, 9))):  # figures: filled blobs and strokes
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        m = _ellipse_mask(h, w, cy, cx, rng.uniform(4, h / 3), rng.uniform(4, w / 3))
        fill = rng.integers(0, 256, 3) if colour else np.full(3, rng.choice([0, 40, 90, 255]))
        panel[m] = fill
        for _ in range(int(rng.integers(1, 5))):
            _line(panel, cy, cx, rng.uniform(0, h), rng.uniform(0, w), int(rng.integers(1, 4)), ink)
    if rng.random() < 0.7 and h > 40 and w > 40:  # a speech bubble with text-like marks
        ry, rx = rng.uniform(12, h / 3), rng.uniform(12, w / 3)
        cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
        outer = _ellipse_mask(h, w, cy, cx, ry + 2, rx + 2)
        inner = _ellipse_mask(h, w, cy, cx, ry, rx)
        panel[outer] = 0
        panel[inner] = 255
        vertical = rng.random() < 0.7  # Japanese text runs in columns
        for k in range(int(rng.integers(2, 6))):
            if vertical:
                x = int(cx - rx / 2 + k * rx / 3)
                ya, yb = int(cy - ry / 2), int(cy + ry / 2 * rng.uniform(0.3, 1))
                panel[max(ya, 0):max(yb, 0):3, max(x, 0):max(x + 2, 0)] = 0
            else:
                y = int(cy - ry / 2 + k * ry / 3)
                xa, xb = int(cx - rx / 2), int(cx + rx / 2 * rng.uniform(0.3, 1))
                panel[max(y, 0):max(y + 2, 0), max(xa, 0):max(xb, 0):3] = 0


# -- synthetic music ------------------------------------------------------------------------
def synthetic_clip(rng: np.random.Generator, seconds: float = 5.0, sample_rate: int = 44100) -> np.ndarray:
    """A float32 mono clip in [-1, 1] with harmony, bass, melody and drums (or some of them)."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    tonic = 45 + int(rng.integers(0, 12))  # A2..G#3 in MIDI
    minor = rng.random() < 0.5
    scale = np.array([0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11])
    bpm = rng.uniform(60, 170)
    beat = 60.0 / bpm
    hz = lambda midi: 440.0 * 2 ** ((midi - 69) / 12)  # noqa: E731

    def tone(f: float, start: float, dur: float, harmonics: int, decay: float) -> None:
        a, b = int(start * sample_rate), min(n, int((start + dur) * sample_rate))
        if b <= a:
            return
        tt = t[a:b] - start
        env = np.minimum(tt / 0.01, 1.0) * np.exp(-tt * decay)
        wave = sum(np.sin(2 * np.pi * f * k * tt + rng.uniform(0, 6.28)) / k ** rng.uniform(1, 2)
                   for k in range(1, harmonics + 1))
        out[a:b] += env * wave

    bar = 4 * beat
    if rng.random() < 0.9:  # chords, one per bar
        for i, start in enumerate(np.arange(0, seconds, bar)):
            degree = int(rng.choice([0, 3, 4, 5])) if i else 0
            for third in (0, 2, 4):
                midi = tonic + 12 + scale[(degree + third) % 7] + 12 * ((degree + third) // 7)
                tone(hz(midi), start, bar, int(rng.integers(2, 7)), rng.uniform(0.3, 2))
            tone(hz(tonic - 12 + scale[degree]), start, bar, 3, 1.0)  # bass
    if rng.random() < 0.8:  # melody on eighths and quarters
        pos, note = 0.0, int(rng.integers(0, 7))
        while pos < seconds:
            dur = beat * float(rng.choice([0.5, 1.0, 1.5]))
            note = int(np.clip(note + rng.integers(-2, 3), 0, 13))
            tone(hz(tonic + 24 + scale[note % 7] + 12 * (note // 7)), pos, dur, int(rng.integers(1, 5)),
                 rng.uniform(1, 6))
            pos += dur
    if rng.random() < 0.7:  # drums
        for start in np.arange(0, seconds, beat):
            a = int(start * sample_rate)
            k = min(n - a, int(0.25 * sample_rate))
            tt = np.arange(k) / sample_rate
            out[a:a + k] += 1.5 * np.sin(2 * np.pi * (50 + 80 * np.exp(-tt * 30)) * tt) * np.exp(-tt * 12)
            half = int((start + beat / 2) * sample_rate)
            if half < n:
                m = min(n - half, int(0.05 * sample_rate))
                out[half:half + m] += 0.3 * np.diff(rng.standard_normal(m + 1)) * np.exp(-np.arange(m) / 300)
        for start in np.arange(beat, seconds, 2 * beat):
            a = int(start * sample_rate)
            m = min(n - a, int(0.15 * sample_rate))
            out[a:a + m] += 0.8 * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.03 * sample_rate))
    out += rng.uniform(0, 0.01) * rng.standard_normal(n)  # room noise: no digital silence
    peak = float(np.max(np.abs(out))) or 1.0
    return (out / peak * rng.uniform(0.2, 0.95)).astype(np.float32)


# -- sets -------------------------------------------------------------------------------------
def _tokens(texts) -> np.ndarray:
    return default_tokenizer()(list(texts)).astype(np.int64)


def builtin_set(image_cfg: ImagePreprocess, audio_cfg: AudioPreprocess, n_images: int = 32, n_clips: int = 16,
                n_texts: int = 32, seed: int = 0, purpose: str = "calibration") -> InputSet:
    """Synthetic pages and clips from ``seed``; ``purpose`` picks the text list
    ("parity": label prompts + free text; "calibration": a disjoint list)."""
    images = np.stack([preprocess_image(synthetic_page(np.random.default_rng([seed, 1, i])), image_cfg)
                       for i in range(n_images)]) if n_images else np.zeros((0, 3, image_cfg.size, image_cfg.size),
                                                                             np.float32)
    audio = tuple(synthetic_clip(np.random.default_rng([seed, 2, i]), audio_cfg.window_seconds,
                                 audio_cfg.sample_rate) for i in range(n_clips))
    if purpose == "parity":
        pool = list(MOOD_LABELS.prompts()) + list(GENRE_LABELS.prompts()) + list(_PARITY_TEXTS)
    else:
        pool = list(_CALIBRATION_TEXTS)
    texts = tuple((pool * (n_texts // max(len(pool), 1) + 1))[:n_texts])
    return InputSet(images, texts, _tokens(texts), audio, "built-in")


def parity_set(image_cfg: ImagePreprocess, audio_cfg: AudioPreprocess, n: int = 32) -> InputSet:
    """The held-out set of the parity report: ``n`` inputs per modality, never calibration data."""
    return builtin_set(image_cfg, audio_cfg, n, n, n, seed=PARITY_SEED, purpose="parity")


def _spread(paths: list[Path], k: int) -> list[Path]:
    """At most k paths, evenly spaced through the sorted list (deterministic, covers the folder)."""
    if len(paths) <= k:
        return paths
    idx = np.linspace(0, len(paths) - 1, k).round().astype(int)
    return [paths[i] for i in idx]


# Every HELD_OUT_EVERY-th file of a modality (in sorted order) is held out for the parity
# report, when the folder has at least MIN_SPLIT files of it; fewer all calibrate.
HELD_OUT_EVERY = 4
MIN_SPLIT = 8
MAX_HELD_OUT = 32


@dataclass(frozen=True)
class FolderSets:
    """A user folder split in two: ``calibration`` (for the activation ranges) and
    ``held_out`` (for the parity report), per modality; a modality the folder lacks, or
    has too few files of to split, is None in ``held_out`` (the parity report then uses the
    generated set for it and says so)."""

    calibration: InputSet
    held_out_images: np.ndarray | None
    held_out_audio: tuple[np.ndarray, ...] | None
    held_out_counts: dict = field(default_factory=dict)  # modality -> files held out


def _split(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out): every HELD_OUT_EVERY-th path is held out; never both."""
    if len(paths) < MIN_SPLIT:
        return paths, []
    held = paths[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    chosen = set(held)
    return [p for p in paths if p not in chosen], held


def _load_images(paths, image_cfg, skipped) -> list[np.ndarray]:
    out = []
    for p in paths:
        try:
            out.append(preprocess_image(p, image_cfg))
        except MangaMusicError as exc:
            skipped.append(str(exc))
    return out


def _load_clips(paths, audio_cfg, skipped) -> list[np.ndarray]:
    out = []
    for p in paths:
        try:
            wave = load_audio(p, audio_cfg.sample_rate)
        except MangaMusicError as exc:
            skipped.append(str(exc))
            continue
        win, _ = windows(wave, audio_cfg)
        # The middle window of a track is the most music-like (intros and fades are quiet).
        out.append(win[len(win) // 2])
    return out


def folder_sets(folder: str | Path, image_cfg: ImagePreprocess, audio_cfg: AudioPreprocess,
                fallback: InputSet | None = None) -> FolderSets:
    """Calibration and held-out parity inputs from a user's folder (searched recursively),
    through the runtime's preprocessing. The files of each modality are split: every
    ``HELD_OUT_EVERY``-th (sorted) is held out for parity and never calibrates. A modality
    the folder lacks calibrates from ``fallback`` (the built-in set), and the notes say so.
    Unreadable files are skipped and counted; a folder with nothing usable at all is an
    ``InputError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: calibration folder does not exist or is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    img_cal, img_held = _split([p for p in files if is_image_name(p.name)])
    aud_cal, aud_held = _split([p for p in files if is_audio_name(p.name)])
    notes, skipped = [], []
    images = _load_images(_spread(img_cal, MAX_USER_IMAGES), image_cfg, skipped)
    clips = _load_clips(_spread(aud_cal, MAX_USER_CLIPS), audio_cfg, skipped)
    held_images = _load_images(_spread(img_held, MAX_HELD_OUT), image_cfg, skipped)
    held_clips = _load_clips(_spread(aud_held, MAX_HELD_OUT), audio_cfg, skipped)
    if not images and not clips:
        why = f" ({len(skipped)} unreadable, first: {skipped[0]})" if skipped else ""
        raise InputError(f"{folder}: no usable images or audio files for calibration{why}")
    if skipped:
        notes.append(f"calibration: skipped {len(skipped)} unreadable file(s), first: {skipped[0]}")
    if fallback is None:
        fallback = builtin_set(image_cfg, audio_cfg)
    src = []
    if images:
        src.append(f"image: {folder.name} ({len(images)})")
        image_arr = np.stack(images)
    else:
        notes.append(f"calibration: {folder} has no images; using the built-in pages")
        image_arr = fallback.images
    if clips:
        src.append(f"audio: {folder.name} ({len(clips)})")
        audio = tuple(clips)
    else:
        notes.append(f"calibration: {folder} has no audio; using the built-in clips")
        audio = fallback.audio
    for what, cal, held in (("images", img_cal, held_images), ("audio files", aud_cal, held_clips)):
        if cal and not held:
            notes.append(f"parity: {folder} has fewer than {MIN_SPLIT} usable {what} to split; the parity "
                         f"report measures that encoder on the generated set")
    calibration = InputSet(image_arr, fallback.texts, fallback.tokens, audio, "; ".join(src) or "built-in",
                           tuple(notes))
    return FolderSets(calibration, np.stack(held_images) if held_images else None,
                      tuple(held_clips) if held_clips else None,
                      {"image": len(held_images), "audio": len(held_clips)})


def folder_set(folder: str | Path, image_cfg: ImagePreprocess, audio_cfg: AudioPreprocess,
               fallback: InputSet | None = None) -> InputSet:
    """The calibration part of ``folder_sets`` (what int8 calibration reads)."""
    return folder_sets(folder, image_cfg, audio_cfg, fallback).calibration


def with_held_out(parity: InputSet, sets: FolderSets, folder: str | Path) -> InputSet:
    """``parity`` (the generated held-out set) with each modality the user's folder has
    held-out files of replaced by them; ``source`` says which came from where."""
    images = parity.images if sets.held_out_images is None else sets.held_out_images
    audio = parity.audio if sets.held_out_audio is None else sets.held_out_audio
    # The folder's name, not its path: the manifest travels, the exporting machine's paths do not.
    src = [f"{m}: {Path(folder).name} ({n} held out)" for m, n in sets.held_out_counts.items() if n]
    return InputSet(images, parity.texts, parity.tokens, audio, "; ".join(src) or parity.source, parity.notes)
