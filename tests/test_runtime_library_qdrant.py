"""A library served from Qdrant (runtime/library/qdrant_store.py, qdrant_reader.py, runtime/publish.py),
in Qdrant's embedded local mode (no server): what a collection holds, the same results as the
local library (top-10, scores, best windows, tags; recall@10 measured), idempotent and
incremental publishing, another bundle refused, the CLIs. Skipped without ``qdrant-client``."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

pytest.importorskip("qdrant_client", reason="Qdrant needs pip install 'manga-music[qdrant]'")

import runtime_fixtures as rf  # noqa: E402
from runtime_fixtures import enc, music, run_cli, world  # noqa: E402,F401  (fixtures)

from runtime.errors import InputError, LibraryError  # noqa: E402
from runtime.library import Library, build_library, open_library  # noqa: E402
from runtime.library.hubs import centred_rows  # noqa: E402
from runtime.library.qdrant_reader import QdrantLibrary  # noqa: E402
from runtime.library.qdrant_publish import publish_library  # noqa: E402
from runtime.library.qdrant_store import (CENTRED, META_ID, POOLED, WINDOWS, Target, parse_target,  # noqa: E402
                                          point_id)
from runtime.retrieval import Retriever  # noqa: E402


def local_url(folder, name: str = "music") -> str:
    return f"qdrant+local://{folder}/{name}"


@pytest.fixture(scope="module")
def published(world, tmp_path_factory):  # noqa: F811
    """The tiny world's library, published once; its URL."""
    store = tmp_path_factory.mktemp("qdrant") / "store"
    report = publish_library(world.library, f"qdrant+local://{store}", "music")
    assert report.upserted == 5 and report.tracks == 5
    return local_url(store)


@contextlib.contextmanager
def raw_client(url: str):
    """The embedded store itself (closed after: one client per folder at a time)."""
    from qdrant_client import QdrantClient

    client = QdrantClient(path=parse_target(url).path)
    try:
        yield client
    finally:
        client.close()


def queries_of(world):  # noqa: F811
    """Every page and a few texts, embedded (fp32: no per-batch int8 drift between calls)."""
    from runtime.encoders import Encoders

    e = Encoders(world.bundle, device="cpu", precision="fp32", threads=1)
    return np.concatenate([e.embed_images(list(world.pages.values())),
                           e.embed_texts(["sad piano", "an explosion", "quiet rain", "Scary music"])])


# -- what a collection holds ---------------------------------------------------------------------
def test_a_collection_holds_each_track_with_its_vectors_payload_and_facts(world, published):  # noqa: F811
    with Library.open(world.library) as lib, raw_client(published) as client:
        name = parse_target(published).collection
        assert client.count(name).count == len(lib) + 1  # the facts point besides the tracks
        for t in lib.all_tracks():
            (p,) = client.retrieve(name, [point_id(t.relpath)], with_payload=True, with_vectors=True)
            windows, starts = lib.windows_of(t.row)
            np.testing.assert_array_equal(np.asarray(p.vector[POOLED], np.float32), lib.pooled(t.row))
            np.testing.assert_array_equal(np.asarray(p.vector[WINDOWS], np.float32), windows)  # float16 both
            np.testing.assert_allclose(p.vector[CENTRED], centred_rows(lib.pooled(t.row)[None], lib.centre)[0],
                                       atol=1e-7)
            assert p.payload["path"] == t.relpath and p.payload["starts"] == starts.tolist()
            assert (p.payload["duration"], p.payload["top_mood"], p.payload["sha256"]) == (t.duration, t.top_mood,
                                                                                            t.sha256)
            assert p.payload["moods"] == dict(t.moods) and p.payload["bundle"] == lib.meta.bundle_fingerprint
        (facts,) = client.retrieve(name, [META_ID], with_payload=True, with_vectors=True)
        assert facts.vector == {} and facts.payload["bundle_fingerprint"] == lib.meta.bundle_fingerprint
        assert facts.payload["count"] == len(lib) and np.allclose(facts.payload["centre"], lib.centre, atol=0)


# -- the same results as the local library --------------------------------------------------------
@pytest.mark.parametrize("correct", [True, False], ids=["hub-corrected", "plain-cosine"])
def test_qdrant_search_gives_the_local_librarys_results(world, published, correct):  # noqa: F811
    q = queries_of(world)
    with Retriever(bundle=world.bundle, library=world.library, device="cpu") as local, \
            Retriever(bundle=world.bundle, library=published, device="cpu") as remote:
        assert isinstance(remote.library, QdrantLibrary)
        for k in (3, 10):
            for a, b in zip(local.search_tracks(q, k, correct=correct), remote.search_tracks(q, k, correct=correct)):
                assert [h.path for h in a] == [h.path for h in b] and len(a) == min(k, 5)
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
                np.testing.assert_allclose([h.cosine for h in a], [h.cosine for h in b], atol=1e-5)
                assert [(h.best_start_seconds, h.top_mood, h.moods, h.duration) for h in a] == \
                       [(h.best_start_seconds, h.top_mood, h.moods, h.duration) for h in b]


