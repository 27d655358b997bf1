"""How good a soundtrack is, against chapters whose story changes are known.

Test chapters are runs of consecutive pages taken from volumes of different genres
(``make_chapters``): the true boundaries are where the genre changes. For a plan (or a
``ReadingSession`` run over the same pages) ``score_chapter`` reports

- boundary precision / recall: a planned story change matches a true one at most
  ``tolerance`` pages away (one-to-one, nearest first);
- story switches (a track cut for a story change) and track changes of any kind (also
  where a track ran out and the next crossfades in), against the switches of the greedy
  baseline that plays each page's best track alone;
- fit: mean score (the catalogue's, which ranks the library: the hub-corrected cosine for
  a library built with the correction) of each page with the track heard at its middle,
  against the mean of each page's best track (``fit kept`` = ratio) and of an average
  track (chance). The best track is the one ``python -m runtime.query`` ranks first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._catalogue import Catalogue
from .fit import page_stats
from .online import OnlinePlanner
from .planner import plan_soundtrack
from .plays import STORY_CHANGE, Play
from .settings import SoundtrackSettings


@dataclass(frozen=True)
class LabelledChapter:
    """Pages (indices into some list of pages) and the label of each page's run."""

    pages: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def boundaries(self) -> tuple[int, ...]:
        return tuple(i for i in range(1, len(self.labels)) if self.labels[i] != self.labels[i - 1])


def make_chapters(volumes: Sequence[tuple[str, Sequence[int]]], n_chapters: int, seed: int = 0,
                  genres: tuple[int, int] = (2, 4), run_pages: tuple[int, int] = (8, 24),
                  odd_pages: int = 0) -> list[LabelledChapter]:
    """Chapters of 2-4 runs, each run consecutive pages of one volume, adjacent runs of
    different labels. ``volumes``: (label, page indices in reading order) per volume.

    ``odd_pages``: per chapter, that many pages inside runs (at least 3 pages from a run's
    edges) are replaced by a page of another label; they are no story change, so the
    labels keep the run's label and a plan that breaks there loses precision."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Sequence[int]]] = {}
    for label, pages in volumes:
        if len(pages):
            by_label.setdefault(label, []).append(pages)
    labels = sorted(by_label)
    if len(labels) < genres[0]:
        raise ValueError(f"need volumes of at least {genres[0]} labels, got {len(labels)}")
    out = []
    for _ in range(n_chapters):
        k = int(rng.integers(genres[0], min(genres[1], len(labels)) + 1))
        pages: list[int] = []
        run_labels: list[str] = []
        for label in rng.choice(labels, size=k, replace=False):
            vols = by_label[str(label)]
            vol = vols[int(rng.integers(len(vols)))]
            n = min(len(vol), int(rng.integers(run_pages[0], run_pages[1] + 1)))
            start = int(rng.integers(0, len(vol) - n + 1))
            pages += list(vol[start:start + n])
            run_labels += [str(label)] * n
        for _ in range(odd_pages):
            inner = [i for i in range(3, len(pages) - 3)
                     if len(set(run_labels[i - 3:i + 4])) == 1 and pages[i] in set(pages)]
            if not inner:
                break
            i = inner[int(rng.integers(len(inner)))]
            other = [lb for lb in labels if lb != run_labels[i]]
            vols = by_label[other[int(rng.integers(len(other)))]]
            vol = vols[int(rng.integers(len(vols)))]
            pages[i] = int(vol[int(rng.integers(len(vol)))])
        out.append(LabelledChapter(tuple(pages), tuple(run_labels)))
    return out


def match_boundaries(predicted: Sequence[int], true: Sequence[int], tolerance: int) -> int:
    """How many predicted boundaries match a distinct true one within ``tolerance`` pages."""
    pairs = sorted((abs(p - t), p, t) for p in predicted for t in true if abs(p - t) <= tolerance)
    used_p, used_t = set(), set()
    for _, p, t in pairs:
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
    return len(used_p)


@dataclass(frozen=True)
class ChapterScore:
    pages: int
    true_boundaries: int
    boundaries: int  # story changes the plan made
    matched: int
    track_changes: int  # any change of the track heard, page to page
    greedy_switches: int
    fit: float  # sum over pages of score(page, track heard)
    best_fit: float  # sum of each page's best score
    chance_fit: float  # sum of each page's mean score over the catalogue


def _score(embs, catalogue, rows: np.ndarray, boundaries: Sequence[int], chapter: LabelledChapter,
           tolerance: int) -> ChapterScore:
    stats = page_stats(embs, catalogue, 1)
    cols, pick = np.unique(rows, return_inverse=True)
    heard = np.take_along_axis(catalogue.scores(embs, cols), pick.reshape(-1, 1), axis=1)[:, 0].astype(np.float64)
    greedy = stats.top[:, 0]
    return ChapterScore(len(rows), len(chapter.boundaries), len(boundaries),
                        match_boundaries(boundaries, chapter.boundaries, tolerance),
                        int(np.sum(rows[1:] != rows[:-1])), int(np.sum(greedy[1:] != greedy[:-1])),
                        float(heard.sum()), float(stats.best.sum()), float(stats.mean.sum()))


def score_plan(embs: np.ndarray, catalogue: Catalogue, chapter: LabelledChapter, settings: SoundtrackSettings,
               tolerance: int = 2) -> ChapterScore:
    """The chapter planner on ``embs`` (the chapter's pages, in order)."""
    plan = plan_soundtrack(embs, catalogue, settings)
    return _score(embs, catalogue, plan.page_rows, [s.first_page for s in plan.segments[1:]], chapter, tolerance)


def score_online(embs: np.ndarray, catalogue: Catalogue, chapter: LabelledChapter, settings: SoundtrackSettings,
                 tolerance: int = 2) -> ChapterScore:
    """A ``ReadingSession``'s decisions on the same pages, turned one by one."""
    planner = OnlinePlanner(catalogue, settings)
    spp = settings.seconds_per_page
    rows, switches = [], []
    for i, e in enumerate(embs):
        cue = planner.turn(e)
        rows.append(_heard([cue.play, *cue.queued], cue.at_seconds + spp / 2))
        if cue.reason == STORY_CHANGE:
            switches.append(i)
    return _score(embs, catalogue, np.array(rows, dtype=np.int64), switches, chapter, tolerance)


def _heard(plays: list[Play], t: float) -> int:
    row = plays[0].track.row
    for p in plays:
        if p.start_seconds <= t:
            row = p.track.row
    return row


def summarize(scores: Sequence[ChapterScore]) -> dict:
    """Totals over chapters: boundary P/R (micro), switches per 100 pages, fit kept."""
    pages = sum(s.pages for s in scores)
    matched = sum(s.matched for s in scores)
    predicted = sum(s.boundaries for s in scores)
    true = sum(s.true_boundaries for s in scores)
    fit, best, chance = (sum(getattr(s, k) for s in scores) for k in ("fit", "best_fit", "chance_fit"))
    greedy = sum(s.greedy_switches for s in scores)
    return {
        "chapters": len(scores),
        "pages": pages,
        "boundary_precision": matched / predicted if predicted else 1.0,
        "boundary_recall": matched / true if true else 1.0,
        "story_switches_per_100_pages": 100 * predicted / pages,
        "track_changes_per_100_pages": 100 * sum(s.track_changes for s in scores) / pages,
        "greedy_switches_per_100_pages": 100 * greedy / pages,
        "switch_ratio": predicted / greedy if greedy else 0.0,
        "fit_kept": fit / best,
        "fit_kept_above_chance": (fit - chance) / (best - chance) if best > chance else 1.0,
    }
