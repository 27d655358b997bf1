"""Losses, metrics, run config and cross-modal tables against hand-computed examples (fast, no model)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.config import (  # noqa: E402
    ConfigError,
    TrainConfig,
    config_to_toml,
    load_config,
    parse_override,
)
from training.crossmodal import balanced_sample, confidence_table, write_table  # noqa: E402
from training.losses import (  # noqa: E402
    clip_pair_loss,
    contrastive_loss,
    positives_multi,
    positives_single,
    soft_targets,
)
from training.metrics import (  # noqa: E402
    average_precision,
    confusion_matrix,
    mean_average_precision,
    per_class_accuracy,
    top1_accuracy,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- metrics


def test_average_precision_hand_examples():
    # Ranks: +, -, +, -  ->  precision at the two positives 1/1 and 2/3.
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # The only positive ranked last of three -> 1/3.
    assert average_precision([0.9, 0.8, 0.1], [0, 0, 1]) == pytest.approx(1 / 3)
    # Perfect ranking -> 1 whatever the scores' scale.
    assert average_precision([10.0, 3.0, -1.0], [1, 1, 0]) == pytest.approx(1.0)
    # No positive: undefined, not 0.
    assert math.isnan(average_precision([0.3, 0.2], [0, 0]))


def test_average_precision_ties_are_one_threshold():
    # Scores 0.5, 0.5 (one +, one -) enter together: P = 1/2 at R = 1/2, then P = 2/3 at R = 1.
    expected = 0.5 * 0.5 + 0.5 * (2 / 3)
    assert average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(expected)
    # The order of tied items cannot matter.
    assert average_precision([0.5, 0.5, 0.2], [0, 1, 1]) == pytest.approx(expected)


def test_average_precision_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        scores = np.round(rng.random(n), 1)  # many ties
        targets = rng.random(n) < 0.4
        if not targets.any():
            continue
        # Definition: for each distinct threshold, precision x recall increase.
        ap, prev_r = 0.0, 0.0
        for thr in sorted(set(scores), reverse=True):
            sel = scores >= thr
            r = targets[sel].sum() / targets.sum()
            ap += (r - prev_r) * targets[sel].mean()
            prev_r = r
        assert average_precision(scores, targets) == pytest.approx(ap)


def test_mean_average_precision_skips_absent_classes():
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.9, 0.0], [0.6, 0.3, 0.0]])
    targets = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    res = mean_average_precision(scores, targets)
    assert res.per_class[0] == pytest.approx((1 + 2 / 3) / 2)
    assert res.per_class[1] == pytest.approx(1.0)
    assert math.isnan(res.per_class[2]) and res.absent == (2,)
    assert res.mean == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)
    assert res.positives == (2, 1, 0)


def test_accuracy_and_confusion():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.0, 0.1, 0.9]])
    labels = [0, 1, 1, 2]
    assert top1_accuracy(scores, labels) == pytest.approx(0.75)
    per = per_class_accuracy(scores, labels, 4)
    assert [(p.correct, p.total) for p in per] == [(1, 1), (1, 2), (1, 1), (0, 0)]
    assert math.isnan(per[3].accuracy)
    cm = confusion_matrix([0, 1, 0, 2], labels, 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


# ---------------------------------------------------------------------------- losses


def test_diagonal_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-2))) / 2
    cols = (math.log(1 + math.exp(1 - 2)) + math.log(1 + math.exp(0 - 3))) / 2
    assert float(contrastive_loss(logits, "diagonal")) == pytest.approx(rows + cols, abs=1e-6)


def test_label_loss_matches_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    pos = positives_single(labels)
    L = logits.tolist()

    def lse(v):
        return math.log(sum(math.exp(x) for x in v))

    def soft_ce(rows, targets):
        return sum(-sum(t * (x - lse(r)) for x, t in zip(r, tt)) for r, tt in zip(rows, targets)) / len(rows)

    t = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    cols = [list(c) for c in zip(*L)]
    expected = soft_ce(L, t) + soft_ce(cols, t)  # t is symmetric here
    assert float(contrastive_loss(logits, "label", pos)) == pytest.approx(expected, abs=1e-5)


def test_label_equals_diagonal_when_labels_are_distinct():
    torch.manual_seed(0)
    logits = torch.randn(5, 5) * 3
    pos = positives_single(torch.arange(5))
    assert float(contrastive_loss(logits, "label", pos)) == pytest.approx(float(contrastive_loss(logits)), abs=1e-6)


def test_label_equals_diagonal_when_same_class_texts_are_identical():
    """The paper's setup (text = class name): duplicate columns are identical, so the loss and
    its gradient are the same for both targets; only the multi-label case tells them apart."""
    torch.manual_seed(0)
    cls = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3])
    texts = torch.randn(4, 8)[cls]
    x = torch.randn(8, 8, requires_grad=True)
    diag = clip_pair_loss(x, texts, 10.0, "diagonal")
    label = clip_pair_loss(x, texts, 10.0, "label", positives_single(cls))
    g_diag, = torch.autograd.grad(diag, x)
    g_label, = torch.autograd.grad(label, x)
    assert float(diag.detach()) == pytest.approx(float(label.detach()), abs=1e-5)
    assert torch.allclose(g_diag, g_label, atol=1e-5)
    multi_hot = torch.nn.functional.one_hot(cls, 4).float()
    multi_hot[0, 1] = 1.0  # item 0 is also of class 1: the class-1 texts become its positives
    multi = clip_pair_loss(x, texts, 10.0, "label", positives_multi(multi_hot, cls))
    assert abs(float(multi.detach()) - float(diag.detach())) > 0.05


def test_label_targets_do_not_punish_same_class_pairs():
    """Two pages of one genre whose texts differ (e.g. two prompt templates): the paper's loss
    depends on which text each page is closer to; the label-aware loss does not."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])  # texts of items 0 and 1 swapped
    labels = torch.tensor([3, 3, 5])
    pos = positives_single(labels)
    swapped = clip_pair_loss(x, t, 10.0, "label", pos)
    aligned = clip_pair_loss(x, t[[1, 0, 2]], 10.0, "label", pos)
    assert float(swapped) == pytest.approx(float(aligned), abs=1e-6)
    assert float(clip_pair_loss(x, t, 10.0, "diagonal")) > float(clip_pair_loss(x, t[[1, 0, 2]], 10.0)) + 5


