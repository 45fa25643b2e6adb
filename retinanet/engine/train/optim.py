"""Optimisation helpers of the training loop: optimizer, learning-rate schedule, EMA, RNG state.

Pure functions of a ``TrainConfig`` (and the model), so the loop in ``retinanet.engine.train.loop``
only calls them; each is tested on its own (``tests/engine/train/test_optim.py``).
"""

from __future__ import annotations

import ast
import math
import random
from typing import Any

import numpy as np
import torch

from retinanet.config import TrainConfig
from retinanet.errors import RetinaNetError


def resolve_warmup(cfg: TrainConfig, total_steps: int) -> int:
    """Warmup steps of a run of ``total_steps`` steps: ``cfg.warmup_iters``, capped at
    ``cfg.warmup_max_fraction`` of the run, so a short run (a small dataset, few epochs) does not
    spend most of it warming up (300 steps of a 360-step run would keep the lr below a third of
    ``cfg.lr`` for 8 of 10 epochs).

    Raises:
        RetinaNetError: ``warmup_iters`` < 0 or ``warmup_max_fraction`` outside 0..1.
    """
    if cfg.warmup_iters < 0:
        raise RetinaNetError(f"warmup_iters must be >= 0, got {cfg.warmup_iters}")
    if not 0 <= cfg.warmup_max_fraction <= 1:
        raise RetinaNetError(f"warmup_max_fraction must be in 0..1, got {cfg.warmup_max_fraction}")
    return min(cfg.warmup_iters, int(cfg.warmup_max_fraction * max(0, total_steps)))


def describe_schedule(cfg: TrainConfig, warmup: int, total_steps: int, total_epochs: float) -> str:
    """One log line: the warmup the run resolved to (and why) and the lr it peaks at."""
    why = "" if warmup == cfg.warmup_iters else (
        f", warmup_iters {cfg.warmup_iters} capped at warmup_max_fraction {cfg.warmup_max_fraction:g} of the run")
    beyond = [s for s in cfg.lr_steps if s >= total_epochs]  # milestones a shorter run never reaches
    after = (f"cosine to 0 at epoch {total_epochs:.3g}" if cfg.scheduler == "cosine"
             else f"x{cfg.lr_gamma:g} at epochs {', '.join(map(str, cfg.lr_steps)) or '-'}"
             + (f" (epoch(s) {', '.join(map(str, beyond))} beyond this run's {total_epochs:.3g}: not reached)" if beyond else ""))
    # steps counted from 1, as the progress lines count them: step k runs at lr_factor(k - 1)
    peak = (f"peak {cfg.lr:g} at step {warmup + 1}" if warmup < total_steps else
            f"the peak {cfg.lr:g} is not reached within the run's {total_steps} steps")
    return (f"lr schedule: {total_steps} steps ({total_epochs:.3g} epochs); warmup {warmup} steps{why}, "
            f"lr {cfg.lr * cfg.warmup_factor:.3g} -> {peak}, then {after}")


