"""Precise BatchNorm (training.batchnorm): plain averages over the given batches, nothing else touched."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.batchnorm import precise_batchnorm  # noqa: E402


def test_running_stats_become_plain_batch_averages():
    torch.manual_seed(0)
    tower = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    tower[1].running_mean.fill_(9.0)  # stale statistics from "training"
    weights = {k: v.clone() for k, v in tower.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 3) * (i + 1) + i for i in range(3)] + [torch.randn(1, 3)]  # the last is skipped
    used = precise_batchnorm(tower, batches, tower)
    assert used == 3
    with torch.no_grad():
        hidden = [tower[0](b) for b in batches[:3]]
    mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    var = torch.stack([h.var(0, unbiased=True) for h in hidden]).mean(0)
    torch.testing.assert_close(tower[1].running_mean, mean)
    torch.testing.assert_close(tower[1].running_var, var)
    assert tower[1].momentum == 0.1 and not tower.training  # restored
    for k, v in weights.items():
        assert torch.equal(tower.state_dict()[k], v), k


def test_a_tower_without_batchnorm_is_left_alone():
    tower = torch.nn.Linear(2, 2)
    assert precise_batchnorm(tower, [torch.randn(4, 2)], tower) == 0