def test_page_text_and_track_queries_match_through_the_api(world, published):  # noqa: F811
    with Retriever(bundle=world.bundle, library=world.library, device="cpu", precision="fp32") as local, \
            Retriever(bundle=world.bundle, library=published, device="cpu", precision="fp32") as remote:
        a, b = local.query(world.pages["spread"], top_k=4), remote.query(world.pages["spread"], top_k=4)
        assert (a.genres, a.moods) == (b.genres, b.moods) and [t.path for t in a.tracks] == [t.path for t in b.tracks]
        assert [t.path for t in local.query_text("calm").tracks] == [t.path for t in remote.query_text("calm").tracks]
        # A track of the library: its stored moods, found by path in the collection.
        track = world.tracks["chirp"]
        assert remote.moods_for_track(track) == local.moods_for_track(track)
        assert remote.encoders.loaded == ("image", "text")  # found, not embedded again


def test_recall_at_10_against_exact_search_is_measured(world, tmp_path):  # noqa: F811
    lib_dir = rf.synthetic_library(tmp_path / "lib", world.bundle, 3000, windows_per_track=2, centre=True)
    url = local_url(tmp_path / "store", "big")
    report = publish_library(lib_dir, url, batch_points=500, recall_queries=100)
    assert report.tracks == 3000 and report.upserted == 3000 and report.requests == 6 + 1
    assert report.recall_at_10 == 1.0 and report.recall_queries == 100  # the embedded mode searches exactly
    rng = np.random.default_rng(3)
    q = rng.standard_normal((20, rf.EMBED_DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    with Library.open(lib_dir) as lib, open_library(url) as store:
        exact = lib.index.search(q, 10)
        got = store.index.search(q, 10)
        for e_ids, g_ids in zip(exact.ids, got.ids):
            assert [lib.track(int(r)).relpath for r in e_ids] == [store.track(int(r)).relpath for r in g_ids]
        np.testing.assert_allclose(exact.scores, got.scores, atol=1e-5)


# -- publishing ---------------------------------------------------------------------------------------
def test_publishing_is_idempotent_and_writes_only_what_changed(music, enc, tmp_path, world):  # noqa: F811
    lib_dir = tmp_path / "lib"
    build_library(music, lib_dir, enc, progress=False)
    url = local_url(tmp_path / "store")
    calls = []
    first = publish_library(lib_dir, url, batch_points=2, recall_queries=0, progress=lambda *a: calls.append(a))
    assert (first.upserted, first.requests) == (5, 3 + 1)  # 5 tracks, 2 per request, then the facts
    assert calls == [(2, 6), (4, 6), (5, 6), (6, 6)]  # tracks written (+ the facts), after each request
    again = publish_library(lib_dir, url, recall_queries=0)
    assert (again.upserted, again.recentred, again.deleted, again.unchanged) == (0, 0, 0, 5)
    # One track gone, one added: those two written, the centre moved so the rest re-centred.
    (music / "a" / "noise.flac").unlink()
    rf.write_extra_track(music / "extra.wav")
    build_library(music, lib_dir, enc, progress=False)
    third = publish_library(lib_dir, url, recall_queries=50)
    assert (third.upserted, third.deleted, third.recentred, third.tracks) == (1, 1, 4, 5)
    assert third.recall_at_10 == 1.0
    q = queries_of(world)
    with Retriever(bundle=world.bundle, library=lib_dir) as local, Retriever(bundle=world.bundle, library=url) as rem:
        for a, b in zip(local.search_tracks(q, 10), rem.search_tracks(q, 10)):
            assert [h.path for h in a] == [h.path for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    with raw_client(url) as client:
        assert client.count("music").count == 5 + 1


def test_a_collection_of_another_bundle_is_refused(world, music, tmp_path, published):  # noqa: F811
    from runtime.encoders import Encoders

    other = rf.write_tiny_bundle(tmp_path / "other", seed=5)
    with Retriever(bundle=other, library=published) as r, pytest.raises(LibraryError, match="another bundle"):
        _ = r.library
    other_lib = tmp_path / "other-lib"
    build_library(music, other_lib, Encoders(other, device="cpu", threads=1), progress=False)
    url = local_url(tmp_path / "store")
    publish_library(world.library, url, recall_queries=0)
    with pytest.raises(LibraryError, match="another bundle.*--recreate"):
        publish_library(other_lib, url, recall_queries=0)
    report = publish_library(other_lib, url, recreate=True, recall_queries=0)
    assert report.upserted == 5 and report.deleted == 0
    with open_library(url, bundle=other) as lib:
        assert lib.meta.bundle_fingerprint != Library.open(world.library).meta.bundle_fingerprint


def test_a_damaged_point_is_left_out_and_the_rest_answer(world, tmp_path):  # noqa: F811
    from qdrant_client import models

    url = local_url(tmp_path / "store")
    publish_library(world.library, url, recall_queries=0)
    with raw_client(url) as client:
        (p,) = client.retrieve("music", [point_id("short.wav")], with_payload=True, with_vectors=True)
        client.upsert("music", [models.PointStruct(id=p.id, vector=p.vector, payload={**p.payload, "path": "../x"})])
    with Retriever(bundle=world.bundle, library=url) as r:
        hits = r.search_tracks(queries_of(world), 10)
    assert all(len(h) == 4 and all("short.wav" not in t.path for t in h) for h in hits)


def test_what_a_collection_cannot_do_is_refused_clearly(world, published):  # noqa: F811
    with open_library(published) as lib:
        with pytest.raises(LibraryError, match="chapter soundtrack"):
            lib.scores(np.zeros((1, rf.EMBED_DIM), np.float32))
        from runtime.soundtrack._catalogue import Catalogue

        with pytest.raises(LibraryError, match="chapter soundtrack"):
            Catalogue.from_library(lib)
        with pytest.raises(LibraryError, match="no track at row 99"):
            lib.track(99)
    with pytest.raises(LibraryError, match="no Qdrant storage folder"):
        open_library(local_url(world.root / "nowhere"))
    with pytest.raises(LibraryError, match="no such collection"):
        open_library(published.rsplit("/", 1)[0] + "/absent")


def test_urls():
    assert parse_target("qdrant://db.example:7000/music") == Target("music", url="http://db.example:7000")
    assert parse_target("qdrants://db.example/music?exact=1") == Target("music", url="https://db.example:6333",
                                                                        exact=True)
    assert parse_target("http://db:6333", "music") == Target("music", url="http://db:6333")
    assert parse_target("qdrant://db/music?hnsw_ef=256").hnsw_ef == 256
    assert parse_target("qdrant+local:///srv/q/music") == Target("music", path="/srv/q")
    assert parse_target("qdrant+local://rel/q/music") == Target("music", path="rel/q")
    assert parse_target("qdrant+local://rel/q", "music") == Target("music", path="rel/q")
    for bad in ("qdrant://db", "qdrant:///music", "qdrant+local://music", "mysql://db/music", "qdrant://db:x/m",
                "qdrant://db/music?hnsw_ef=many"):
        with pytest.raises(InputError):
            parse_target(bad)
    with pytest.raises(InputError, match="--collection says"):
        parse_target("qdrant://db/one", "two")


# -- the CLIs --------------------------------------------------------------------------------------------
def test_cli_publish_then_query_prints_what_the_local_library_prints(world, tmp_path):  # noqa: F811
    store = tmp_path / "store"
    p = run_cli("runtime.publish", world.library, "--qdrant", f"qdrant+local://{store}", "--collection", "music")
    assert p.returncode == 0, p.stderr
    assert "5 tracks (5 upserted" in p.stdout and "recall@10 against exact search of the library: 1.000" in p.stdout
    pages = [world.pages["tall"], world.pages["gray"]]
    for extra in ([], ["--json"], ["--text", "sad piano"]):
        a = run_cli("runtime.query", *pages, "--bundle", world.bundle, "--library", world.library, *extra)
        b = run_cli("runtime.query", *pages, "--bundle", world.bundle, "--library", local_url(store), *extra)
        assert a.returncode == b.returncode == 0, b.stderr
        if "--json" in extra:
            ja, jb = json.loads(a.stdout), json.loads(b.stdout)
            for ra, rb in zip(ja, jb):
                assert [t["path"] for t in ra["tracks"]] == [t["path"] for t in rb["tracks"]]
                np.testing.assert_allclose([t["score"] for t in ra["tracks"]], [t["score"] for t in rb["tracks"]],
                                           atol=1e-5)
                assert [t["best_start"] for t in ra["tracks"]] == [t["best_start"] for t in rb["tracks"]]
        else:
            assert a.stdout == b.stdout


def test_cli_bad_inputs_are_one_line(world, tmp_path):  # noqa: F811
    store = f"qdrant+local://{tmp_path / 'store'}"
    cases = [
        (("runtime.publish", tmp_path / "nolib", "--qdrant", store, "--collection", "m"), "no library here"),
        (("runtime.publish", world.pages_index, "--qdrant", store, "--collection", "m"), "only music libraries"),
        (("runtime.publish", world.library, "--qdrant", "mysql://db", "--collection", "m"), "not a Qdrant URL"),
        (("runtime.publish", world.library, "--qdrant", store), "--collection"),
        (("runtime.query", world.pages["tall"], "--bundle", world.bundle, "--library", f"{store}/absent"),
         "no Qdrant storage folder"),
        (("runtime.query", world.pages["tall"], "--bundle", world.bundle, "--library", "qdrant://127.0.0.1:9/m"),
         "http://127.0.0.1:9/m"),
    ]
    for args, message in cases:
        p = run_cli(*map(str, args))
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "store").exists()  # nothing was created by failed runs
