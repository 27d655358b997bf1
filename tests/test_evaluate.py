"""Evaluation: hand-computed metrics through a fake backend, the torch backend against the model,
and the CLI writing its tables from a checkpoint and from a bundle."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

torch = pytest.importorskip("torch")

from runtime.labels import GENRES, MOODS  # noqa: E402
from training import evaluate as ev  # noqa: E402
from runtime.manifest import AudioPreprocess  # noqa: E402
from training.backends import EmbeddingBackend, TorchBackend  # noqa: E402
from training.checkpoints import save_checkpoint  # noqa: E402
from training.model import AudioCLIP, AudioCLIPConfig  # noqa: E402

D = len(MOODS) + len(GENRES)
SCALES = {"image_text": 10.0, "audio_text": 20.0, "audio_image": 1.0}
C = 1 / math.sqrt(1.25)  # cosine of normalize(e_a + 0.5 e_b) with e_a
C_HALF = 0.5 / math.sqrt(1.25)  # ... with e_b


def _unit(i: int, j: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] += 1.0
    v[j] += 0.5
    return v / np.linalg.norm(v)


# The odd clip (peak 0.8): sad, and pointedly not happy, so no score of it ties with another clip's.
ODD = np.zeros(D, np.float32)
ODD[[2, 9, 0]] = 1.0, 0.5, -0.3
ODD /= np.linalg.norm(ODD)


class FakeBackend:
    """Embeddings that encode the class the input was generated from, so every number is known.

    Texts: mood i -> e_i, genre j -> e_{7+j}. A clip whose peak is 0.1 (m + 1) encodes mood m:
    normalize(e_m + 0.5 e_{7+m}); peak 0.8 gives ODD. A flat page of grey 20 g + 5 encodes
    genre g: normalize(e_{7+g} + 0.5 e_{g mod 7}).
    """

    name = "fake"
    embed_dim = D
    logit_scales = SCALES

    def embed_texts(self, texts):
        idx = {t: i for i, t in enumerate(list(MOODS) + list(GENRES))}
        return np.stack([np.eye(D, dtype=np.float32)[idx[t]] for t in texts])

    def embed_audio(self, waves):
        codes = [int(round(float(np.abs(w).max()) * 10)) - 1 for w in waves]
        return np.stack([_unit(m, 7 + m) if m < 7 else ODD for m in codes])

    def embed_images(self, items):
        genres = [int(round((np.asarray(im.convert("L"), np.float32).mean() - 5) / 20)) for im in items]
        return np.stack([_unit(7 + g, g % 7) for g in genres])


def _tone(path: Path, mood: int, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(44100 * seconds)) / 44100
    sf.write(path, (0.1 * (mood + 1) * np.sin(2 * np.pi * 441 * t)).astype(np.float32), 44100, subtype="FLOAT")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fake_eval")
    manga = root / "manga"
    titles = []
    for g, genre in enumerate(GENRES):
        title = f"Flat{g:02d}"
        titles.append((title, genre))
        for p in range(2):
            (manga / "images" / title).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 64), (20 * g + 5,) * 3).save(manga / "images" / title / f"{p:03d}.jpg", quality=95)
    (manga / "books.txt").write_text("\n".join(t for t, _ in titles) + "\n")
    (manga / "genres.csv").write_text("ENGLISH_NAME,GENRE\n" + "".join(f"{t},{g}\n" for t, g in titles))
    moods = root / "moods"  # the one-folder-per-mood layout
    for m, mood in enumerate(MOODS):
        for k in range(2):
            _tone(moods / mood / f"clip{m}{k}.wav", m)
    _tone(moods / "Happy music" / "mislabelled.wav", 7)  # sounds sad (ODD), labelled happy
    (moods / "Sad music" / "silent.wav").write_bytes(b"")  # unreadable: skipped and counted
    return {"manga": manga, "moods": moods}


def test_fake_backend_numbers_match_hand_computation(fake_data, tmp_path):
    assert isinstance(FakeBackend(), EmbeddingBackend)
    manga = ev.manga_eval_set(fake_data["manga"], fake_data["manga"] / "genres.csv", subset="all")
    moods = ev.audioset_eval_set(fake_data["moods"], subset="all")
    report = ev.evaluate_backend(FakeBackend(), manga, moods, sample=100)

    # Mood AP. Happy: its 2 clips rank first, the mislabelled one (ODD: happy component
    # negative) last of 15 -> (1/1 + 2/2 + 3/15) / 3. Every other mood ranks its own clips first.
    happy = (1 + 1 + 3 / 15) / 3
    m = report.moods
    assert m.per_class["Happy music"] == pytest.approx(happy)
    assert all(m.per_class[x] == pytest.approx(1.0) for x in MOODS if x != "Happy music")
    assert m.map == pytest.approx((6 + happy) / 7)
    assert m.clips == 15 and len(m.skipped) == 1 and "silent.wav" in m.skipped[0]
    assert report.genres.accuracy == 1.0 and report.genres.pages == 24

    # Cross-modal: a clip of mood k puts exp(20 c)/(exp(20 c) + 11) on genre k, 1/(...) elsewhere.
    def clip_row(k):
        z = math.exp(SCALES["audio_text"] * C_HALF) + 11
        return np.array([(math.exp(SCALES["audio_text"] * C_HALF) if g == k else 1.0) / z for g in range(12)])

    m2g = report.mood_to_genre
    assert m2g.counts == (3, 2, 2, 2, 2, 2, 2)
    odd_logits = SCALES["audio_text"] * ODD[7:].astype(np.float64)
    odd_row = np.exp(odd_logits) / np.exp(odd_logits).sum()
    assert m2g.values[0] == pytest.approx((2 * clip_row(0) + odd_row) / 3)
    assert m2g.values[4] == pytest.approx(clip_row(4))
    g2m = report.genre_to_mood
    z = math.exp(SCALES["image_text"] * C_HALF) + 6
    for g in range(12):
        row = np.array([(math.exp(SCALES["image_text"] * C_HALF) if k == g % 7 else 1.0) / z for k in range(7)])
        assert g2m.values[g] == pytest.approx(row)
    assert g2m.counts == (2,) * 12

    # The sample is a fixed, balanced subset: 14 pages -> 1 or 2 of each genre, same every time.
    small = ev.evaluate_backend(FakeBackend(), manga, None, sample=14, seed=5)
    assert sum(small.genre_to_mood.counts) == 14 and set(small.genre_to_mood.counts) == {1, 2}
    assert small.genre_to_mood.counts == ev.evaluate_backend(FakeBackend(), manga, None, sample=14, seed=5
                                                             ).genre_to_mood.counts

    written = ev.write_report(report, tmp_path, baseline=small)
    names = {p.name for p in written}
    assert {"report.md", "report.json", "per_class_ap.csv", "per_genre_accuracy.csv", "genre_to_mood.png",
            "mood_to_genre.csv"} <= names
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["model"]["audioset_mood"]["mAP"] == pytest.approx((6 + happy) / 7)
    assert data["baseline"].get("audioset_mood") is None
    md = (tmp_path / "report.md").read_text()
    assert "| Manga109 (24 pages) | top-1 accuracy | 100.0 % | 100.0 % |" in md
    assert f"| Happy music | 3 | - | {100 * happy:.1f} % |" in md
    assert not list(tmp_path.glob(".eval-*"))  # the temporary folder is gone


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than two on a busy shared machine
    yield
    torch.set_num_threads(before)


def test_torch_backend_is_the_model(fake_data):
    torch.manual_seed(0)
    model = AudioCLIP(AudioCLIPConfig.tiny(embed_dim=32, resolution=32)).eval()
    # Short windows keep the test fast; the rule is the runtime's, whatever the lengths.
    be = TorchBackend(model, audio=AudioPreprocess(window_seconds=1.0, hop_seconds=0.5, min_seconds=0.25))
    assert be.embed_dim == 32 and set(be.logit_scales) == {"image_text", "audio_text", "audio_image"}
    assert be.embed_images([]).shape == (0, 32) and be.embed_audio([]).shape == (0, 32)
    from runtime.manifest import ImagePreprocess
    from runtime.tokenizer import default_tokenizer
    from training.data.augment import clip_preprocess

    def unit(t):
        return torch.nn.functional.normalize(t, dim=-1).numpy()

    page = fake_data["manga"] / "images" / "Flat03" / "000.jpg"
    with torch.no_grad():
        pixels = torch.from_numpy(clip_preprocess(Image.open(page), ImagePreprocess(size=32)))[None]
        assert np.allclose(be.embed_images([page]), unit(model.encode_image(pixels)), atol=1e-5)
        tokens = torch.from_numpy(default_tokenizer()(["Sad music", "horror"]))
        assert np.allclose(be.embed_texts(["Sad music", "horror"]), unit(model.encode_text(tokens)), atol=1e-5)
        rng = np.random.default_rng(0)
        short = (0.3 * rng.standard_normal(35280)).astype(np.float32)  # 0.8 s
        tiny = short[:4410]  # 0.1 s
        long = (0.3 * rng.standard_normal(66150)).astype(np.float32)  # 1.5 s
        emb = be.embed_audio([short, long, tiny])
        # int16 range in; a 1.5 s track is two 1 s windows (0 and 0.5 s), pooled like the runtime;
        # a clip shorter than min_seconds is zero-padded up to it, as the bundle would.
        assert np.allclose(emb[0], unit(model.encode_audio(torch.from_numpy(short)[None] * 32768.0))[0], atol=1e-5)
        padded = torch.from_numpy(np.pad(tiny, (0, 11025 - 4410)))[None] * 32768.0
        assert np.allclose(emb[2], unit(model.encode_audio(padded))[0], atol=1e-5)
        w = torch.from_numpy(np.stack([long[:44100], long[22050:66150]])) * 32768.0
        pooled = unit(torch.from_numpy(unit(model.encode_audio(w)).sum(0, keepdims=True)))[0]
        assert np.allclose(emb[1], pooled, atol=1e-5)


def _tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, AudioCLIP(AudioCLIPConfig.tiny(embed_dim=32, resolution=32)), {"note": "test"})


def test_cli_writes_tables_for_a_checkpoint_with_baseline(tmp_path, capsys):
    layouts = pytest.importorskip("training.synthetic.layouts")
    manga = layouts.write_manga109(tmp_path / "manga", pages_per_book=3, books_per_genre=2, seed=0, size=(64, 90))
    aset = layouts.write_audioset(tmp_path / "aset", clips_per_mood=4, seed=0, seconds=0.5, fmt="wav", missing=1)
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    rc = ev.main([str(ckpt), "--manga", str(manga), "--genres", str(manga / "genres.csv"), "--audioset", str(aset),
                  "--split", "volume", "--sample", "30", "--clip-seconds", "1", "--baseline", str(ckpt), "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "volume-level split" in printed and "baseline" in printed
    for name in ("report.md", "report.json", "per_class_ap.csv", "per_genre_accuracy.csv"):
        assert (out / name).is_file()
    for table in ("genre_to_mood", "mood_to_genre"):
        for ext in ("md", "csv", "png"):
            assert (out / f"{table}.{ext}").stat().st_size > 0
    data = json.loads((out / "report.json").read_text())
    model, base = data["model"], data["baseline"]
    assert model["audioset_mood"]["mAP"] == base["audioset_mood"]["mAP"]  # same weights, same numbers
    assert "volume-level split" in model["manga109_genre"]["data"]
    assert "(1 missing clip(s))" in model["audioset_mood"]["data"]
    # Volume split: one volume of 3 pages per genre held out (36 pages); the sample takes 30, balanced.
    assert model["manga109_genre"]["pages"] == 36
    assert sum(model["genre_to_mood"]["counts"]) == 30 and set(model["genre_to_mood"]["counts"]) == {2, 3}
    assert sum(model["mood_to_genre"]["counts"]) >= 7
    rows = (out / "genre_to_mood.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["genre", "n", "Happy music"] and len(rows) == 13
    ap = [r.split(",") for r in (out / "per_class_ap.csv").read_text().splitlines()]
    assert ap[0] == ["mood", "clips", "ap", "baseline_ap"] and ap[-1][0] == "mAP"
    assert float(ap[-1][2]) == pytest.approx(model["audioset_mood"]["mAP"], abs=1e-6)


def test_cli_on_a_bundle(tmp_path, fake_data, capsys):
    rf = pytest.importorskip("runtime_fixtures")
    pytest.importorskip("runtime.encoders")
    bundle = rf.write_tiny_bundle(tmp_path / "bundle", precisions=("fp32",))
    out = tmp_path / "eval"
    rc = ev.main([str(bundle), "--manga", str(fake_data["manga"]), "--genres", str(fake_data["manga"] / "genres.csv"),
                  "--audioset", str(fake_data["moods"]), "--subset", "all", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())["model"]
    assert data["model"].startswith("bundle:") and data["logit_scales"]["audio_text"] == pytest.approx(8.0)
    assert data["audioset_mood"]["clips"] == 15 and data["manga109_genre"]["pages"] == 24
    assert (out / "mood_to_genre.png").is_file()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    cases = [
        ([str(ckpt), "--out", str(tmp_path / "o")], "nothing to evaluate"),
        ([str(ckpt), "--manga", str(tmp_path / "none"), "--genres", str(tmp_path / "g.csv"), "--out", str(tmp_path)],
         "genre table not found"),
        ([str(tmp_path / "missing.pt"), "--audioset", str(tmp_path), "--out", str(tmp_path / "o")], "no clip"),
        ([str(tmp_path / "missing.pt"), "--audioset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
         "not found"),
    ]
    for argv, words in cases:
        assert ev.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "o").exists()
