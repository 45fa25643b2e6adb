"""engine/train/optim.py: lr schedule, optimizer choice, EMA decay ramp, RNG state round trip."""

import math
import random

import numpy as np
import pytest
import torch

from retinanet.config import TrainConfig
from retinanet.engine.train.optim import build_ema, build_optimizer, ema_multi_avg_fn, lr_factor, rng_state, set_lr, set_rng_state
from retinanet.errors import RetinaNetError


def test_warmup_then_multistep_multiplies_by_lr_gamma():
    cfg = TrainConfig(warmup_iters=10, warmup_factor=0.1, scheduler="multistep", lr_steps=(2, 3), lr_gamma=0.5)
    assert lr_factor(0, 0.0, cfg, 4) == pytest.approx(0.1)  # warmup starts at warmup_factor
    assert lr_factor(5, 0.5, cfg, 4) == pytest.approx(0.55)  # linear: 0.1 * 0.5 + 0.5
    assert lr_factor(10, 1.9, cfg, 4) == 1.0
    assert lr_factor(100, 2.0, cfg, 4) == 0.5 and lr_factor(100, 3.5, cfg, 4) == 0.25  # times lr_gamma per step


def test_cosine_reaches_zero_at_the_last_epoch():
    cfg = TrainConfig(warmup_iters=0, scheduler="cosine")
    assert [lr_factor(1000, e, cfg, 4) for e in (0.0, 2.0, 4.0, 5.0)] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_unknown_scheduler_and_optimizer_are_clear_errors():
    with pytest.raises(RetinaNetError, match="unknown scheduler 'step'"):
        lr_factor(0, 0.0, TrainConfig(scheduler="step"), 1)
    with pytest.raises(RetinaNetError, match="unknown optimizer 'adam'"):
        build_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer="adam"))


def test_optimizer_takes_only_trainable_parameters_and_set_lr_sets_every_group():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", lr=0.1))
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups[0]["params"]) == 2
    opt.add_param_group({"params": model[0].parameters()})
    set_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
    assert build_ema(model, TrainConfig(ema=False)) is None


def test_ema_update_ramps_its_decay():
    ema, new = [torch.zeros(3)], [torch.ones(3)]
    ema_multi_avg_fn(0.9, 0)(ema, new, torch.tensor(5))  # constant decay: 0.9 * 0 + 0.1 * 1
    torch.testing.assert_close(ema[0], torch.full((3,), 0.1))
    ema = [torch.zeros(3)]
    ema_multi_avg_fn(0.9, 10)(ema, new, torch.tensor(10))  # decay 0.9 * (1 - e^-1)
    torch.testing.assert_close(ema[0], torch.full((3,), 1 - 0.9 * (1 - math.exp(-1))))


def test_rng_state_round_trip_survives_weights_only_save(tmp_path):
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    first = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == first
