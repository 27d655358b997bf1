"""The chapter planner on synthetic embeddings: the segmentation is the exact optimum, story
changes (and only they) move the music, no track repeats while fitting ones remain, starts
fall on the best window, the music lasts the reading time, and the cue sheet and playlist
say so."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import soundtrack_fixtures as sf
from runtime.errors import InputError
from runtime.soundtrack import SoundtrackSettings, m3u8_text, plan_soundtrack
from runtime.soundtrack.assign import assign_distinct
from runtime.soundtrack.plays import STORY_CHANGE, TRACK_ENDED
from runtime.soundtrack.segments import segment


# -- the dynamic programme ------------------------------------------------------------------------
def _objective(z, embs, segs, cost, weight):
    """The planner's objective computed the slow, obvious way."""
    e = np.asarray(embs, np.float64)
    unit = np.mean(np.sum(np.diff(e, axis=0) ** 2, axis=1)) / 2 if len(e) > 1 else 1.0
    total = -cost * (len(segs) - 1)
    for a, b, col in segs:
        total += z[a:b, col].sum()
        total -= weight * np.sum((e[a:b] - e[a:b].mean(axis=0)) ** 2) / unit
    return total


def _all_segmentations(n, k):
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        if all(b - a >= k for a, b in zip(bounds, bounds[1:])):
            yield list(zip(bounds, bounds[1:]))


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_segmentation_is_the_exact_optimum(weight):
    rng = np.random.default_rng(3)
    for trial in range(25):
        n, m, k = int(rng.integers(1, 9)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        z = rng.normal(size=(n, m))
        embs = sf.unit(rng.normal(size=(n, 5)))
        cost = float(rng.uniform(0, 3))
        got = segment(z, cost, k, embs, weight)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a < b for a, b, _ in got) and all(b == a2 for (_, b, _), (a2, _, _) in zip(got, got[1:]))
        if n < k:
            assert len(got) == 1
            continue
        assert all(b - a >= k for a, b, _ in got)
        best = max(_objective(z, embs, [(a, b, int(np.argmax(z[a:b].sum(0)))) for a, b in segs], cost, weight)
                   for segs in _all_segmentations(n, k))
        assert _objective(z, embs, got, cost, weight) == pytest.approx(best, abs=1e-9)


def test_open_end_lets_the_last_segment_be_short():
    z = np.array([[2.0, 0.0]] * 6 + [[0.0, 3.0]] * 2)
    # Closed: the two new pages would have to take an old one along; not worth a switch.
    assert [(a, b) for a, b, _ in segment(z, 5.0, 3)] == [(0, 8)]
    # Open (a chapter still being read): the change sits where it happened.
    assert [(a, b, c) for a, b, c in segment(z, 5.0, 3, open_end=True)] == [(0, 6, 0), (6, 8, 1)]


def test_assignment_is_optimal_and_distinct():
    rng = np.random.default_rng(4)
    for _ in range(60):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        value, allowed = rng.normal(size=(n, m)), rng.random((n, m)) < 0.7
        got = assign_distinct(value, allowed)
        taken = [c for c in got if c >= 0]
        assert len(taken) == len(set(taken)) and all(allowed[i, c] for i, c in enumerate(got) if c >= 0)
        best = None
        for choice in itertools.product(*[[-1] + list(np.flatnonzero(allowed[i])) for i in range(n)]):
            used = [c for c in choice if c >= 0]
            if len(used) == len(set(used)):
                key = (len(used), sum(value[i, c] for i, c in enumerate(choice) if c >= 0))
                best = key if best is None or key > best else best
        assert len(taken) == best[0]  # as many segments as possible get a track of their own ...
        assert sum(value[i, c] for i, c in enumerate(got) if c >= 0) == pytest.approx(best[1])  # ... the best way


# -- what the plan does ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    stories = sf.centres(4)
    cat, owner = sf.catalogue(stories, [2, 2, 2, 1], hop=10.0)  # windows start at 0, 10, ..., 50 s
    return stories, cat, owner


def _story_of(plan, owner, page):
    return owner[plan.page_rows[page]]


def test_music_changes_where_the_story_changes(world):
    stories, cat, owner = world
    embs = sf.chapter(stories, [(0, 14), (1, 10), (2, 12)])
    plan = plan_soundtrack(embs, cat)
    assert [(s.first_page, s.last_page) for s in plan.segments] == [(0, 13), (14, 23), (24, 35)]
    assert [owner[s.plays[0].track.row] for s in plan.segments] == [0, 1, 2]
    assert [s.plays[0].reason for s in plan.segments] == ["start", STORY_CHANGE, STORY_CHANGE]
    assert all(_story_of(plan, owner, i) == s for i, s in enumerate([0] * 14 + [1] * 10 + [2] * 12))


@pytest.mark.parametrize("odd", [1, 2])
def test_one_or_two_odd_pages_do_not_move_the_music(world, odd):
    stories, cat, owner = world
    embs = sf.chapter(stories, [(0, 9), (3, odd), (0, 9)])
    plan = plan_soundtrack(embs, cat)
    assert len(plan.segments) == 1 and owner[plan.segments[0].plays[0].track.row] == 0
    # ... while three pages of another story are a segment.
    three = plan_soundtrack(sf.chapter(stories, [(0, 9), (3, 3), (0, 9)]), cat)
    assert [(s.first_page, s.last_page) for s in three.segments] == [(0, 8), (9, 11), (12, 20)]


