"""The indexer's read-ahead (runtime/library/prefetch.py): the next planned track is decoded
while the current one is embedded; skipped tracks cost nothing more; errors stay with their file."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import InputError
from runtime.library.prefetch import PrefetchingEmbedder


class FakeEncoders:
    """Records which thread decoded what, and what was being embedded at the time."""

    def __init__(self, bad=()):
        self.decoded: list[tuple[str, str]] = []
        self.embedding: str | None = None
        self.during: dict[str, str | None] = {}
        self.bad = set(bad)
        self.lock = threading.Lock()
        self.release = threading.Event()

    def load_wave(self, path):
        name = Path(path).name
        with self.lock:
            self.decoded.append((name, threading.current_thread().name))
            self.during[name] = self.embedding
        if name in self.bad:
            raise InputError(f"{path}: not a readable audio file")
        return np.full(10, float(name[1:]), np.float32)

    def embed_track(self, wave, name=None):
        self.embedding = Path(name).name
        try:
            # Long enough for the read-ahead thread to start on the next file.
            self.release.wait(0.05)
            return float(wave[0])
        finally:
            self.embedding = None


def test_the_next_file_is_decoded_in_the_background_while_this_one_is_embedded():
    enc = FakeEncoders()
    paths = [Path(f"t{i}") for i in range(4)]
    pre = PrefetchingEmbedder(enc)
    pre.plan(paths)
    assert [pre(p) for p in paths] == [0.0, 1.0, 2.0, 3.0]
    pre.close()
    names = [n for n, _ in enc.decoded]
    assert names == ["t0", "t1", "t2", "t3"]  # each decoded once, in order
    assert all(thread.startswith("mm-decode") for _, thread in enc.decoded)
    # t1..t3 were decoded while their predecessor was being embedded
    assert [enc.during[f"t{i}"] for i in (1, 2, 3)] == ["t0", "t1", "t2"]


def test_skipped_files_are_not_decoded_twice_and_the_plan_goes_on():
    enc = FakeEncoders()
    paths = [Path(f"t{i}") for i in range(5)]
    pre = PrefetchingEmbedder(enc)
    pre.plan(paths)
    # The builder copies t0 and t2 from identical files: it asks only for t1, t3, t4.
    assert [pre(p) for p in (paths[1], paths[3], paths[4])] == [1.0, 3.0, 4.0]
    pre.close()
    names = [n for n, _ in enc.decoded]
    assert names.count("t1") == names.count("t3") == names.count("t4") == 1
    assert "t2" not in names or names.count("t2") == 1


def test_a_decoding_error_is_raised_for_its_own_file_only():
    enc = FakeEncoders(bad={"t1"})
    paths = [Path(f"t{i}") for i in range(3)]
    pre = PrefetchingEmbedder(enc)
    pre.plan(paths)
    assert pre(paths[0]) == 0.0
    with pytest.raises(InputError, match="t1: not a readable audio file"):
        pre(paths[1])
    assert pre(paths[2]) == 2.0
    pre.close()


def test_without_a_plan_it_decodes_on_demand():
    enc = FakeEncoders()
    pre = PrefetchingEmbedder(enc)
    assert pre(Path("t7")) == 7.0
    assert enc.decoded[0][1] == threading.current_thread().name
    pre.close()
