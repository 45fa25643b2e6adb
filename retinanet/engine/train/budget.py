"""Training for a time budget (``retinanet train --time MINUTES``): fit the schedule to the budget.

The run measures how long a training step takes on its own first batches (``measure_step``:
real batches, then the weights, optimizer, BatchNorm statistics and RNG states are put back, so
the run starts exactly as it would have) and how long an evaluation will take, then
``fit_schedule`` chooses the number of steps, how often to evaluate and the warmup so that the
run, its evaluations included, ends within the budget; ``TimeFit.describe`` is the log line
that says what was fitted and why. During the run ``Deadline`` stops training early if the
machine turns out slower than measured (the final evaluation and ``best.pt`` still happen).
Once, after ``REFIT_AT`` of the fitted steps, ``refit_steps`` fits the steps again from the speed
the run has shown so far (the first steps, measured before, are often slower than the rest):
the schedule then ends at the budget instead of a minute early or cut by the deadline.

The fit is stored in the run's config (``epochs``, ``eval_every``, ``max_steps``,
``time_fitted``), so a resumed run keeps its schedule: it is not fitted again, and it runs the
remaining epochs without the deadline (the budget was the first session's wall time).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from retinanet.config import TrainConfig
from retinanet.data.images import oriented_size
from retinanet.engine.runtime import distributed as D
from retinanet.engine.train.optim import resolve_warmup, rng_state, set_rng_state
from retinanet.errors import RetinaNetError
from retinanet.model.tiling import TileOptions, count_tiles

EVAL_SHARE = 0.1  # at most this share of the budget goes to evaluations before the last one
MAX_EVALS = 10  # evaluations of a fitted run at most (each one can give best.pt)
MARGIN = 0.04  # share of the budget kept free for what is not measured (checkpoints, logs, jitter)
REFIT_AT = 0.2  # share of the fitted steps after which the steps are fitted again, once, from the run's own speed
REFIT_MIN_STEPS = 10  # ... and not before this many steps (a shorter run keeps its first fit)
REFIT_TOLERANCE = 0.02  # a refit that changes the steps by less than this share keeps the schedule


@dataclass(frozen=True)
class TimeFit:
    """A schedule fitted to a time budget, with the measurements it came from (seconds)."""

    budget_s: float
    used_s: float  # spent before the first step (start-up, data, measuring)
    step_s: float
    steps_per_epoch: int
    eval_s: float
    steps: int  # training steps that fit; the lr schedule ends with the last of them
    epochs: int  # the epochs those steps start (the last one may stop part way)
    eval_every: int
    warmup_iters: int
    train_s: float  # predicted time of the training steps

    @property
    def evaluations(self) -> int:
        return math.ceil(self.epochs / self.eval_every)

    def describe(self, cfg: TrainConfig) -> str:
        """What was fitted and why: one line for the log."""
        left = self.budget_s * (1 - MARGIN) - self.used_s - self.eval_s
        short = " (the start-up took the whole budget: one step, then the evaluation)" if left <= self.step_s else ""
        return (f"time budget {self.budget_s / 60:.1f} min: measured {self.step_s:.2f} s/step "
                f"({self.step_s * self.steps_per_epoch:.0f} s/epoch of {self.steps_per_epoch} steps) and {self.eval_s:.0f} s "
                f"per evaluation, {self.used_s:.0f} s spent before training -> {self.steps} steps ({self.steps / self.steps_per_epoch:.2f} "
                f"epochs, about {self.train_s:.0f} s) with {self.evaluations} evaluation(s) (every {self.eval_every} epoch(s) "
                f"and at the end), warmup {self.warmup_iters} steps, {self.schedule(cfg)}; "
                f"training stops at the budget if it runs slower{short}")

    def schedule(self, cfg: TrainConfig) -> str:
        """The lr schedule over the fitted steps: cosine ends with the last step; multistep's
        milestones are epochs, and those beyond the fitted epochs are never reached (said)."""
        if cfg.scheduler == "cosine":
            return "cosine schedule ending with the last step"
        epochs = self.steps / self.steps_per_epoch
        beyond = [m for m in cfg.lr_steps if m >= epochs]
        if not beyond:
            return f"multistep schedule (x{cfg.lr_gamma:g} at epochs {', '.join(map(str, cfg.lr_steps))})"
        return (f"multistep schedule whose milestone(s) at epoch(s) {', '.join(map(str, beyond))} lie beyond the fitted "
                f"{epochs:.2f} epochs, so the lr does not decay there (--scheduler cosine ends with the budget)")


def fit_schedule(cfg: TrainConfig, budget_s: float, used_s: float, step_s: float, steps_per_epoch: int,
                 eval_s: float) -> TimeFit:
    """The steps, epochs, evaluation interval and warmup that fit ``budget_s``.

    The time left after ``used_s``, less a ``MARGIN`` share, holds the training steps and the
    evaluations: the last one always, more (every ``eval_every`` epochs) while they take at most
    ``EVAL_SHARE`` of the budget and of the steps, at most ``MAX_EVALS`` in all. Fitted in steps,
    not whole epochs (the last epoch may stop part way), so no budget is left unused; at least one
    step. The warmup is ``cfg.warmup_iters`` capped by ``cfg.warmup_max_fraction`` of the fitted
    steps (``resolve_warmup``).

    Raises:
        RetinaNetError: a budget that is not positive.
    """
    if not budget_s > 0:
        raise RetinaNetError(f"--time must be > 0 minutes, got {budget_s / 60:g}")
    spe = max(1, steps_per_epoch)
    step_s = max(step_s, 1e-9)
    left = budget_s * (1 - MARGIN) - used_s
    extra_evals = int(EVAL_SHARE * budget_s // eval_s) if eval_s > 0 else 0

    def steps_with(evals: int) -> int:
        return max(1, int((left - evals * eval_s) // step_s))

    most = steps_with(1)  # the last evaluation only
    evals = 1 + max(0, min(extra_evals, most // spe - 1, MAX_EVALS - 1))
    steps = steps_with(evals)
    while evals > 1 and steps < (1 - EVAL_SHARE) * most:  # evaluations may cost at most that share of the steps
        evals -= 1
        steps = steps_with(evals)
    epochs = math.ceil(steps / spe)
    eval_every = max(1, math.ceil(epochs / min(evals, epochs)))
    return TimeFit(budget_s=budget_s, used_s=used_s, step_s=step_s, steps_per_epoch=spe, eval_s=eval_s, steps=steps,
                   epochs=epochs, eval_every=eval_every, warmup_iters=resolve_warmup(cfg, steps), train_s=steps * step_s)


def apply_fit(cfg: TrainConfig, fit: TimeFit) -> TrainConfig:
    """``cfg`` with the fitted schedule: what the run (and a resume of it) uses. The warmup is
    not stored: ``resolve_warmup`` gives ``fit.warmup_iters`` again from the fitted steps."""
    return dataclasses.replace(cfg, epochs=fit.epochs, eval_every=fit.eval_every, max_steps=fit.steps, time_fitted=True)


def measure_step(run: Any, step: Callable[[Any, Any], dict[str, torch.Tensor]], steps: int = 2) -> float:
    """Seconds per training step (loading included), the median of ``steps`` real steps on the
    run's first batches after one untimed step; afterwards the weights, BatchNorm statistics,
    optimizer, scaler and RNG states are what they were, so the run starts as it would have.

    ``step(images, targets)`` runs one training step and returns its device tensors.
    """
    saved = {"model": copy.deepcopy(run.model.state_dict()), "optimizer": copy.deepcopy(run.optimizer.state_dict()),
             "scaler": copy.deepcopy(run.scaler.state_dict()), "rng": rng_state()}
    loader = run.train_loader
    loader.batch_sampler.set_epoch(0)
    times: list[float] = []  # the first (untimed unless it is the only one) step sets up kernels and caches
    run.net.train()
    try:
        t0 = time.perf_counter()
        for i, (images, targets) in enumerate(loader):
            out = step(images, targets)
            out["loss"].item()  # waits for the device
            now = time.perf_counter()
            times.append(now - t0)
            t0 = now
            if i >= steps:
                break
    finally:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        run.optimizer.zero_grad(set_to_none=True)
    return statistics.median(times[1:] or times)


@torch.inference_mode()
def measure_eval(run: Any) -> float:
    """Estimated seconds of one evaluation: the model in eval mode on a val batch (timed on the
    second call), times the batches of this rank's share, plus, when the main process loads the
    data itself (no loader workers), the time it took to load that batch, times the loader's
    batches; plus 20% and 1 s for matching and metrics. Loader workers load while the model runs.

    The val batch comes from the run's val loader, whose first batch starts its workers: they
    serve every evaluation of the run (``keep_workers``), so their start-up (seconds with spawn)
    is spent here, before training, and not in each evaluation. A ``--crop`` run also takes that
    batch (native-resolution images), and times the model on tiles of the crop's side.

    Timed with score threshold 0: every candidate goes through NMS, as many do once the model has
    learnt a little (an untrained head's scores are all below the threshold, and its evaluation
    takes a fraction of a later one's)."""
    model = run.ema.module if run.ema is not None else run.model
    config = model.config
    t0 = time.perf_counter()
    first = next(iter(run.val_loader))[0]
    load_s = time.perf_counter() - t0 if getattr(run.val_loader, "num_workers", 0) == 0 else 0.0
    model.config = dataclasses.replace(config, score_thresh=0.0)
    model.eval()
    crop = run.data_cfg.crop  # a --crop run evaluates native-resolution tiles of the crop's side
    try:
        if crop:
            images = [torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8, device=run.device)
                      for _ in range(run.cfg.batch_size)]
            batches = math.ceil(val_tiles(run.data.val, crop) / run.cfg.batch_size / D.get_world_size())
        else:
            images = [im.to(run.device) for im in first]
            batches = len(run.val_loader)
        with run.precision.autocast(run.device.type):
            model(images, resize=not crop)
            t0 = time.perf_counter()
            model(images, resize=not crop)
            batch_s = time.perf_counter() - t0
    finally:
        model.config = config
        model.train()
    return 1.2 * (batch_s * batches + load_s * len(run.val_loader)) + 1.0


