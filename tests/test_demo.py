"""The shipped demo: it is what it says, re-indexing reproduces it, and its recipe runs.

The full rebuild (`python -m training.demo`) takes minutes; here its `--quick` form runs the
same pipeline end to end on less data, and the determinism of the training pieces is
checked directly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "runtime" / "defaults"


def test_shipped_bundle_is_a_labelled_int8_demo():
    from runtime.bundle import Bundle

    bundle = Bundle.load(DEFAULTS / "bundle")
    m = bundle.manifest
    assert m.model.demo is True
    assert "demo model trained on generated data" in m.model.description
    assert {e.precision for e in m.encoders} == {"int8"}
    assert all(p.passed for p in m.parity), m.parity


@pytest.mark.xfail(strict=True, reason="known miss: the audio graph carries the FBSP filterbank as a 17 MB "
                                       "fp32 constant, so the bundle is ~22 MB, not a few MB")
def test_shipped_bundle_is_a_few_megabytes():
    size = sum(p.stat().st_size for p in (DEFAULTS / "bundle").iterdir())
    print(f"\ndemo bundle: {size / 2**20:.1f} MiB")
    assert size < 10 * 2**20, size


def _accuracy() -> dict:
    acc = json.loads((DEFAULTS / "demo_report.json").read_text())["bundle_accuracy"]
    print(f"\ndemo held-out zero-shot accuracy through the int8 bundle: {acc} "
          f"(chance {1 / 12:.3f} genres, {1 / 7:.3f} moods)")
    return acc


def test_shipped_model_is_well_above_chance():
    acc = _accuracy()
    # Four times chance or more on both sides (issue 7: "well above chance").
    assert acc["pages_to_genre"] >= 4 / 12 and acc["clips_to_mood"] >= 4 / 7


@pytest.mark.xfail(strict=True, reason="known miss: clips -> mood is 0.75 held out, under the 0.8 aim")
def test_shipped_model_reaches_the_80_percent_aim():
    acc = _accuracy()
    assert acc["pages_to_genre"] >= 0.8 and acc["clips_to_mood"] >= 0.8


def test_reindexing_the_demo_music_reproduces_the_shipped_library(tmp_path):
    from runtime.encoders import Encoders
    from runtime.library import build_library, open_library

    shipped = open_library(DEFAULTS / "library")
    encoders = Encoders(DEFAULTS / "bundle", device="cpu", precision="int8", threads=2)
    build_library(DEFAULTS / "music", tmp_path / "lib", encoders, progress=False)
    again = open_library(tmp_path / "lib")
    a = {t.relpath: t for t in shipped.all_tracks()}
    b = {t.relpath: t for t in again.all_tracks()}
    assert a.keys() == b.keys() and len(a) >= 7
    for rel in a:
        assert np.allclose(shipped.tracks[a[rel].row], again.tracks[b[rel].row], atol=1e-5), rel
        assert a[rel].top_mood == b[rel].top_mood, rel


def test_text_prior_is_deterministic():
    torch = pytest.importorskip("torch")
    from dataclasses import replace

    from training.demo import DemoConfig, model_config, train_text_prior
    from training.model import AudioCLIP

    cfg = replace(DemoConfig.quick(), prior_steps=3)
    losses = []
    for _ in range(2):
        torch.manual_seed(cfg.seed)
        losses.append(train_text_prior(AudioCLIP(model_config(cfg)), cfg))
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_quick_recipe_builds_a_working_bundle_and_library(tmp_path):
    pytest.importorskip("torch")
    from training.demo import DemoConfig, build_demo

    report = build_demo(tmp_path / "out", DemoConfig.quick())
    from runtime.retrieval import Retriever

    r = Retriever(bundle=tmp_path / "out" / "bundle", library=tmp_path / "out" / "library")
    page = sorted((tmp_path / "out" / "pages").glob("*.jpg"))[0]
    result = r.query(page, top_k=3)
    assert len(result.tracks) == 3 and len(result.moods) == 7
    assert set(report) >= {"torch_accuracy", "bundle_accuracy", "counts"}
