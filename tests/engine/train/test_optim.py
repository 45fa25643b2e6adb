"""engine/train/optim.py: lr schedule, optimizer choice, EMA decay ramp, RNG state round trip."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from retinanet.config import TrainConfig
from retinanet.engine.train.optim import (build_ema, build_optimizer, describe_schedule, ema_multi_avg_fn, lr_factor,
                                          resolve_warmup, rng_state, set_lr, set_rng_state)
from retinanet.errors import RetinaNetError


def test_warmup_then_multistep_multiplies_by_lr_gamma():
    cfg = TrainConfig(warmup_iters=10, warmup_factor=0.1, scheduler="multistep", lr_steps=(2, 3), lr_gamma=0.5)
    assert lr_factor(0, 0.0, cfg, 4) == pytest.approx(0.1)  # warmup starts at warmup_factor
    assert lr_factor(5, 0.5, cfg, 4) == pytest.approx(0.55)  # linear: 0.1 * 0.5 + 0.5
    assert lr_factor(10, 1.9, cfg, 4) == 1.0
    assert lr_factor(100, 2.0, cfg, 4) == 0.5 and lr_factor(100, 3.5, cfg, 4) == 0.25  # times lr_gamma per step


def test_warmup_is_capped_at_a_fraction_of_the_run():
    """The issue's case: 283 images, batch 8 (36 steps an epoch), 10 epochs, warmup_iters 300: the
    cap (default 0.2 of 360 steps) makes the warmup 72 steps, so the lr reaches its peak in epoch 3
    instead of never passing a third of it."""
    cfg = TrainConfig(warmup_iters=300, warmup_factor=0.001, scheduler="cosine", lr=0.01)
    steps, epochs = 36 * 10, 10
    warmup = resolve_warmup(cfg, steps)
    assert warmup == 72
    peak = max(lr_factor(it, it / 36, cfg, epochs, warmup) for it in range(steps))
    uncapped = max(lr_factor(it, it / 36, cfg, epochs) for it in range(steps))
    assert peak > 0.9 and uncapped < 0.4  # capped: 0.905 at step 72 (cosine already at epoch 2); uncapped below 40%
    assert lr_factor(72, 2.0, cfg, epochs, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    # a long run keeps warmup_iters; fraction 0 turns warmup off; 1 never caps
    assert resolve_warmup(cfg, 100_000) == 300
    assert resolve_warmup(dataclasses.replace(cfg, warmup_max_fraction=0.0), 360) == 0
    assert resolve_warmup(dataclasses.replace(cfg, warmup_max_fraction=1.0), 360) == 300
    line = describe_schedule(cfg, warmup, steps, epochs)
    assert "warmup 72 steps" in line and "warmup_iters 300 capped at warmup_max_fraction 0.2" in line
    assert "peak 0.01 at step 73" in line and "cosine to 0 at epoch 10" in line  # steps from 1, as progress lines
    assert "capped" not in describe_schedule(cfg, 300, 100_000, 100)
    assert "the peak 0.01 is not reached within the run's 4 steps" in describe_schedule(cfg, 4, 4, 1)


@pytest.mark.parametrize("field, value, match", [("warmup_max_fraction", 1.5, "warmup_max_fraction must be in 0..1"),
                                                 ("warmup_max_fraction", -0.1, "warmup_max_fraction must be in 0..1"),
                                                 ("warmup_iters", -1, "warmup_iters must be >= 0")])
def test_warmup_settings_out_of_range_are_clear_errors(field, value, match):
    with pytest.raises(RetinaNetError, match=match):
        resolve_warmup(TrainConfig(**{field: value}), 100)


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


@pytest.mark.parametrize("ramp", [0, 3])
def test_ema_updates_as_averaged_model_without_reading_the_device(ramp):
    """``EMA`` (no host-device sync per update) gives ``AveragedModel``'s weights, buffers and
    count bit for bit, and the same state_dict keys."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ours = build_ema(model, TrainConfig(ema=True, ema_decay=0.9, ema_ramp_iters=ramp))
    ref = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9, ramp))
    for _ in range(4):
        model(torch.randn(5, 3))  # BatchNorm statistics move
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update_parameters(model)
        ref.update_parameters(model)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) and int(a["n_averaged"]) == 4


def test_rng_state_round_trip_survives_weights_only_save(tmp_path):
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    first = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == first
