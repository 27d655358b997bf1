"""The shipped demo: it is what it says, re-indexing reproduces it, and its recipe rebuilds it.

The full rebuild (`python -m training.demo`, about 3 minutes on 2 cores) runs once, into a
temporary folder, and is compared with what ships; the `--quick` form checks the pipeline
on less data, and the determinism of the training pieces is checked directly.
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
    assert {e.precision for e in m.encoders if not e.part} == {"int8"}
    # and the one-pass audio halves: an int8 trunk, and the small head every trunk shares
    assert {(e.part, e.precision) for e in m.encoders if e.part} == {("trunk", "int8"), ("head", "fp32")}
    assert all(p.passed for p in m.parity), m.parity


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


def test_shipped_model_reaches_the_80_percent_aim():
    acc = _accuracy()
    assert acc["pages_to_genre"] >= 0.8 and acc["clips_to_mood"] >= 0.8


def _example_accuracy() -> tuple[float, float]:
    """Genre accuracy on the shipped example pages and mood accuracy on the shipped tracks,
    through the runtime (int8 graphs, this machine's CPU, self-check on)."""
    import csv

    from runtime.encoders import Encoders

    enc = Encoders(DEFAULTS / "bundle", device="cpu", precision="int8", threads=2)
    m = enc.bundle.manifest
    pages = list(csv.DictReader((DEFAULTS / "pages" / "pages.csv").open()))
    tracks = list(csv.DictReader((DEFAULTS / "music" / "library.csv").open()))
    genres, moods = m.label_set("genres"), m.label_set("moods")
    page_emb = enc.embed_images([DEFAULTS / "pages" / r["file"] for r in pages])
    track_emb = enc.embed_audio([DEFAULTS / "music" / r["file"] for r in tracks])
    page_hits = [genres.classes[i] == r["genre"] for i, r in zip((page_emb @ genres.embeddings.T).argmax(1), pages)]
    track_hits = [moods.classes[i] == r["mood"] for i, r in zip((track_emb @ moods.embeddings.T).argmax(1), tracks)]
    assert all(r.passed for r in enc.selfchecks.values()) and set(enc.selfchecks) == {"image", "audio"}
    return float(np.mean(page_hits)), float(np.mean(track_hits))


def test_the_shipped_bundle_is_right_on_this_machines_cpu():
    """Issue 11: what the demo does on the CPU CI runs on, not what it did where it was
    built. Measured where it was built (AMD EPYC, AVX-512 VNNI): 9 of 12 example pages and
    14 of 14 tracks; the same on an emulated AVX2-only and ARM CPUs. The old 8-bit-weight
    bundle fell to 6 of 12 pages on an AVX2-only CPU, which this catches."""
    pages, tracks = _example_accuracy()
    print(f"\nshipped demo on this CPU: example pages -> genre {pages:.3f}, tracks -> mood {tracks:.3f}")
    assert pages >= 8 / 12 and tracks >= 12 / 14


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


@pytest.mark.slow
def test_the_recipe_rebuilds_the_shipped_demo(tmp_path):
    """`python -m training.demo` from scratch gives the shipped model: the same held-out
    accuracy (which meets the aim), the same page embeddings and the same library.

    On this project's machine the rebuild is bit-for-bit in every number below. Another CPU
    may round a few float sums differently over 20 epochs, so the checks allow a small drift
    rather than demand equality; the printed numbers show how much there was.
    """
    pytest.importorskip("torch")
    import subprocess
    import sys

    from runtime.encoders import Encoders
    from runtime.library import open_library

    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "training.demo", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    shipped = json.loads((DEFAULTS / "demo_report.json").read_text())
    rebuilt = json.loads((out / "demo_report.json").read_text())
    print(f"\nrebuilt in {rebuilt['seconds']} s; int8 held-out accuracy rebuilt {rebuilt['bundle_accuracy']}, "
          f"shipped {shipped['bundle_accuracy']}")
    for task in ("pages_to_genre", "clips_to_mood"):
        assert rebuilt["bundle_accuracy"][task] >= 0.8
        assert abs(rebuilt["bundle_accuracy"][task] - shipped["bundle_accuracy"][task]) <= 0.05, task

    same_bytes = [f.name for f in sorted((DEFAULTS / "bundle").iterdir())
                  if (out / "bundle" / f.name).read_bytes() == f.read_bytes()]
    print(f"bundle files identical byte for byte: {len(same_bytes)}/{len(list((DEFAULTS / 'bundle').iterdir()))}")

    pages = sorted((DEFAULTS / "pages").glob("*.jpg"))
    emb = {name: Encoders(root / "bundle", device="cpu", precision="int8", threads=2).embed_images(pages)
           for name, root in (("shipped", DEFAULTS), ("rebuilt", out))}
    page_cos = (emb["shipped"] * emb["rebuilt"]).sum(1) / (
        np.linalg.norm(emb["shipped"], axis=1) * np.linalg.norm(emb["rebuilt"], axis=1))
    a = {t.relpath: t for t in open_library(DEFAULTS / "library").all_tracks()}
    b = {t.relpath: t for t in open_library(out / "library").all_tracks()}
    same_mood = sum(a[k].top_mood == b[k].top_mood for k in a)
    print(f"page embeddings: worst cosine shipped vs rebuilt {page_cos.min():.6f}; "
          f"tracks with the same top mood {same_mood}/{len(a)}")
    assert page_cos.min() > 0.95
    assert a.keys() == b.keys() and same_mood >= len(a) - 1
