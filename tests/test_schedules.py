"""The one learning-rate schedule of `gvu train` and `gvu pretrain` (gvu.schedules), with the arithmetic written out."""

import math

import pytest

from gvu.schedules import learning_rate


def test_warmup_then_cosine_by_hand():
    # base 1e-3, 10 steps, 2 of warmup: steps 0 and 1 climb by base / 2; then cos over the 8 steps after warmup
    lr = [learning_rate(s, 1e-3, total=10, warmup=2, kind="cosine") for s in range(11)]
    assert lr[0] == pytest.approx(0.5e-3) and lr[1] == pytest.approx(1e-3)  # (0 + 1) / 2, (1 + 1) / 2
    assert lr[2] == pytest.approx(1e-3)  # (1 + cos 0) / 2 = 1
    assert lr[6] == pytest.approx(0.5e-3)  # (6 - 2) / 8 = 1/2: (1 + cos(pi / 2)) / 2 = 1/2
    assert lr[4] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)  # 0.853553...e-3
    assert lr[4] == pytest.approx(0.8535534e-3)
    assert lr[9] == pytest.approx(1e-3 * (1 + math.cos(7 * math.pi / 8)) / 2) and lr[9] > 0  # the last step: 0.038e-3
    assert lr[10] == pytest.approx(0.0, abs=1e-18)  # cos(pi) at step == total


def test_constant_after_warmup_and_no_warmup():
    assert [learning_rate(s, 2e-5, total=100, warmup=4, kind="constant") for s in (0, 3, 4, 99)] == \
        pytest.approx([0.5e-5, 2e-5, 2e-5, 2e-5])  # 2e-5 * 1/4, 2e-5 * 4/4, then flat
    assert learning_rate(0, 1e-3, total=4) == pytest.approx(1e-3)  # cosine without warmup starts at the base rate
    assert learning_rate(2, 1e-3, total=4) == pytest.approx(0.5e-3)  # 2 / 4 of the way: (1 + cos(pi/2)) / 2


def test_train_and_pretrain_use_the_same_schedule():
    from gvu.config import TrainConfig
    from gvu.train import lr_at

    cfg = TrainConfig(lr=1e-3, steps=10, warmup_steps=2, schedule="cosine")
    assert [lr_at(s, cfg) for s in range(10)] == [learning_rate(s, 1e-3, 10, 2, "cosine") for s in range(10)]


def test_an_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="schedule 'linear': give one of constant, cosine"):
        learning_rate(5, 1e-3, total=10, kind="linear")