def val_tiles(dataset: Any, tile: int, overlap: float = TileOptions().overlap) -> int:
    """Tiles of side ``tile`` in the images of ``dataset`` (sizes as annotated, else read from the header)."""
    sizes = [r.size or oriented_size(r.file, exif=dataset.exif, max_pixels=None) for r in dataset.records]
    return sum(count_tiles(hw, tile, overlap) for hw in sizes)


def fit_run(run: Any, step: Callable[[Any, Any], dict[str, torch.Tensor]], started: float) -> TimeFit:
    """Measure (every rank steps together; rank 0's times decide, sent to all) and fit
    ``run.cfg.time`` minutes counted from ``started`` (``time.time()`` at the run's start)."""
    step_s = measure_step(run, step)
    eval_s = measure_eval(run)
    step_s, eval_s = D.all_gather_object((step_s, eval_s))[0]
    used_s = D.all_gather_object(time.time() - started)[0]
    return fit_schedule(run.cfg, run.cfg.time * 60, used_s, step_s, len(run.train_loader), eval_s)


def refit_steps(done: int, step_s: float, left_s: float, eval_s: float, steps_per_epoch: int, eval_every: int) -> int:
    """The run's steps in all, fitted again after ``done`` of them: as many more as fit in
    ``left_s`` (the seconds until training must stop for the last evaluation, less ``MARGIN``) at
    ``step_s`` seconds a step, less the evaluations at the ends of epochs before the last one
    (every ``eval_every`` epochs). At least one more step."""
    spe, step_s = max(1, steps_per_epoch), max(step_s, 1e-9)
    left = left_s * (1 - MARGIN)
    current = (done - 1) // spe + 1 if done > 0 else 1  # the (1-based) epoch being trained: its end is still ahead
    more = max(1, int(left // step_s))
    for _ in range(3):  # the evaluations depend on the epochs the steps reach
        last = math.ceil((done + more) / spe)
        between = sum(1 for e in range(current, last) if e % eval_every == 0)
        more = max(1, int((left - between * eval_s) // step_s))
    return done + more


class Deadline:
    """When training must stop so that the last evaluation still ends within the budget
    (``started`` and ``clock``: ``time.time()`` by default), and the once-only refit of the steps:
    ``refit_at`` (the step after which it happens; None: never) and the training seconds so far
    (the time since ``begin_training``, less the evaluations)."""

    def __init__(self, started: float, budget_s: float | None, eval_s: float = 0.0, clock=time.time,
                 refit_at: int | None = None):
        self.clock = clock
        self.eval_s = eval_s
        self.stop_at = None if budget_s is None else started + budget_s - eval_s
        self.refit_at = refit_at
        self.training_from = clock()
        self.evaluating_s = 0.0

    def begin_training(self) -> None:
        """The first step starts now (``training_s`` counts from here)."""
        self.training_from, self.evaluating_s = self.clock(), 0.0

    def training_s(self) -> float:
        return self.clock() - self.training_from - self.evaluating_s

    def left_s(self) -> float:
        return self.stop_at - self.clock()

    def passed(self) -> bool:
        return self.stop_at is not None and self.clock() >= self.stop_at

    def evaluated(self, seconds: float) -> None:
        """An evaluation took ``seconds``: keep room for the last one at least that long."""
        self.evaluating_s += seconds
        if self.stop_at is not None and seconds > self.eval_s:
            self.stop_at -= seconds - self.eval_s
            self.eval_s = seconds


def refit_at(fit: TimeFit) -> int | None:
    """The step after which a fitted run refits its steps (``REFIT_AT``); None for a short run."""
    at = max(REFIT_MIN_STEPS, math.ceil(REFIT_AT * fit.steps))
    return at if at < fit.steps else None


def refit_run(run: Any, done: int) -> tuple[int, str] | None:
    """After step ``done`` of a fitted run: ``(the new number of steps, the log line)``, or None
    when the run's speed keeps the schedule (within ``REFIT_TOLERANCE``). Rank 0's times decide,
    sent to every rank (all ranks call this after the same step)."""
    deadline, cfg = run.deadline, run.cfg
    if run.device.type == "cuda":  # the steps queued on the GPU belong to the time so far: the run's one sync for this
        torch.cuda.synchronize(run.device)
    step_s, left_s = D.all_gather_object((deadline.training_s() / done, deadline.left_s()))[0]
    total = refit_steps(done, step_s, left_s, deadline.eval_s, len(run.train_loader), cfg.eval_every)
    if abs(total - cfg.max_steps) <= REFIT_TOLERANCE * cfg.max_steps:
        return None
    return total, (f"time budget: the {done} steps so far took {step_s:.2f} s each ({cfg.max_steps} steps were fitted "
                   f"to the first steps' speed): the schedule now ends after step {total} instead "
                   f"({total / len(run.train_loader):.2f} epochs), warmup {resolve_warmup(cfg, total)} steps")