def test_multilabel_positives_and_soft_targets():
    multi_hot = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    text_cls = torch.tensor([2, 1, 0])  # item 0 is contrasted with its second label
    pos = positives_multi(multi_hot, text_cls)
    assert pos.tolist() == [[True, False, True], [False, True, False], [False, False, True]]
    t = soft_targets(pos)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert t[0].tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(ValueError):
        soft_targets(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        contrastive_loss(torch.zeros(2, 2), "label", torch.tensor([[False, True], [True, True]]))


def test_loss_gradient_reaches_both_sides():
    x = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    clip_pair_loss(x, t, 10.0, "label", positives_single(torch.tensor([0, 1, 0, 2]))).backward()
    assert x.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- config


def test_shipped_configs_hold_the_papers_recipe():
    audio = load_config(REPO / "configs" / "audio.toml")
    image = load_config(REPO / "configs" / "image.toml")
    assert (audio.stage, audio.epochs, audio.batch_size) == ("audio", 30, 32)
    assert (image.stage, image.epochs, image.batch_size) == ("image", 50, 64)
    for c in (audio, image):
        o = c.optim
        assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay, o.lr_decay) == ("sgd", 5e-5, 0.9, True, 5e-4, 0.96)
        assert c.select_best_by == "val_loss" and c.data.val_fraction == 0.2
    assert audio.data.int16_range and audio.data.clip_seconds == 5.0 and audio.loss.fbsp_regulariser == 1.0


def test_stage_defaults_overrides_and_round_trip(tmp_path):
    cfg = TrainConfig.for_stage("image", tmp_path / "run")
    assert (cfg.epochs, cfg.batch_size, cfg.loss.targets) == (50, 64, "label")
    path = tmp_path / "c.toml"
    path.write_text('stage = "audio"\nrun_dir = "r"\n[optim]\nlr = 1\n')
    cfg = load_config(path, ["optim.lr=0.5", "loss.targets=diagonal", "data.segments=a.csv", "epochs=3"])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.loss.targets == "diagonal" and cfg.epochs == 3 and cfg.batch_size == 32
    assert cfg.data.segments == (str(Path("a.csv").resolve()),)  # relative to the cwd, stored absolute
    (tmp_path / "back.toml").write_text(config_to_toml(cfg))
    assert load_config(tmp_path / "back.toml") == cfg


@pytest.mark.parametrize("override, words", [
    ("optim.lr=fast", "optim.lr must be a number"),
    ("loss.targets=both", "loss.targets"),
    ("optim.momentum_x=1", "unknown key optim.momentum_x"),
    ("batch_size=1", "batch_size must be at least 2"),
    ("epochs", "expected key=value"),
    ("optim.lr_decay=1.5", "optim.lr_decay"),
])
def test_bad_config_is_one_clear_error(tmp_path, override, words):
    path = tmp_path / "c.toml"
    path.write_text('stage = "audio"\nrun_dir = "r"\n')
    with pytest.raises(ConfigError, match=words):
        load_config(path, [override])


def test_override_values_are_toml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override('a=["x", "y"]') == (["a"], ["x", "y"])
    assert parse_override("a=some/path.csv") == (["a"], "some/path.csv")


# ---------------------------------------------------------------------------- cross-modal


def test_confidence_table_hand_example(tmp_path):
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = [(0,), (1,), (0,), (0, 1)]  # the last item is multi-label: counts in both rows
    prompts = np.eye(2)
    table = confidence_table(emb, labels, prompts, 2.0, ["a", "b", "c"], ["x", "y"], "a_to_x", "T", "D")
    hi = math.exp(2) / (math.exp(2) + 1)
    lo = 1 - hi
    assert table.counts == (3, 2, 0)
    assert table.values[0] == pytest.approx([(2 * hi + lo) / 3, (2 * lo + hi) / 3])
    assert table.values[1] == pytest.approx([lo, hi])
    assert np.isnan(table.values[2]).all()
    assert np.allclose(table.values[:2].sum(1), 1.0)
    written = write_table(table, tmp_path)
    assert [p.name for p in written] == ["a_to_x.md", "a_to_x.csv", "a_to_x.png"]
    md = (tmp_path / "a_to_x.md").read_text()
    assert "| a (3) |" in md and "| c (0) | - | - |" in md
    csv_rows = (tmp_path / "a_to_x.csv").read_text().splitlines()
    assert csv_rows[0] == "a,n,x,y" and csv_rows[2].startswith(f"b,2,{lo:.6f},{hi:.6f}")
    assert (tmp_path / "a_to_x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_balanced_sample_is_seeded_and_even():
    labels = [(0,)] * 10 + [(1,)] * 2 + [(2,)] * 5
    pick = balanced_sample(labels, 9, seed=3)
    assert pick == balanced_sample(labels, 9, seed=3)
    assert Counter(labels[i][0] for i in pick) == {0: 4, 1: 2, 2: 3}
    assert balanced_sample(labels, 9, seed=4) != pick
    assert len(balanced_sample(labels, 100)) == len(labels)
