"""The Ray engine (runtime/library/ray_engine.py) on a local Ray cluster of 2 CPUs: the same
library as the local engine, workers killed mid-run, a file that kills every worker, a
rerun that resumes, a cluster that gives up, and the CLI. Skipped without ``ray[data]``."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="the Ray engine needs pip install 'manga-music[ray]'")

import runtime_fixtures as rf  # noqa: E402
from runtime_fixtures import enc, run_cli, world  # noqa: E402,F401  (session fixtures)

from runtime.library import Library, build_library  # noqa: E402
from runtime.library import ray_engine  # noqa: E402
from runtime.library.ray_engine import ClusterError, build_library_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import cloudpickle

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    # The hooks below run in the workers, where this test module is not importable.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def music_with_bad_files(world, tmp_path_factory):  # noqa: F811
    """The tiny world's music plus a silent file and a text file named .mp3."""
    folder = shutil.copytree(world.music, tmp_path_factory.mktemp("ray") / "music")
    shutil.copy(world.bad["silent_audio"], folder / "silent.wav")
    shutil.copy(world.bad["text_as_mp3"], folder / "b" / "lyrics.mp3")
    return folder


@pytest.fixture(scope="module")
def local_library(music_with_bad_files, enc, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-local") / "lib"
    build_library(music_with_bad_files, out, enc, progress=False)
    return out


class BatchLog:
    """Appends each batch's paths (one line per batch) to a file: what the workers ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __call__(self, paths: list[str]) -> None:
        with open(self.path, "a") as f:  # one short write per batch: lines do not interleave
            f.write(json.dumps(sorted(Path(p).name for p in paths)) + "\n")

    def batches(self) -> list[tuple[str, ...]]:
        if not os.path.exists(self.path):
            return []
        return [tuple(json.loads(line)) for line in Path(self.path).read_text().splitlines()]


class KillWorker(BatchLog):
    """Logs, then SIGKILLs its own worker process on a batch holding ``victim``: once (a
    marker file remembers), or every time."""

    def __init__(self, path: Path, victim: str, always: bool = False):
        super().__init__(path)
        self.victim, self.always, self.marker = victim, always, str(path) + ".killed"

    def __call__(self, paths: list[str]) -> None:
        super().__call__(paths)
        if any(Path(p).name == self.victim for p in paths) and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


class FailOn(BatchLog):
    """Raises in the worker (outside the per-file handling) for a batch holding ``victim``."""

    def __init__(self, path: Path, victim: str):
        super().__init__(path)
        self.victim = victim

    def __call__(self, paths: list[str]) -> None:
        super().__call__(paths)
        if any(Path(p).name == self.victim for p in paths):
            raise RuntimeError("this worker cannot go on")


def assert_same_library(a_dir: Path, b_dir: Path) -> None:
    """Same tracks in the same rows, same embeddings, windows, starts, tags and lists."""
    with Library.open(a_dir) as a, Library.open(b_dir) as b:
        assert [t.relpath for t in a.all_tracks()] == [t.relpath for t in b.all_tracks()]
        np.testing.assert_allclose(a.pooled_matrix(), b.pooled_matrix(), atol=1e-6)
        for ta, tb in zip(a.all_tracks(), b.all_tracks()):
            wa, sa = a.windows_of(ta.row)
            wb, sb = b.windows_of(tb.row)
            np.testing.assert_allclose(wa, wb, atol=1e-3)  # float16 storage
            np.testing.assert_array_equal(sa, sb)
            assert (ta.top_mood, ta.duration) == (tb.top_mood, tb.duration)
            # Tags are computed per written block (one matrix product): the 6th decimal may
            # differ with how commits grouped the tracks, whichever engine embedded them.
            assert [m for m, _ in ta.moods] == [m for m, _ in tb.moods]
            np.testing.assert_allclose([p for _, p in ta.moods], [p for _, p in tb.moods], atol=2e-6)
        assert [Path(f.path).name for f in a.failures()] == [Path(f.path).name for f in b.failures()]
        assert [f.reason for f in a.failures()] == [f.reason for f in b.failures()]
        assert [(Path(s.path).name, s.reason) for s in a.silent()] == [(Path(s.path).name, s.reason) for s in b.silent()]
        assert b.verify() == []


def test_ray_build_equals_the_local_build(cluster, music_with_bad_files, local_library, enc, tmp_path):
    out = tmp_path / "lib"
    log = BatchLog(tmp_path / "batches.log")
    report = build_library_ray(music_with_bad_files, out, enc, progress=False, workers=2, files_per_batch=2,
                               on_batch=log)
    assert report.tracks == 5 and report.new == 5 and len(report.failures) == 1 and len(report.silent) == 1
    # One generation, committed at the end (progress in between went to the journal only).
    assert report.generation == 1 and sorted(p.name for p in out.glob("gen-*.json")) == ["gen-000001.json"]
    assert not (out / "build.json").exists()
    assert_same_library(local_library, out)
    # Every file went through a worker exactly once, 2 files per batch.
    ran = [name for batch in log.batches() for name in batch]
    assert sorted(ran) == sorted(p.name for p in music_with_bad_files.rglob("*.*")
                                 if p.suffix in (".wav", ".flac", ".ogg", ".mp3") and not p.name.startswith("."))
    assert max(len(b) for b in log.batches()) == 2


def test_a_pages_index_built_on_ray_equals_the_local_one(cluster, world, enc, tmp_path):  # noqa: F811
    report = build_library_ray(world.pages_dir, tmp_path / "pages", enc, kind="pages", progress=False, workers=2)
    assert report.kind == "pages" and report.tracks == len(world.pages)
    with Library.open(world.pages_index) as a, Library.open(tmp_path / "pages") as b:
        assert [t.relpath for t in a.all_tracks()] == [t.relpath for t in b.all_tracks()]
        np.testing.assert_allclose(a.pooled_matrix(), b.pooled_matrix(), atol=1e-6)
        assert [t.genres for t in a.all_tracks()] == [t.genres for t in b.all_tracks()]


def test_a_worker_killed_mid_run_loses_only_its_batch(cluster, music_with_bad_files, local_library, enc, tmp_path):
    hook = KillWorker(tmp_path / "batches.log", victim="chirp.ogg")
    report = build_library_ray(music_with_bad_files, tmp_path / "lib", enc, progress=False, workers=2,
                               files_per_batch=2, on_batch=hook)
    assert os.path.exists(hook.marker), "the worker was never killed"
    assert report.tracks == 5 and len(report.failures) == 1  # the text file only
    batches = hook.batches()
    victim = next(b for b in batches if "chirp.ogg" in b)
    assert batches.count(victim) == 2  # killed once, run again on a restarted worker
    assert all(batches.count(b) == 1 for b in batches if b != victim)  # nothing else was redone
    assert_same_library(local_library, tmp_path / "lib")


def test_an_interrupted_build_resumes_without_embedding_again(cluster, world, enc, tmp_path):  # noqa: F811
    out = tmp_path / "lib"

    def stop_after_two(done, total, note):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_library_ray(world.music, out, enc, progress=stop_after_two, workers=2, files_per_batch=1,
                          commit_every=1)
    assert not (out / "CURRENT").exists() and (out / "build.json").exists()  # nothing published, progress kept
    log = BatchLog(tmp_path / "second.log")
    report = build_library_ray(world.music, out, enc, progress=False, workers=2, files_per_batch=1, on_batch=log)
    assert report.resumed == 2 and report.new == 3 and report.tracks == 5
    assert len(log.batches()) == 3  # the two committed files were not embedded again
    assert_same_library(world.library, out)


def test_a_cluster_that_gives_up_is_one_error_and_keeps_progress(cluster, world, enc, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ray_engine, "MAX_LOST_BATCHES", 0)
    out = tmp_path / "lib"
    with pytest.raises(ClusterError) as err:
        build_library_ray(world.music, out, enc, progress=False, workers=1, files_per_batch=1, commit_every=1,
                          on_batch=FailOn(tmp_path / "log", victim="square.mp3"))
    assert "\n" not in str(err.value) and str(err.value).endswith("run the same command again to resume")
    assert str(err.value).startswith("the Ray cluster stopped serving the build (") and "\x1b" not in str(err.value)
    assert not (out / "CURRENT").exists()
    monkeypatch.undo()
    report = build_library_ray(world.music, out, enc, progress=False, workers=2)
    assert report.tracks == 5 and not report.failures
    assert_same_library(world.library, out)


def test_cli_engine_ray_on_a_running_cluster(cluster, world, tmp_path):  # noqa: F811
    address = cluster.get_runtime_context().gcs_address
    out = tmp_path / "lib"
    args = [world.music, "--out", out, "--bundle", world.bundle, "--threads", "1", "--engine", "ray",
            "--address", address, "--workers", "2"]
    p = run_cli("runtime.index", *args, timeout=180)
    assert p.returncode == 0, p.stderr
    assert "5 tracks" in p.stdout and p.stderr == ""
    assert_same_library(world.library, out)
    again = run_cli("runtime.index", *args, timeout=180)
    assert again.returncode == 0 and "nothing changed" in again.stdout


def test_an_unreachable_cluster_is_one_line_before_anything_is_written(world, enc, tmp_path, monkeypatch):  # noqa: F811
    import ray

    def refuse(*args, **kwargs):  # what ray.init does, after its retries, for a cluster that is not there
        raise ConnectionError("ray client connection timeout")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ClusterError, match=r"cannot start or reach the Ray cluster at ray://nowhere:10001: "
                                           r"ConnectionError: ray client connection timeout$"):
        build_library_ray(world.music, tmp_path / "lib", enc, address="ray://nowhere:10001")
    assert not (tmp_path / "lib" / "CURRENT").exists() and not (tmp_path / "lib" / "build.json").exists()


def test_bad_engine_settings_are_input_errors(world, enc, tmp_path):  # noqa: F811
    from runtime.errors import InputError

    with pytest.raises(InputError):
        build_library_ray(world.music, tmp_path / "lib", enc, workers=0)
    with pytest.raises(InputError):
        build_library_ray(world.music, tmp_path / "lib", enc, files_per_batch=0)
    assert not (tmp_path / "lib").exists()


def test_the_engine_module_imports_ray_lazily():
    assert "import ray" not in (rf.ROOT / "runtime" / "library" / "ray_engine.py").read_text().split("def _ray")[0]


# Last: after a worker crashed this often, Ray waits a while before it starts the next ones.
def test_a_file_that_kills_every_worker_is_recorded_and_the_build_goes_on(cluster, world, enc, tmp_path):  # noqa: F811
    hook = KillWorker(tmp_path / "batches.log", victim="noise.flac", always=True)
    report = build_library_ray(world.music, tmp_path / "lib", enc, progress=False, workers=2, files_per_batch=1,
                               on_batch=hook)
    assert report.tracks == 4
    (failure,) = report.failures
    assert failure.path.endswith("noise.flac") and "died" in failure.reason
    assert hook.batches().count(("noise.flac",)) == ray_engine.MAX_BATCH_RETRIES + 1
