"""The soundtrack's one adapter to the music library (runtime/soundtrack/_catalogue.py) and the
fit it feeds: pages are scored as the library ranks them (hub-corrected where the library
is), across segments; a new generation is another catalogue; the fit statistics do not
depend on how the catalogue is streamed; a track that cannot be scored is never played."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import runtime_fixtures as rf
import soundtrack_fixtures as sf
from runtime_fixtures import enc, world  # noqa: F401  (fixtures)

from runtime.errors import InputError, LibraryError
from runtime.library import build_library, open_library
from runtime.soundtrack import Catalogue, OnlinePlanner, SoundtrackSettings, plan_soundtrack
from runtime.soundtrack import fit as fit_module


def _pages(d: int, n: int = 6, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _pooled(cat: Catalogue) -> np.ndarray:
    """The pooled rows of an in-memory catalogue (its scores are plain cosines)."""
    return cat.scores(np.eye(cat.dim, dtype=np.float32)).T.copy()


@pytest.fixture(scope="module")
def centred_library(world, tmp_path_factory):  # noqa: F811
    """300 random tracks in three segments, with the hub correction's centre."""
    out = tmp_path_factory.mktemp("cat") / "lib"
    return rf.synthetic_library(out, world.bundle, 300, windows_per_track=3, segment_tracks=100, seed=4, centre=True)


def test_pages_are_scored_as_the_library_ranks_them(centred_library):
    with open_library(centred_library) as lib:
        assert lib.centre is not None and len(lib.segments) == 3
        cat = Catalogue.from_library(lib)
        q = _pages(cat.dim)
        np.testing.assert_allclose(cat.scores(q), lib.scores(q), atol=1e-6)
        # the hub-corrected score, not the plain cosine (they differ by far more than rounding)
        assert np.abs(cat.scores(q) - q @ lib.pooled_matrix().T).max() > 1e-2
        # a page's best track in the plan is the query's first hit
        stats = fit_module.page_stats(q, cat, 5)
        np.testing.assert_array_equal(stats.top, lib.index.search(q, 5).ids)
        rows = np.array([299, 0, 150, 100, 99, 150])  # across segment borders, a repeat
        np.testing.assert_allclose(cat.scores(q, rows), lib.scores(q)[:, rows], atol=1e-6)
        # windows and names come from the library as it stores them
        emb, starts = cat.windows(150)
        lib_emb, lib_starts = lib.windows_of(150)
        np.testing.assert_array_equal(emb, lib_emb)
        np.testing.assert_array_equal(starts, lib_starts)
        assert cat.track(150).path == str(lib.track(150).path) and cat.track(150).row == 150
        with pytest.raises(LibraryError, match="no track at row 300"):
            cat.scores(q, [300])


def test_a_library_without_hub_correction_is_planned_by_plain_cosine(world, tmp_path):  # noqa: F811
    path = rf.synthetic_library(tmp_path / "lib", world.bundle, 40, windows_per_track=2, seed=5, centre=False)
    with open_library(path) as lib:
        assert lib.centre is None
        q = _pages(lib.meta.embed_dim)
        np.testing.assert_allclose(Catalogue.from_library(lib).scores(q), q @ lib.pooled_matrix().T, atol=1e-6)


def test_a_new_generation_is_another_catalogue(world, enc, tmp_path):  # noqa: F811
    music = shutil.copytree(world.music, tmp_path / "music")
    lib_dir = tmp_path / "library"
    build_library(music, lib_dir, enc, progress=False)
    with open_library(lib_dir) as lib:
        before = Catalogue.from_library(lib)
        planner = OnlinePlanner(before, SoundtrackSettings(seconds_per_page=2.0))
        planner.turn(_pages(before.dim, 1)[0])
        state = planner.to_dict()
    rf.write_extra_track(music / "extra.wav")
    build_library(music, lib_dir, enc, progress=False)
    with open_library(lib_dir) as lib:
        after = Catalogue.from_library(lib)
        assert len(after) == len(before) + 1 and after.identity != before.identity
        with pytest.raises(InputError, match="another music library"):
            OnlinePlanner.from_dict(after, state)
    with open_library(lib_dir) as lib:  # the same generation, opened again: the same catalogue
        assert Catalogue.from_library(lib).identity == after.identity


def test_pages_index_is_not_a_catalogue(world):  # noqa: F811
    with open_library(world.pages_index) as lib, pytest.raises(LibraryError, match="not a music library"):
        Catalogue.from_library(lib)


def test_page_stats_do_not_depend_on_how_the_catalogue_is_streamed(monkeypatch):
    """Small integers make every score exact in float32 whatever the summation order, so
    equal tracks tie exactly: the ties must go to the lower row in every streaming."""
    rng = np.random.default_rng(6)
    pooled = rng.integers(-2, 3, size=(15, 8)).astype(np.float32)
    pooled = np.concatenate([pooled, pooled[[3, 0, 7, 3]]])  # rows 15-18 repeat 3, 0, 7, 3
    m = len(pooled)
    cat = Catalogue.from_arrays(pooled, [np.zeros((1, 8))] * m, [np.zeros(1)] * m, [30.0] * m)
    embs = rng.integers(-2, 3, size=(9, 8)).astype(np.float32)
    whole = fit_module.page_stats(embs, cat, 8)
    monkeypatch.setattr(fit_module, "_BLOCK", 2 * len(embs) + 1)  # blocks of 2 tracks
    parts = fit_module.page_stats(embs, cat, 8)
    for a, b in ((parts.top, whole.top), (parts.mean, whole.mean), (parts.std, whole.std), (parts.best, whole.best)):
        np.testing.assert_array_equal(a, b)
    s = (embs.astype(np.float64) @ pooled.T.astype(np.float64))
    np.testing.assert_allclose(whole.mean, s.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(whole.std, s.std(axis=1), atol=1e-12)
    for i, top in enumerate(whole.top):
        assert list(top) == sorted(range(m), key=lambda r: (-s[i, r], r))[:8]
    assert any(s[i, 3] == s[i, 18] and 3 in top for i, top in enumerate(whole.top))  # a tie was decided


def test_a_track_that_cannot_be_scored_is_never_played():
    st = sf.centres(2)
    cat, owner = sf.catalogue(st, [3, 3])
    pooled = _pooled(cat)
    pooled[1] = np.nan  # story 0's track, damaged
    n = len(owner)
    broken = Catalogue.from_arrays(pooled, [cat.windows(r)[0] for r in range(n)], [cat.windows(r)[1] for r in range(n)],
                                   [cat.track(r).duration for r in range(n)])
    assert np.isneginf(broken.scores(st[:1])[0, 1])
    embs = sf.chapter(st, [(0, 10), (1, 10)])
    plan = plan_soundtrack(embs, broken, SoundtrackSettings())
    assert len(plan.segments) == 2 and all(np.isfinite(s.fit) for s in plan.segments)
    assert 1 not in {p.track.row for p in plan.plays}
    assert [owner[s.plays[0].track.row] for s in plan.segments] == [0, 1]
    planner = OnlinePlanner(broken, SoundtrackSettings())
    assert 1 not in {c.play.track.row for c in (planner.turn(e) for e in embs)}
