"""Issue 14's numbers, asserted: the shipped demo bundle and library on synthetic chapters in
the real Manga109 layout (runs of consecutive pages of 2-4 genres), and
``training.evaluate --soundtrack`` on a tiny generated Manga109 fixture.

Targets (issue 14): the whole-chapter plan keeps >= 90 % of the fit of each page's best
track with <= 1/4 of its switches. Fit is the library's ranking score (hub-corrected) and
the best track is the library's first hit. Measured on this fixture (seed 7 pages, seed 3
chapters; the README has the larger held-out run) with the demo library as rebuilt in
segments: plan P/R 1.00/0.98, 0.11 of the greedy switches, fit kept 0.931 (0.913 with an
odd page per chapter); page by page 0.85/0.88, fit kept 0.846 (0.821). The bounds below are
the targets for the plan and looser ones page by page, which lags a change by
min_pages - 1 turns by design; they are margins for a rebuilt demo model, not these numbers.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from runtime.soundtrack import Catalogue, SoundtrackSettings
from runtime.soundtrack.measure import LabelledChapter, make_chapters, match_boundaries, score_online, score_plan, summarize


def test_boundary_matching_is_one_to_one_within_the_tolerance():
    assert match_boundaries([10, 11, 30], [10, 29], 2) == 2  # 11 may not reuse 10's match
    assert match_boundaries([5], [8], 2) == 0
    assert LabelledChapter((1, 2, 3, 4), ("a", "a", "b", "a")).boundaries == (2, 3)


def test_made_chapters_are_runs_of_consecutive_pages_of_different_genres():
    vols = [(g, list(range(100 * i, 100 * i + 30))) for i, g in enumerate("abcde")]
    for c in make_chapters(vols, 20, seed=1, run_pages=(8, 24)):
        runs = np.split(np.array(c.pages), c.boundaries)
        labels = [c.labels[0]] + [c.labels[b] for b in c.boundaries]
        assert 2 <= len(runs) <= 4 and len(set(labels)) == len(labels)
        for run, label in zip(runs, labels):
            assert 8 <= len(run) <= 24 and np.all(np.diff(run) == 1) and run[0] // 100 == "abcde".index(label)


@pytest.fixture(scope="module")
def demo_pages(tmp_path_factory):
    """Embeddings (shipped demo bundle) of 24 pages of one volume per genre, Manga109 layout."""
    from training.synthetic.layouts import write_manga109

    from runtime.encoders import Encoders

    root = write_manga109(tmp_path_factory.mktemp("m109"), pages_per_book=24, books_per_genre=1, seed=7)
    genre = dict(csv.reader(open(root / "genres.csv", encoding="utf-8")))
    paths, vols = [], []
    for title in (root / "books.txt").read_text(encoding="utf-8").split():
        pages = sorted((root / "images" / title).glob("*.jpg"))
        vols.append((genre[title], list(range(len(paths), len(paths) + len(pages)))))
        paths += pages
    return Encoders(None, device="cpu", threads=1).embed_images([str(p) for p in paths]), vols


@pytest.mark.parametrize("odd_pages", [0, 1])
def test_demo_soundtrack_meets_the_targets(demo_pages, odd_pages):
    from runtime.library import open_library

    embs, vols = demo_pages
    lib = open_library(None)
    cat, s = Catalogue.from_library(lib), SoundtrackSettings()
    chapters = make_chapters(vols, 30, seed=3, odd_pages=odd_pages)
    plan = summarize([score_plan(embs[list(c.pages)], cat, c, s) for c in chapters])
    online = summarize([score_online(embs[list(c.pages)], cat, c, s) for c in chapters])
    lib.close()
    assert plan["pages"] > 1000
    assert plan["boundary_precision"] >= 0.9 and plan["boundary_recall"] >= 0.9
    assert plan["switch_ratio"] <= 0.25 and plan["fit_kept"] >= 0.90  # issue 14's target
    assert plan["greedy_switches_per_100_pages"] >= 20  # the baseline does jump about
    assert online["boundary_precision"] >= 0.8 and online["boundary_recall"] >= 0.8
    assert online["switch_ratio"] <= 0.25 and online["fit_kept"] >= 0.8
    # Well above an average track, too. (Not below fit_kept by construction: an average
    # track's centred score is about 0 and may be slightly negative.)
    assert plan["fit_kept_above_chance"] > 0.8


def test_evaluate_soundtrack_on_a_tiny_manga109_layout(tmp_path, capsys):
    pytest.importorskip("torch")
    from runtime_fixtures import tiny_world
    from training import evaluate as ev
    from training.soundtrack_eval import evaluate_soundtrack
    from training.synthetic.layouts import write_manga109

    world = tiny_world(tmp_path / "world")
    manga = write_manga109(tmp_path / "manga", pages_per_book=12, books_per_genre=1, seed=0, size=(64, 90))
    out = tmp_path / "eval"
    rc = ev.main([str(world.bundle), "--manga", str(manga), "--genres", str(manga / "genres.csv"), "--subset", "all",
                  "--soundtrack", "--library", str(world.library), "--chapters", "5", "--switch-cost", "3",
                  "--out", str(out), "--quiet", "--sample", "12"])
    assert rc == 0, capsys.readouterr().err
    assert "Soundtrack over 5 chapters" in capsys.readouterr().out
    st = json.loads((out / "report.json").read_text())["model"]["soundtrack"]
    assert st["chapters"] == 5 and st["volumes"] == 12 and st["settings"]["switch_cost"] == 3
    # The report is the planner's own numbers on the same chapters, recomputed here.
    backend = ev.open_backend(world.bundle)
    records = ev.manga_eval_set(manga, manga / "genres.csv", subset="all")
    again = evaluate_soundtrack(backend, records.records, records.description, library=world.library,
                                settings=SoundtrackSettings(switch_cost=3.0), n_chapters=5)
    assert st["plan"] == pytest.approx(again.plan) and st["online"] == pytest.approx(again.online)
    assert st["pages"] == again.pages >= 5 * 2 * 8  # each chapter: at least two runs of at least 8 pages
    for r in (st["plan"], st["online"]):
        assert 0 <= r["boundary_precision"] <= 1 and 0 <= r["boundary_recall"] <= 1 and 0 < r["fit_kept"] <= 1
    md = (out / "report.md").read_text()
    assert "## Soundtrack: whole chapters" in md and "| whole chapter |" in md


def test_evaluate_soundtrack_needs_a_bundle_and_volumes(tmp_path, capsys):
    pytest.importorskip("torch")
    from runtime.errors import InputError
    from training import evaluate as ev
    from training.soundtrack_eval import evaluate_soundtrack

    class NoBundle:  # a checkpoint backend has no encoders, hence no library of its own
        embed_dim = 16

    with pytest.raises(InputError, match="needs a bundle"):
        evaluate_soundtrack(NoBundle(), [], "nothing")
    folders = tmp_path / "genres"
    (folders / "horror").mkdir(parents=True)
    rc = ev.main([str(tmp_path), "--image-folders", str(folders), "--soundtrack", "--out", str(tmp_path / "o")])
    assert rc == 2 and not (tmp_path / "o").exists()
    assert capsys.readouterr().err.strip() == "error: --soundtrack needs Manga109 volumes: give --manga and --genres"