def test_a_higher_switching_cost_never_adds_segments(world):
    stories, cat, _ = world
    embs = sf.chapter(stories, [(0, 5), (1, 4), (0, 6), (2, 5), (1, 4)], noise=0.6)
    counts = [len(plan_soundtrack(embs, cat, SoundtrackSettings(switch_cost=c, story_weight=0.0)).segments)
              for c in (0.0, 2.0, 8.0, 30.0, 1e6)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] == 1


def test_segments_of_the_same_story_get_different_tracks_while_fitting_ones_remain(world):
    stories, cat, owner = world
    plan = plan_soundtrack(sf.chapter(stories, [(0, 8), (1, 8), (0, 8)]), cat,
                           SoundtrackSettings(fit_tolerance=5.0))  # both story-0 tracks fit
    first, _, again = (s.plays[0].track.row for s in plan.segments)
    assert owner[first] == owner[again] == 0 and first != again
    # Story 3 has a single track: a second story-3 segment may only repeat it (or take
    # a track that does not fit, which is worse).
    plan = plan_soundtrack(sf.chapter(stories, [(3, 8), (1, 8), (3, 8)]), cat, SoundtrackSettings(fit_tolerance=0.0))
    rows = [s.plays[0].track.row for s in plan.segments]
    assert rows[0] == rows[2] and owner[rows[0]] == 3


def test_music_lasts_the_reading_time_without_repeats_while_fitting_tracks_remain():
    stories = sf.centres(2)
    cat, owner = sf.catalogue(stories, [4, 1], duration=20.0, windows=3, hop=5.0, fit_noise=0.05)
    s = SoundtrackSettings(seconds_per_page=10.0, fit_tolerance=1.0, crossfade_seconds=2.0)
    plan = plan_soundtrack(sf.chapter(stories, [(0, 12)]), cat, s)
    plays = plan.plays
    assert plays[0].start_seconds == 0.0 and plays[-1].end_seconds == pytest.approx(120.0)
    for a, b in zip(plays, plays[1:]):
        assert b.reason == TRACK_ENDED and b.track.row != a.track.row
        # back to back, overlapping by the crossfade, each track played to its end
        assert b.start_seconds == pytest.approx(a.end_seconds - b.crossfade_seconds)
        assert a.end_seconds == pytest.approx(a.start_seconds + a.track.duration - a.offset_seconds)
        assert 0 < b.crossfade_seconds <= 2.0
    rows = [p.track.row for p in plays]
    fitting = [r for r in range(len(owner)) if owner[r] == 0]
    # The four story-0 tracks all play before any of them plays again; the story-1 track never.
    assert sorted(rows[:4]) == fitting and set(rows) == set(fitting)
    assert rows[4] == rows[0]  # then the one heard longest ago


def test_tracks_start_on_their_best_window_leaving_enough_to_play(world):
    stories, cat, owner = world
    embs = sf.chapter(stories, [(1, 10)])
    plan = plan_soundtrack(embs, cat, SoundtrackSettings(min_play_seconds=10.0))
    first = plan.plays[0]
    wins, starts = cat.windows(first.track.row)
    query = sf.unit(embs.mean(axis=0))
    allowed = starts <= first.track.duration - 10.0
    assert first.offset_seconds == starts[np.argmax(np.where(allowed, wins @ query, -np.inf))]
    assert first.offset_seconds == starts[-1]  # the windows move towards the story: the last is best
    # A longer minimum play moves the start earlier (half the track at most must be left).
    later = plan_soundtrack(embs, cat, SoundtrackSettings(min_play_seconds=45.0)).plays[0]
    assert later.offset_seconds <= first.track.duration - 30.0 < first.offset_seconds


def test_cue_sheet_and_playlist(world, tmp_path):
    stories, cat, _ = world
    plan = plan_soundtrack(sf.chapter(stories, [(0, 6), (2, 6)]), cat, source="ch1.cbz",
                           pages=tuple(f"{i:03d}.jpg" for i in range(12)))
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["type"] == "soundtrack" and d["pages"] == 12 and d["page_names"][0] == "000.jpg"
    assert [(s["first_page"], s["last_page"]) for s in d["segments"]] == [(1, 6), (7, 12)]
    second = d["segments"][1]["plays"][0]
    assert second["start_seconds"] == 48.0 and second["reason"] == STORY_CHANGE
    assert second["crossfade_seconds"] == 2.0 and d["segments"][0]["plays"][-1]["end_seconds"] == 50.0
    text = m3u8_text(plan, "/music")
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and lines[1] == "#PLAYLIST:ch1.cbz"
    entries = [i for i, line in enumerate(lines) if line.startswith("#EXTINF:")]
    assert len(entries) == len(plan.plays)
    for i, p in zip(entries, plan.plays):
        assert lines[i + 1] == f"#EXTVLCOPT:start-time={p.offset_seconds:.3f}"
        assert lines[i + 3] == p.track.path[len("/music/"):]  # relative to the playlist's folder


def test_empty_chapter_and_bad_settings(world):
    _, cat, _ = world
    plan = plan_soundtrack(np.zeros((0, sf.D), np.float32), cat)
    assert plan.segments == () and plan.to_dict()["segments"] == []
    for bad in ({"seconds_per_page": 0}, {"switch_cost": -1}, {"min_pages": 0}, {"story_weight": float("nan")}):
        with pytest.raises(InputError, match=next(iter(bad))):
            SoundtrackSettings(**bad)
    with pytest.raises(InputError, match="unknown soundtrack setting"):
        SoundtrackSettings.from_dict({"switch_cots": 3})