def lr_factor(it: int, epoch_float: float, cfg: TrainConfig, total_epochs: float, warmup_iters: int | None = None) -> float:
    """Multiplier of ``cfg.lr`` at global step ``it`` (linear warmup, then multistep or cosine).

    Args:
        it: global step, 0-based, counted over every epoch.
        epoch_float: epoch + fraction of it done (``epoch + i / steps_per_epoch``), 0-based.
        cfg: ``warmup_iters``, ``warmup_factor`` (the factor at step 0), ``scheduler``,
            ``lr_steps`` and ``lr_gamma`` (multistep: times ``lr_gamma`` at each step epoch).
        total_epochs: the cosine schedule reaches 0 at this epoch (a fraction where a run ends
            part way through its last epoch: ``max_steps / steps_per_epoch``).
        warmup_iters: the run's warmup steps (``resolve_warmup``); None: ``cfg.warmup_iters``.
    Returns:
        warmup factor (``warmup_factor`` -> 1 over the warmup steps) times the schedule's.
    """
    warmup = cfg.warmup_iters if warmup_iters is None else warmup_iters
    warm = 1.0
    if it < warmup:
        alpha = it / max(1, warmup)
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.scheduler == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch_float / (total_epochs if total_epochs > 0 else 1))))
    if cfg.scheduler == "multistep":
        return warm * cfg.lr_gamma ** sum(int(epoch_float) >= s for s in cfg.lr_steps)
    raise RetinaNetError(f"unknown scheduler '{cfg.scheduler}' (multistep or cosine)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate to ``lr``; returns ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over the trainable parameters.

    ``fused`` (CPU and CUDA): one fused kernel per step, which ``optimizer_step`` can also tell to
    skip a step on the device. SGD's momentum buffers then start at zero (the first step gives the
    same buffer, the gradient, as torch's lazy start; a skipped first step leaves them defined).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
        if fused and cfg.momentum:
            for p in params:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return opt
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    raise RetinaNetError(f"unknown optimizer '{cfg.optimizer}' (sgd or adamw)")


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor) -> None:
    """``optimizer.step()`` unless the 0-dim bool ``finite`` is False, then weights and optimizer
    state stay as they were.

    Decided on the device for fused optimizers (their ``found_inf`` input, as ``GradScaler`` uses
    it) and for fp16 (an enabled ``scaler`` skips steps whose gradients are not finite, as those of
    a non-finite loss are); otherwise ``finite`` is read on the host (a sync).
    """
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


def ema_decay(decay: float, ramp_iters: int, n: int) -> float:
    """The EMA's decay after ``n`` updates: ``decay * (1 - exp(-n / ramp_iters))`` (constant
    ``decay`` when ``ramp_iters`` is 0), so short runs do not average in the initial weights."""
    return decay * (1 - math.exp(-float(n) / ramp_iters)) if ramp_iters > 0 else decay


def ema_multi_avg_fn(decay: float, ramp_iters: int):
    """EMA update for ``AveragedModel`` (``ema_decay``)."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged) -> None:
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(decay, ramp_iters, num_averaged))

    return update


class EMA(torch.optim.swa_utils.AveragedModel):
    """``AveragedModel`` with ``ema_multi_avg_fn`` whose update never waits for the device.

    ``AveragedModel`` keeps its count ``n_averaged`` on the host (built without a ``device``), and
    its ``update_parameters`` copies it to the device (a blocking copy) for the averaging function,
    which read it back (``float``): two GPU syncs per step. Here the count is read where it is, the
    decay computed on the host and the weights updated as ``AveragedModel`` would (the same ops,
    the same values). Same state_dict (``n_averaged`` included) as ``AveragedModel``.
    """

    def __init__(self, model: torch.nn.Module, decay: float, ramp_iters: int):
        super().__init__(model, multi_avg_fn=ema_multi_avg_fn(decay, ramp_iters))
        self.decay, self.ramp_iters = decay, ramp_iters

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self.use_buffers or self.n_averaged.device.type != "cpu":  # not as built here: torch's own update
            return super().update_parameters(model)
        n = int(self.n_averaged)  # a host tensor: no sync
        averaged = [p.detach() for p in self.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if n == 0:
            for a, p in zip(averaged, current):
                a.copy_(p)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - ema_decay(self.decay, self.ramp_iters, n))
        for a, b in zip(self.module.buffers(), model.buffers()):  # not averaged: kept equal to the model's
            a.detach().copy_(b.detach())
        self.n_averaged += 1


def build_ema(model: torch.nn.Module, cfg: TrainConfig) -> EMA | None:
    """The EMA of ``model``'s weights (``cfg.ema``), else None."""
    if not cfg.ema:
        return None
    return EMA(model, cfg.ema_decay, cfg.ema_ramp_iters)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain types/tensors (``weights_only`` loadable)."""
    np_state = np.random.get_state()
    state = {"python": repr(random.getstate()), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned (CUDA states only where CUDA is available)."""
    random.setstate(ast.literal_eval(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
