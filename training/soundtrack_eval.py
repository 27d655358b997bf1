"""The soundtrack report of ``training.evaluate --soundtrack``: chapter planning on real page sequences.

Manga109 volumes are each one genre, so a test chapter is built as real manga is read:
runs of consecutive pages (8-24) from volumes of 2-4 different genres, one after the
other (``runtime.soundtrack.measure.make_chapters``, seeded). The true story changes are
the genre changes. Each chapter is planned twice, by the whole-chapter planner and by a
``ReadingSession``-style online planner turning its pages one by one, against a music
library built with the same bundle, and scored (``measure.score_*``): boundary precision
and recall (within ``tolerance`` pages), story switches and all track changes per 100
pages against the greedy baseline (each page's best track), and the page-track fit kept
relative to that baseline.

Chapters are drawn from the pages the evaluation set holds: with ``--split volume`` the
held-out volumes (whole, so runs are truly consecutive), with ``--subset all`` every volume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence



from runtime.errors import InputError

DEFAULT_CHAPTERS = 40


@dataclass(frozen=True)
class SoundtrackResult:
    plan: dict  # measure.summarize of the whole-chapter planner
    online: dict  # ... of the page-by-page planner
    chapters: int
    pages: int
    volumes: int
    settings: dict
    tolerance: int
    seed: int
    library: str
    description: str
    skipped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"plan": self.plan, "online": self.online, "chapters": self.chapters, "pages": self.pages,
                "volumes": self.volumes, "settings": self.settings, "boundary_tolerance_pages": self.tolerance,
                "seed": self.seed, "library": self.library, "data": self.description, "skipped": list(self.skipped)}

    def markdown(self) -> list[str]:
        def row(name: str, r: dict) -> str:
            return (f"| {name} | {r['boundary_precision']:.2f} | {r['boundary_recall']:.2f} | "
                    f"{r['story_switches_per_100_pages']:.1f} | {r['track_changes_per_100_pages']:.1f} | "
                    f"{r['switch_ratio']:.2f} | {r['fit_kept']:.3f} | {r['fit_kept_above_chance']:.3f} |")

        g = self.plan["greedy_switches_per_100_pages"]
        return ["", "## Soundtrack: whole chapters", "",
                f"Data: {self.chapters} chapters ({self.pages} pages) of 2-4 runs of 8-24 consecutive pages from "
                f"{self.volumes} volumes of {self.description} (seed {self.seed}); music library `{self.library}`.",
                f"Settings: {self.settings}. A boundary matches a genre change at most {self.tolerance} pages away.",
                "", "| planner | boundary precision | boundary recall | story switches / 100 pages | "
                    "track changes / 100 pages | switches vs greedy | fit kept | fit kept above chance |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                row("whole chapter", self.plan), row("page by page (ReadingSession)", self.online),
                f"| greedy: each page's best track | - | - | {g:.1f} | {g:.1f} | 1.00 | 1.000 | 1.000 |"]


def volumes_of(records: Sequence[Any]) -> list[tuple[str, str, list[int]]]:
    """(title, genre, record indices in page order) per volume of Manga109 page records."""
    by_title: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        title = getattr(r, "title", None)
        if title is None:
            raise InputError("--soundtrack needs Manga109 volumes (--manga/--genres); genre folders have no page order")
        by_title.setdefault(title, []).append(i)
    return [(t, records[idx[0]].genre, sorted(idx, key=lambda i: records[i].index)) for t, idx in by_title.items()]


def evaluate_soundtrack(backend, records: Sequence[Any], description: str, library=None, settings=None,
                        n_chapters: int = DEFAULT_CHAPTERS, seed: int = 0, tolerance: int = 2,
                        progress: bool = False) -> SoundtrackResult:
    """Plan and score ``n_chapters`` chapters made of runs of the records' volumes."""
    from runtime.library import open_library
    from runtime.soundtrack import Catalogue, SoundtrackSettings
    from runtime.soundtrack.measure import make_chapters, score_online, score_plan, summarize

    from training.record_embedding import embed_pages

    encoders = getattr(backend, "encoders", None)
    if encoders is None:
        raise InputError("--soundtrack needs a bundle (a music library's embeddings come from one bundle); "
                         "export the checkpoint with `python -m export` first")
    settings = settings or SoundtrackSettings()
    lib = open_library(library, bundle=encoders.bundle)
    try:
        catalogue = Catalogue.from_library(lib)
        vols = volumes_of(records)
        chapters = make_chapters([(genre, idx) for _, genre, idx in vols], n_chapters, seed=seed)
        used = sorted({i for c in chapters for i in c.pages})
        emb, kept, skipped = embed_pages(backend, [records[i] for i in used], progress)
        row_of = {used[k]: r for r, k in enumerate(kept)}
        plan, online = [], []
        for c in chapters:
            # Unreadable pages drop out of their run, as a reader would skip them.
            keep = [(row_of[i], label) for i, label in zip(c.pages, c.labels) if i in row_of]
            if not keep:
                continue
            ch = type(c)(tuple(range(len(keep))), tuple(label for _, label in keep))
            e = emb[[r for r, _ in keep]]
            plan.append(score_plan(e, catalogue, ch, settings, tolerance))
            online.append(score_online(e, catalogue, ch, settings, tolerance))
        if not plan:
            raise InputError(f"{description}: no page of the soundtrack chapters could be read")
        return SoundtrackResult(summarize(plan), summarize(online), len(plan), sum(s.pages for s in plan), len(vols),
                                settings.to_dict(), tolerance, seed, str(lib.dir), description, tuple(skipped))
    finally:
        lib.close()
