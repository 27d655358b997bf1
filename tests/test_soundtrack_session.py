"""ReadingSession: the planner's rules online, page turn by page turn, and a saved session
that resumes exactly as if the app had never been killed."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

import soundtrack_fixtures as sf
from runtime_fixtures import world  # noqa: F401  (session fixture)

from runtime.errors import InputError
from runtime.retrieval import Retriever
from runtime.soundtrack import OnlinePlanner, ReadingSession, SoundtrackSettings
from runtime.soundtrack.online import HISTORY_PAGES
from runtime.soundtrack.plays import START, STORY_CHANGE


@pytest.fixture(scope="module")
def stories():
    st = sf.centres(4)
    cat, owner = sf.catalogue(st, [2, 2, 2, 1], duration=30.0, windows=4, hop=5.0)
    return st, cat, owner


def _run(cat, embs, settings=None):
    p = OnlinePlanner(cat, settings)
    return [p.turn(e) for e in embs]


def test_first_turn_starts_music_then_a_persistent_change_switches(stories):
    st, cat, owner = stories
    cues = _run(cat, sf.chapter(st, [(0, 10), (1, 10)]))
    assert cues[0].action == "switch" and cues[0].reason == START and cues[0].at_seconds == 0.0
    assert owner[cues[0].play.track.row] == 0
    switches = [c for c in cues if c.reason == STORY_CHANGE]
    k = SoundtrackSettings().min_pages
    # Known only once it has lasted min_pages pages: switched then, and dated where it began.
    assert [c.page for c in switches] == [10 + k - 1] and switches[0].segment_first_page == 10
    sw = switches[0]
    assert owner[sw.play.track.row] == 1 and sw.play.start_seconds == sw.at_seconds == (10 + k - 1) * 8.0
    assert 0 < sw.play.crossfade_seconds <= 2.0
    assert all(c.action == "keep" for c in cues if c.reason != STORY_CHANGE and c.page > 0)


@pytest.mark.parametrize("odd", [1, 2])
def test_odd_pages_do_not_switch(stories, odd):
    st, cat, _ = stories
    cues = _run(cat, sf.chapter(st, [(0, 9), (3, odd), (0, 9)]))
    assert [c.page for c in cues if c.action == "switch"] == [0]


def test_queued_tracks_keep_the_music_going_until_the_next_turn(stories):
    st, cat, _ = stories
    s = SoundtrackSettings(seconds_per_page=12.0, crossfade_seconds=2.0)
    cues = _run(cat, sf.chapter(st, [(2, 12)]), s)
    assert any(c.queued for c in cues)
    for c in cues:
        plays = [c.play, *c.queued]
        assert plays[-1].runs_out_seconds >= c.at_seconds + s.seconds_per_page
        for a, b in zip(plays, plays[1:]):
            assert b.start_seconds == pytest.approx(a.runs_out_seconds - b.crossfade_seconds)
            assert b.track.row != a.track.row
    # A queued play has begun by the next turn: it is then what plays.
    for c, nxt in zip(cues, cues[1:]):
        started = [q for q in c.queued if q.start_seconds <= nxt.at_seconds]
        if started:
            assert nxt.play == started[-1]


def test_turn_times_and_embeddings_are_checked(stories):
    st, cat, _ = stories
    p = OnlinePlanner(cat)
    p.turn(st[0], at_seconds=5.0)
    with pytest.raises(InputError, match="before the previous one"):
        p.turn(st[0], at_seconds=4.0)
    with pytest.raises(InputError, match="finite numbers"):
        p.turn(np.full(sf.D, np.nan))
    with pytest.raises(InputError, match=f"{sf.D} finite numbers"):
        p.turn(np.ones(3))
    assert p.pages_seen == 1 and p.turn(st[0]).at_seconds == 5.0 + 8.0


def test_restored_state_gives_the_same_cues_at_every_cut(stories):
    st, cat, _ = stories
    embs = sf.chapter(st, [(0, 7), (1, 6), (0, 5), (2, 6)])
    s = SoundtrackSettings(seconds_per_page=11.0)
    # Real readers are irregular: turn times with no round numbers, so any float that the
    # saved state rounded would show.
    times = np.cumsum(np.random.default_rng(5).uniform(4.0, 15.0, len(embs)))

    def run(planner, part):
        return [planner.turn(e, at_seconds=t).to_dict() for e, t in part]

    turns = list(zip(embs, times))
    full = OnlinePlanner(cat, s)
    straight = run(full, turns)
    for cut in range(0, len(embs), 3):
        p = OnlinePlanner(cat, s)
        first = run(p, turns[:cut])
        q = OnlinePlanner.from_dict(cat, json.loads(json.dumps(p.to_dict())))
        assert q.to_dict() == p.to_dict()
        assert first + run(q, turns[cut:]) == straight, cut
        assert q.to_dict() == full.to_dict()  # exactly the same state at the end, floats and all


def test_history_is_bounded(stories):
    st, cat, _ = stories
    p = OnlinePlanner(cat)
    for e in sf.chapter(st, [(0, HISTORY_PAGES + 10)]):
        p.turn(e)
    assert len(p.to_dict()["history"]) == HISTORY_PAGES


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(catalogue="0" * 16), "another music library"),
    (lambda d: d["current"].update(row=10_000), "not in this library"),
    (lambda d: d["current"].update(path="/elsewhere.ogg"), "not '/elsewhere.ogg'"),
    (lambda d: d["history"][0].update(embedding=base64.b64encode(b"1234").decode()), "finite float32"),
    (lambda d: d["history"][0].update(embedding="not base64!"), "malformed"),
    (lambda d: d.update(pages_seen=-1), "pages_seen"),
    (lambda d: d["settings"].update(min_pages=0), "min_pages"),
    (lambda d: d.pop("queue"), "malformed"),
    (lambda d: d.update(current=None), "nothing plays"),
])
def test_a_damaged_state_is_refused(stories, damage, message):
    st, cat, _ = stories
    p = OnlinePlanner(cat)
    for e in sf.chapter(st, [(0, 4)]):
        p.turn(e)
    state = json.loads(json.dumps(p.to_dict()))
    damage(state)
    with pytest.raises(InputError, match=message):
        OnlinePlanner.from_dict(cat, state)


# -- with a real bundle and library --------------------------------------------------------------
def test_reading_session_saved_and_loaded_mid_chapter_resumes_identically(world, tmp_path):  # noqa: F811
    pages = [world.pages[k] for k in ("tall",) * 6 + ("spread",) * 6 + ("gray",) * 5 + ("rgba",) * 6]
    kw = dict(bundle=world.bundle, library=world.library, device="cpu", threads=1)
    settings = SoundtrackSettings(seconds_per_page=3.0, switch_cost=1.0)
    with Retriever(**kw) as r:
        session = ReadingSession(r, settings)
        straight = [session.turn(p).to_dict() for p in pages]
    assert straight[0]["action"] == "switch" and any(c["queued"] for c in straight)
    state = tmp_path / "reading.json"
    with Retriever(**kw) as r:
        session = ReadingSession(r, settings)
        first = [session.turn(p).to_dict() for p in pages[:9]]
        session.save(state)
    with Retriever(**kw) as r:  # the app was killed and reopened
        session = ReadingSession.load(r, state)
        assert session.pages_seen == 9 and session.settings == settings
        rest = [session.turn(p).to_dict() for p in pages[9:]]
    assert first + rest == straight
    with Retriever(**kw) as r:
        session = ReadingSession.load(r, state)
        with pytest.raises(InputError, match="corrupt.png"):
            session.turn(world.bad["corrupt_image"])
        assert session.pages_seen == 9  # a page that cannot be read changes nothing
        state.write_text("{not json")
        with pytest.raises(InputError, match="reading.json: not a readable reading session"):
            ReadingSession.load(r, state)
        state.write_text(json.dumps({"type": "something else"}))
        with pytest.raises(InputError, match="not a saved manga-music reading session"):
            ReadingSession.load(r, state)
