"""Fine-tuning end to end on a tiny model and tiny generated data in the real on-disk layouts.

The data comes from training.synthetic (Manga109 layout with books.txt, images, XML and a
genre CSV; AudioSet layout with segments CSV, ontology slice and clips), plus a corrupt
page, a silent clip and a corrupt clip that training must skip and count. Every run uses
one CPU thread: on a shared two-core machine that is several times faster than two.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from runtime.labels import GENRES, MOOD_IDS, MOODS  # noqa: E402
from training import finetune as ft  # noqa: E402
from training.checkpoints import load_model  # noqa: E402
from training.config import ConfigError, TrainConfig, config_to_toml, load_config  # noqa: E402
from training.data.audioset import AudioSetMoods  # noqa: E402
from training.data.manga109 import Manga109  # noqa: E402

layouts = pytest.importorskip("training.synthetic.layouts")

BAD_CLIPS = ("silentClip01", "brokenClip1")


def write_tiny_manga(root: Path) -> Path:
    """12 genres x 2 volumes x 4 pages (96 x 128) + one corrupt page."""
    layouts.write_manga109(root, pages_per_book=4, books_per_genre=2, seed=0, size=(96, 128))
    title = (root / "books.txt").read_text().split()[0]
    (root / "images" / title / "004.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def write_tiny_audioset(root: Path, seconds: float = 0.5) -> Path:
    """7 moods x 8 clips (2 rows without a file) + a silent clip and a corrupt clip listed in the CSV."""
    layouts.write_audioset(root, clips_per_mood=8, seed=0, seconds=seconds, fmt="wav", missing=2)
    csv_path = root / "segments.csv"
    rows = csv_path.read_text().rstrip("\n").splitlines()
    rows.append(f'{BAD_CLIPS[0]}, 10.000, 20.000, "/m/04rlf,{MOOD_IDS["Sad music"]}"')
    rows.append(f'{BAD_CLIPS[1]}, 0.000, 10.000, "/m/04rlf,{MOOD_IDS["Happy music"]}"')
    csv_path.write_text("\n".join(rows) + "\n")
    sf.write(root / "clips" / f"{BAD_CLIPS[0]}_10.000.wav", np.zeros(22050, np.float32), 44100)
    (root / "clips" / f"{BAD_CLIPS[1]}_0.000.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("tiny_data")
    return {"manga": write_tiny_manga(base / "manga"), "audioset": write_tiny_audioset(base / "audioset")}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def image_config(data: dict, run_dir: Path, **kw) -> TrainConfig:
    d = dict(stage="image", run_dir=str(run_dir), epochs=6, batch_size=8, threads=1, progress=False,
             bn_recalibrate_batches=3,
             model={"size": "tiny"},
             data={"manga_root": str(data["manga"]), "genres": str(data["manga"] / "genres.csv")},
             optim={"name": "adamw", "lr": 1e-3}, loss={"train_logit_scale": False})
    for k, v in kw.items():
        if isinstance(v, dict):
            d[k] = {**d.get(k, {}), **v}
        else:
            d[k] = v
    return load_config(base=d)


def audio_toml(data: dict, run_dir: Path) -> str:
    a = data["audioset"]
    return f"""
stage = "audio"
run_dir = "{run_dir}"
epochs = 3
batch_size = 8
threads = 1
bn_recalibrate_batches = 2
[model]
size = "tiny"
[data]
segments = ["{a / 'segments.csv'}"]
ontology = "{a / 'ontology.json'}"
clips = "{a / 'clips'}"
clip_seconds = 0.5
audio_augment = false
[optim]
name = "adamw"
lr = 1e-3
[loss]
train_logit_scale = false
"""


# ---------------------------------------------------------------------------- data


def test_generated_real_layouts_load(tiny_data):
    manga = Manga109(tiny_data["manga"], tiny_data["manga"] / "genres.csv")
    assert len(manga.titles) == 24 and len(manga) == 12 * 2 * 4 + 1
    assert set(manga.genre_counts()) == set(GENRES)
    book = manga.annotation(manga.titles[0])
    assert len(book.pages) == 4 and all(p.frames for p in book.pages)
    split = manga.split(0.2, 0, "volume")
    assert not {r.title for r in split.train} & {r.title for r in split.val}

    a = tiny_data["audioset"]
    moods = AudioSetMoods(a / "segments.csv", a / "ontology.json", a / "clips")
    assert moods.missing == 2 and len(moods) == 7 * 8 - 2 + 2
    assert any(len(r.labels) > 1 for r in moods.records)  # multi-label rows stay multi-label
    assert set(moods.label_counts()) == set(MOODS)


# ---------------------------------------------------------------------------- one step


@pytest.mark.parametrize("stage", ["audio", "image"])
def test_one_step_lowers_the_loss_on_a_fixed_batch(tiny_data, tmp_path, stage):
    if stage == "audio":
        (tmp_path / "a.toml").write_text(audio_toml(tiny_data, tmp_path / "run"))
        cfg = load_config(tmp_path / "a.toml", ["optim.name=sgd", "optim.lr=5e-5"])
    else:
        cfg = image_config(tiny_data, tmp_path / "run", optim={"name": "sgd", "lr": 5e-5})
    data = ft.load_stage_data(cfg)
    model = ft.build_model(cfg)
    names = ft.freeze_for_stage(model, stage, cfg.loss.train_logit_scale)
    assert names and all(n.startswith("audio.") for n in names) == (stage == "audio")
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in names}
    opt = ft.make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    train, _ = ft.build_datasets(cfg, data, model.config)
    batch = ft.collate([train[i] for i in range(12)])
    batch = ft.Batch(batch.index[:8], batch.x[:8], batch.y[:8], ())
    tokens = ft._Tokens(data.prompts, 77).tokens
    t_cls = ft.text_classes(batch, stage, "primary", 0, 1)
    dev = torch.device("cpu")

    def loss_now(step: bool) -> float:
        ft.set_train_mode(model, stage)
        frozen_text = None
        if stage == "audio":
            with torch.no_grad():
                frozen_text = model.encode_text(tokens)
        if step:  # the training loop's own step: forward, backward, FBSP clipping, update
            return ft.train_step(model, cfg, opt, scaler, batch, t_cls, dev, tokens, frozen_text, None)[0]
        with torch.no_grad():
            return float(ft.batch_loss(model, cfg, batch, t_cls, dev, tokens, frozen_text)[0])

    before = loss_now(step=True)
    after = loss_now(step=False)
    print(f"\n{stage}: loss on a fixed batch of 8 before/after one SGD step: {before:.4f} -> {after:.4f}")
    assert after < before
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), f"frozen {n} moved"


def test_fbsp_weights_shared_by_forward_and_regulariser():
    """The step builds the FBSP filters once; loss and gradient are those of two separate builds."""
    from training.model import AudioCLIP, AudioCLIPConfig

    torch.manual_seed(0)
    model = AudioCLIP(AudioCLIPConfig.tiny()).train()
    with torch.no_grad():
        model.audio.fbsp.m.uniform_(0.5, 1.5)  # away from the DFT init, so m has a useful gradient
    wave = torch.randn(2, 8820) * 3000

    def loss_and_grad(shared: bool):
        model.zero_grad()
        calls = []
        original = type(model.audio.fbsp).weights

        def counting(self, n):
            calls.append(n)
            return original(self, n)

        type(model.audio.fbsp).weights = counting
        try:
            if shared:
                with ft.shared_fbsp_weights(model):
                    loss = model.encode_audio(wave).sum() + model.audio.fbsp.regulariser(2048)
            else:
                loss = model.encode_audio(wave).sum() + model.audio.fbsp.regulariser(2048)
        finally:
            type(model.audio.fbsp).weights = original
        loss.backward()
        return float(loss.detach()), model.audio.fbsp.m.grad.clone(), len(calls)

    l1, g1, n1 = loss_and_grad(shared=False)
    l2, g2, n2 = loss_and_grad(shared=True)
    assert (n1, n2) == (2, 1)
    assert l1 == pytest.approx(l2, rel=1e-6) and torch.allclose(g1, g2, rtol=1e-4, atol=1e-6)
    assert "weights" not in vars(model.audio.fbsp)  # the instance override is gone afterwards


def test_text_of_multilabel_clips():
    y = torch.tensor([[0.0, 1, 0, 1, 0, 0, 1], [1.0, 0, 0, 0, 0, 0, 0]])
    batch = ft.Batch(torch.tensor([5, 9]), torch.zeros(2, 1), y, ())
    assert ft.text_classes(batch, "audio", "primary", 0, 1).tolist() == [1, 0]
    draws = {tuple(ft.text_classes(batch, "audio", "random", 0, e).tolist()) for e in range(1, 30)}
    assert {d[0] for d in draws} == {1, 3, 6} and {d[1] for d in draws} == {0}
    # Reproducible: a pure function of (seed, epoch, item index).
    assert ft.text_classes(batch, "audio", "random", 0, 7).tolist() == ft.text_classes(batch, "audio", "random", 0, 7
                                                                                          ).tolist()


def test_epoch_batches_are_seeded_and_skip_known_bad_items():
    a = ft.epoch_batches(10, 4, seed=0, epoch=1)
    assert a == ft.epoch_batches(10, 4, seed=0, epoch=1) and a != ft.epoch_batches(10, 4, seed=0, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]
    b = ft.epoch_batches(9, 4, seed=0, epoch=1, exclude={3})
    assert 3 not in {i for x in b for i in x} and [len(x) for x in b] == [4, 4]  # a lone last item is dropped


# ---------------------------------------------------------------------------- short runs


def test_short_image_runs_beat_chance_label_vs_diagonal(tiny_data, tmp_path):
    """Separable generated pages: both targets learn; numbers printed for the comparison.

    Pages are single-label and their text is the genre name, so the two targets are the same
    loss (training/losses.py); the runs differ only by float rounding, which Adam amplifies
    over the steps. The first epoch's mean loss must agree closely.
    """
    results = {}
    for targets in ("label", "diagonal"):
        cfg = image_config(tiny_data, tmp_path / targets, loss={"targets": targets})
        t0 = time.perf_counter()
        res = ft.run_training(cfg)
        wall = time.perf_counter() - t0
        acc = [h["val_accuracy"] for h in res.history]
        results[targets] = res
        print(f"\nimage stage, targets={targets}: train loss {res.history[0]['train_loss']:.3f} -> "
              f"{res.history[-1]['train_loss']:.3f}; val accuracy per epoch {[round(a, 2) for a in acc]} "
              f"(chance {1 / 12:.2f}); best epoch {res.best_epoch}; {wall:.1f} s; skipped {len(res.skipped)}")
        assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
        assert max(acc) >= 0.4, f"{targets}: accuracy never well above chance: {acc}"
    first = [results[t].history[0]["train_loss"] for t in ("label", "diagonal")]
    assert first[0] == pytest.approx(first[1], rel=1e-2)
    best = results["label"].history[results["label"].best_epoch - 1]
    assert best["val_accuracy"] >= 0.3
    # The corrupt page is skipped and reported, not fatal.
    assert len(results["label"].skipped) == 1 and "004.jpg" in results["label"].skipped[0]


def test_short_audio_run_through_the_cli(tiny_data, tmp_path, capsys):
    run = tmp_path / "audio_run"
    (tmp_path / "audio.toml").write_text(audio_toml(tiny_data, run))
    t0 = time.perf_counter()
    assert ft.main(["--config", str(tmp_path / "audio.toml"), "--quiet"]) == 0
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "done: 3 epoch(s)" in out
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    maps = [h["val_map"] for h in history]
    print(f"\naudio stage: train loss {history[0]['train_loss']:.3f} -> {history[-1]['train_loss']:.3f}, "
          f"val mAP per epoch {[round(m, 3) for m in maps]}, {wall:.1f} s, "
          f"{history[-1]['seconds_per_step']:.2f} s/step (batch 8 x 0.5 s)")
    assert max(maps) >= 0.6  # random scores give about 0.2 here
    assert history[-1]["train_contrastive"] < history[0]["train_contrastive"]
    # The silent and the corrupt clip are skipped, counted and named.
    last = history[-1]
    assert last["skipped_train"] + last["skipped_val"] == 2
    assert any(BAD_CLIPS[0] in s for s in last["skipped"]) and any(BAD_CLIPS[1] in s for s in last["skipped"])
    assert load_config(run / "config.toml") == load_config(tmp_path / "audio.toml").replace(progress=False)
    best = load_model(run / "best.pt")
    assert best.kind == "manga-music" and best.meta["stage"] == "audio"
    assert best.meta["epoch"] == max(range(1, 4), key=lambda e: (-history[e - 1]["val_loss"], -e))
    state = torch.load(run / "state.pt", weights_only=True)  # data only
    assert state["epoch"] == 3 and len(state["history"]) == 3
    # Only the audio tower (and nothing else) was trained.
    init = ft.build_model(load_config(run / "config.toml"))
    trained = best.model.state_dict()
    for k, v in init.state_dict().items():
        if k.startswith("visual.") or k.startswith("transformer."):
            assert torch.equal(v, trained[k]), k
    assert not torch.equal(init.state_dict()["audio.fc.weight"], trained["audio.fc.weight"])


# ---------------------------------------------------------------------------- resume


def _weights(path: Path) -> dict:
    return load_model(path).model.state_dict()


def test_resume_after_a_kill_gives_the_uninterrupted_result(tiny_data, tmp_path):
    kw = dict(epochs=3, max_steps_per_epoch=3, bn_recalibrate_batches=0, optim={"name": "sgd", "lr": 0.01})
    whole = ft.run_training(image_config(tiny_data, tmp_path / "whole", **kw))

    cfg = image_config(tiny_data, tmp_path / "killed", **kw)

    class Killed(Exception):
        pass

    def kill_after_first(epoch, row):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        ft.run_training(cfg, on_epoch_end=kill_after_first)
    run = Path(cfg.run_dir)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # A kill between state.pt and the files after it: resume must restore them.
    (run / "last.pt").unlink()
    (run / "metrics.jsonl").unlink()
    with pytest.raises(ConfigError, match="already holds a run"):
        ft.run_training(cfg)
    with pytest.raises(ConfigError, match="different config"):
        ft.run_training(cfg.replace(seed=1), resume=True)

    resumed = ft.run_training(cfg, resume=True)
    assert resumed.epochs_run == 2 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a, b = _weights(whole.last_checkpoint), _weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    for h1, h2 in zip(whole.history, resumed.history):
        assert h1["train_loss"] == h2["train_loss"] and h1["val_loss"] == h2["val_loss"]
    assert resumed.best_epoch == whole.best_epoch
    assert torch.equal(_weights(whole.best_checkpoint)["visual.conv1.weight"],
                       _weights(resumed.best_checkpoint)["visual.conv1.weight"])
    # Resuming a finished run does nothing; extending it trains only the new epochs.
    assert ft.run_training(cfg, resume=True).epochs_run == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    longer = ft.run_training(cfg.replace(epochs=4), resume=True)
    assert longer.epochs_run == 1 and len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert load_config(run / "config.toml").epochs == 4


# ---------------------------------------------------------------------------- CLI errors


def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ft.main(["--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out
    assert ft.main(["--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config file not found" in err[0]
    cfg = TrainConfig.for_stage("audio", tmp_path / "r", data={"audio_folders": str(tmp_path / "nope")})
    (tmp_path / "c.toml").write_text(config_to_toml(cfg))
    assert ft.main(["--config", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.audio_folders" in err[0] and "Traceback" not in err[0]
    assert ft.main(["--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
