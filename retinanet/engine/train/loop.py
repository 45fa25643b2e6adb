"""Training loop: ``train(model_cfg, data_cfg, train_cfg) -> summary dict``.

Single process or DDP under torchrun (gloo on CPU, NCCL on GPUs; only rank 0 writes files and
prints). A run reads top-down:

- set-up (``_train``; ``retinanet.engine.train.setup``): data, model, optimizer, EMA, loaders;
  ``restore`` on resume;
- one epoch (``train_one_epoch``): ``train_step`` per batch, counted on the device by ``StepMeter``,
  read by ``report_steps`` every ``print_every`` steps;
- end of epoch (``end_epoch``): every ``eval_every`` epochs (and after the last) evaluate (COCO
  metrics, split across ranks and gathered); write ``last.pt`` (``best.pt`` when the evaluated AP
  improved; plain types, ``weights_only`` loadable) and the epoch's row (``retinanet.engine.train.report``:
  ``results.csv``, ``metrics.json``, ``results.png``); ``train.log`` keeps every line printed.

A new run never writes into a run directory that holds another run (``check_run_dir`` in
``retinanet.engine.runtime.run_dir``: resume it, or ``exist_ok``), nor into one another process
is using (``hold_run_dir``: rank 0 holds the folder's lock for the whole run). SIGINT/SIGTERM stop after the
current step (under DDP: at the next logging point, every ``print_every`` steps) with ``interrupted.pt``, which also holds the position in the
epoch: a resume from it continues at the next step with the same batches, lr and RNG states
(bit-identical on CPU, with any number of loader workers). A run deletes only the ``interrupted.pt`` it resumed
from, once past it. Non-finite losses are skipped and counted (stop after ``max_bad_steps`` in a
row). Precision (``--amp``): ``retinanet.engine.runtime.precision``. Schedule, optimizer, EMA and RNG
helpers are in ``retinanet.engine.train.optim``.

The steps do not wait for the device: losses, counts and the non-finite flag stay on it
(``StepMeter``) and are read every ``print_every`` steps and at the end of the epoch; a step with
a non-finite loss is skipped on the device (fused optimizers' ``found_inf``; fp16: the GradScaler).
Under DDP a step waits for the other ranks only in DDP's gradient all-reduce (``D.wrap_ddp``: no
buffer broadcast; ``train_step``: a rank's non-finite loss rides on the gradients; fp16 apart):
the ranks agree on a stop at the logging points (``tests/engine/train/test_ddp_syncs.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from retinanet.engine.runtime.checkpoint import (checkpoint_bytes, check_checkpoint_space, check_resumable, read_checkpoint,
                                                 save_checkpoint)
from retinanet.config import DataConfig, ModelConfig, TrainConfig, write_config_file
from retinanet.engine.evaluate.coco import METRIC_NAMES, coco_max_dets_note
from retinanet.engine.evaluate.loop import EvaluationCut, EvalResult, evaluate
from retinanet.engine.runtime import distributed as D
from retinanet.engine.runtime.precision import Precision
from retinanet.engine.runtime.run_dir import check_run_dir, hold_run_dir, resume_file, rewind_problem, same_file
from retinanet.engine.train.meter import EpochStats, MeterReading, StepMeter
from retinanet.engine.train.budget import Deadline, apply_fit, fit_run, refit_at, refit_run
from retinanet.engine.train.optim import describe_schedule, lr_factor, optimizer_step, resolve_warmup, seed_everything, set_lr
from retinanet.engine.train.report import (LOSSES, RunLog, StepProgress, divergence_warning, epoch_line, format_run_summary,
                                           make_summary, peak_memory_mb, tensorboard_epoch, tensorboard_step,
                                           tensorboard_writer_class, write_epoch_files)
from retinanet.engine.train.setup import (Run, RunState, check_train_config, checkpoint_state, close_loaders, log_data_notes,
                                          read_datasets, restore, settings_without_effect, setup, shared_images, val_tiling)
from retinanet.engine.train.resume import absolute_paths, changes_comment, check_resume
from retinanet.engine.train.start import resolve_start
from retinanet.data.check import too_small_for_anchors
from retinanet.data.progress import reading_progress
from retinanet.data.crop import crop_model_config, crop_rule, too_large_for_crop
from retinanet.data.workers import MAIN_GUARD_HINT, starting_worker
from retinanet.errors import RetinaNetError
from retinanet.files import ReadOnce, link_atomic
from retinanet.model import build_model, check_input_size


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, progress: bool = True,
          exist_ok: bool = False, resume_allow: Sequence[str] = (), once: ReadOnce | None = None) -> dict[str, Any]:
    """Train a RetinaNet; returns the summary dict (``report.make_summary``).

    Under torchrun this joins the process group (and leaves it at the end if it created it).
    ``progress=False``: no printing at all (``train.log`` is still written). ``exist_ok``: a new
    run may replace the files of another run in ``train_cfg.out`` (``check_run_dir``). ``once``:
    the ``--resume`` checkpoint as the caller read it for its configs, taken instead of a second read.
    """
    if starting_worker():  # a script without a __main__ guard, re-run in a loader worker
        raise RetinaNetError(f"train() called while a loader worker process was starting: {MAIN_GUARD_HINT}")
    own_group = not D.is_dist()
    try:
        with contextlib.ExitStack() as held:  # the run folder (from before its first check) and the loader workers, to the end
            return _train(model_cfg, data_cfg, train_cfg, progress, exist_ok, held, resume_allow, once)
    except RetinaNetError as err:
        if not D.is_dist():  # before the processes joined: each met it alike (the command line prints it once)
            err.every_rank = True
        raise
    finally:
        if own_group:
            D.cleanup()


def _train(model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig, progress: bool, exist_ok: bool,
           held: contextlib.ExitStack, resume_allow: Sequence[str], once: ReadOnce | None = None) -> dict[str, Any]:
    t_start = time.time()
    writer_cls = tensorboard_writer_class() if cfg.tensorboard else None  # every rank fails alike, before any work
    check_train_config(cfg)
    model_cfg, cfg, start_notes = resolve_start(model_cfg, cfg)  # refuses a start that makes no sense, before any work
    model_cfg, crop_note = crop_model_config(model_cfg, data_cfg)  # --crop PX: the input size is PX
    check_input_size(model_cfg.min_size, model_cfg.max_size)  # before the data is read (build_model checks it too)
    data_cfg = absolute_paths(data_cfg)  # config.yaml then repeats the run from any folder
    # rank 0 holds the run folder to the end (torchrun stops the other ranks when it cannot); then, on every rank:
    cleaned = held.enter_context(hold_run_dir(Path(cfg.out))) if D.launch_rank() == 0 else ""
    replacing = check_run_dir(Path(cfg.out), cfg.resume, exist_ok)  # before any work
    device = D.local_device(cfg.device)
    distributed = D.init_distributed(device)
    seed_everything(cfg.seed)
    with reading_progress(progress and D.is_main_process()) as tell:  # before train.log opens: on stderr alone
        data = read_datasets(data_cfg, model_cfg, tell)
    model_cfg = dataclasses.replace(model_cfg, num_classes=data.class_map.num_classes)
    resume_path = resume_file(cfg.resume) if cfg.resume else None  # once: a run folder's newest checkpoint
    resumed = read_checkpoint(resume_path, once.take(resume_path) if once else None) if resume_path else None
    if resumed is not None:
        check_resumable(resumed, resume_path)
    if resumed is not None and same_file(resume_path.parent, Path(cfg.out)) and not exist_ok:
        rewind = rewind_problem(resume_path, int(resumed["epoch"]) + 1, Path(cfg.out))
        if rewind:  # an older checkpoint of the folder (best.pt, a stale interrupted.pt) would set the run back
            raise RetinaNetError(rewind)
    if resumed is not None:  # a resume continues the run it names: its settings against this run's
        check = check_resume(resumed, resume_path, model_cfg, data_cfg, cfg, data.class_map.to_dict(),
                             D.get_world_size(), resume_allow)
        cfg = dataclasses.replace(cfg, **check.recorded)
    out, main = Path(cfg.out), D.is_main_process()
    model = build_model(**dataclasses.asdict(model_cfg)).to(device)
    if cfg.channels_last:  # before the optimizer, DDP and EMA see the parameters
        model.to(memory_format=torch.channels_last)
    if main:  # before any training: a disk that cannot hold the checkpoints would fail at the first one
        check_checkpoint_space(out, checkpoint_bytes(model, cfg.optimizer, cfg.momentum, cfg.ema))
        out.mkdir(parents=True, exist_ok=True)
    with RunLog(out / "train.log" if main else None, echo=progress and main) as log:
        log.line(f"retinanet train {time.strftime('%Y-%m-%d %H:%M:%S')}: {D.get_world_size()} process(es) on "
                 f"{device.type}, run dir {out}")
        log.line(f"data: {data.root} ({data.format}), {len(data.train)} train / {len(data.val)} val images, "
                 f"{len(data.class_map.ids)} classes; model {model_cfg.arch} ({model_cfg.num_classes} outputs), "
                 f"{model_cfg.min_size}-{model_cfg.max_size} px")
        log_data_notes(log, data)
        trained = data_cfg.train_difficult  # its difficult/crowd boxes are trained as objects: counted as such here too
        large = too_large_for_crop(data.train.records, data_cfg.crop, trained) if data_cfg.crop else ""
        small = too_small_for_anchors(data.train.records, data.train.image_sizes(), model_cfg.min_size, model_cfg.max_size,
                                      tuple(model_cfg.anchor_sizes), native=bool(data_cfg.crop), ignore_as_objects=trained)
        for note in (*settings_without_effect(model_cfg, data_cfg, cfg, data.format, D.get_world_size(), device.type),
                     shared_images(data), large, small):
            if note:  # said, not silently recorded in config.yaml as if it applied
                log.line(f"warning: {note}", warn=True)
        for note in start_notes:
            log.line(note)
        for note in (crop_note, data_cfg.crop and crop_rule(data_cfg.crop)):
            if note:
                log.line(note)
        chose = (f"resume: {cfg.resume} is a run folder; its interrupted.pt, written after its last.pt, continues the "
                 f"stopped epoch (--resume {Path(cfg.resume) / 'last.pt'} would start that epoch again)"
                 if resume_path and Path(cfg.resume).is_dir() and resume_path.name == "interrupted.pt" else "")
        stale = out / "interrupted.pt"
        stale_note = (f"{stale} is older than the checkpoint this run continues from ({resume_path.name}): a stop "
                      f"before it, stale; left alone (delete it to free {stale.stat().st_size / 2**20:.0f} MiB)"
                      if resume_path and stale.is_file() and not same_file(stale, resume_path)
                      and stale.stat().st_mtime_ns < resume_path.stat().st_mtime_ns else "")
        for line in (chose, replacing, cleaned, stale_note, *(check.lines if resumed is not None else ())):
            if line:
                log.line(line)
        run = setup(model, model_cfg, data_cfg, cfg, data, device, distributed, log, progress)
        held.callback(close_loaders, run)  # their workers end with the run, before its folder is released
        state = RunState()
        if resumed is not None:
            state = restore(run, resume_path, resumed)
            state.changes += [f"from epoch {state.epoch + 1}: {change}" for change in check.allowed]
            resumed = None  # not kept for the whole run
        if resume_path and same_file(resume_path, out / "interrupted.pt"):
            run.resumed_interrupted = out / "interrupted.pt"
        fit_time_budget(run, t_start)
        total = schedule_steps(run)
        to_train = state.epoch < run.cfg.epochs and state.iteration < total  # a finished run resumed: nothing scheduled
        if to_train:
            log.line(describe_schedule(run.cfg, run_warmup(run, state, total), total, total / len(run.train_loader))
                     + (" (the run's warmup, kept on resume: not resolved again from a changed schedule)"
                        if state.warmup_kept else ""))
        if main and (to_train or not (out / "config.yaml").is_file()):  # nothing to train: the run's record stays
            data.class_map.save(out / "classes.json")
            write_config_file(out / "config.yaml", run.config, comment=changes_comment(state.changes))
        if run.deadline is not None:
            run.deadline.begin_training()
        with _tensorboard(writer_cls, out / "tensorboard" if main else None) as run.tb, run.stop:
            if not main:  # from here an error may be this rank's own (its shard's images, its device): rank 0 cannot log it
                log.errors_to = out / "train.log"
            stopped = run_epochs(run, state)
        summary = make_summary(out, state.history, state.best_ap, state.best_epoch, stopped, time.time() - t_start,
                               run.world, data_cfg, data.root, tensorboard=writer_cls is not None and main,
                               reinitialised=run.reinitialised, resumed_at=state.resumed_at)
        summary["decode_skipped"] = sorted(run.decode_skips)
        summary["caps"] = list(run.last_caps)
        log.line(format_run_summary(summary), echo=False)
        return summary


def run_warmup(run: Run, state: RunState, total: int) -> int:
    """The run's warmup steps for a schedule of ``total`` steps (``resolve_warmup``), or, for a
    resumed run, the warmup it had: resuming with more epochs neither warms up again (lr back to
    ``warmup_factor`` at a step long past it) nor, mid-warmup, jumps to a shorter one's peak.
    Kept in ``state.warmup`` (saved)."""
    if not state.warmup_kept:
        state.warmup = resolve_warmup(run.cfg, total)
    return state.warmup


def schedule_steps(run: Run) -> int:
    """The run's training steps: ``max_steps`` (a ``--time`` fit) or every step of its epochs."""
    return run.cfg.max_steps or run.cfg.epochs * len(run.train_loader)


def fit_time_budget(run: Run, started: float) -> None:
    """``--time``: a new run measures its speed and fits its epochs and evaluations to the budget
    (``retinanet.engine.train.budget``), stored in ``run.cfg`` and the saved config, and gets a
    deadline; a resumed run keeps the schedule it fitted, without a deadline."""
    cfg = run.cfg
    if cfg.time is None:
        return
    if cfg.time_fitted:
        run.log.line(f"time budget {cfg.time:g} min: the schedule was fitted when the run started ({cfg.max_steps} steps "
                     f"in {cfg.epochs} epoch(s), evaluating every {cfg.eval_every}); it is kept (a resumed run, or a config "
                     "saved by a --time run) and runs to its end without a deadline (--time MINUTES fits a new run again)")
        return
    if cfg.resume:  # a run resumed from a checkpoint of a run without --time: nothing was fitted
        raise RetinaNetError("--time with --resume: the checkpoint's run did not fit a schedule to a time budget; "
                             "resume without --time")
    fit = fit_run(run, lambda images, targets: train_step(run.net, run.optimizer, images, targets, cfg, run.device,
                                                           run.scaler, run.precision), started)
    run.log.line(fit.describe(cfg) + (f" (the config's {cfg.epochs} epochs are replaced)" if cfg.epochs != fit.epochs else ""))
    run.cfg = apply_fit(cfg, fit)
    run.config["train"] |= {"epochs": run.cfg.epochs, "eval_every": run.cfg.eval_every, "max_steps": run.cfg.max_steps,
                            "time_fitted": True}
    run.deadline = Deadline(started, fit.budget_s, fit.eval_s, refit_at=refit_at(fit))


def refit_time_budget(run: Run, state: RunState) -> None:
    """The once-only refit of a ``--time`` run's steps after its step ``state.iteration``
    (``budget.refit_run``): ``run.cfg``, the checkpoints' config and ``config.yaml`` get the new
    steps and epochs, and the log says why."""
    refit = refit_run(run, state.iteration)
    if refit is None:
        return
    total, line = refit
    run.cfg = dataclasses.replace(run.cfg, max_steps=total, epochs=math.ceil(total / len(run.train_loader)))
    run.config["train"] |= {"epochs": run.cfg.epochs, "max_steps": run.cfg.max_steps}
    if run.main:
        write_config_file(run.out / "config.yaml", run.config, comment=changes_comment(state.changes))
    run.log.line(line)


@contextlib.contextmanager
def _tensorboard(writer_cls, path: Path | None) -> Iterator[Any]:
    """A SummaryWriter on ``path`` (None: no writer), closed at the end."""
    tb = writer_cls(str(path)) if writer_cls is not None and path is not None else None
    try:
        yield tb
    finally:
        if tb is not None:
            tb.close()


# --- the epochs -----------------------------------------------------------------------------------


def run_epochs(run: Run, state: RunState) -> str:
    """Epochs ``state.epoch`` .. ``cfg.epochs - 1``; returns how the run ended: "finished" or the
    name of the signal that stopped it."""
    epoch = state.epoch
    while epoch < run.cfg.epochs:  # a --time run's refit may change the epochs part way
        stats = train_one_epoch(run, state, epoch)
        if D.any_rank(run.stop.signal is not None):
            return stop_run(run, state, epoch, stats)
        end_epoch(run, state, epoch, stats, last=state.last_epoch)
        if run.main and run.resumed_interrupted is not None:  # last.pt is past it now
            run.resumed_interrupted.unlink(missing_ok=True)
            run.resumed_interrupted = None
        if state.last_epoch:  # max_steps reached or the time budget's deadline passed
            break
        if D.any_rank(run.stop.signal is not None):  # arrived during the evaluation: last.pt ends the epoch
            reason = run.stop.signal or "signal on another rank"
            run.log.line(f"stopped by {reason} after epoch {epoch + 1}; checkpoint {run.out / 'last.pt'}")
            D.barrier()
            return reason
        epoch += 1
    D.barrier()  # every rank leaves together, after rank 0's last writes
    return "finished"


def train_one_epoch(run: Run, state: RunState, epoch: int) -> EpochStats:
    """The steps of (0-based) ``epoch``, each at the scheduled lr, from step ``state.step`` (0, or
    where an interrupted run stopped: the batches before it are skipped unloaded); stops after the
    step at which a signal arrived (under DDP: at the next logging point, when every rank checks).

    Step results stay on the device (``StepMeter``); every ``print_every`` steps and at the last
    they are read once: the progress line, TensorBoard, the non-finite streak check.
    """
    cfg, loader = run.cfg, run.train_loader
    start, stats = state.step, state.epoch_stats or EpochStats()
    state.step, state.epoch_stats = 0, None
    loader.batch_sampler.set_epoch(epoch, start=start)
    run.net.train()
    t0, steps = time.time(), len(loader)
    total = schedule_steps(run)
    warmup, schedule_epochs = run_warmup(run, state, total), total / steps
    meter = StepMeter(run.device, LOSSES, state.bad_in_a_row, cfg.max_bad_steps, start=stats)
    seen = MeterReading(dict(stats.sums), stats.steps, stats.images, stats.skipped, state.bad_in_a_row, -1, {})
    with StepProgress(run.log, steps, f"epoch {epoch + 1}/{cfg.epochs}", cfg.print_every, show=run.progress,
                      start=start, loss_name="loss" if D.get_world_size() == 1 else "rank-0 loss") as bar:
        for i, (images, targets) in enumerate(loader, start):
            run.decode_pending += [m for t in targets for m in t.get("skipped", ())]  # logged at the epoch's end
            lr = set_lr(run.optimizer, cfg.lr * lr_factor(state.iteration, epoch + i / steps, cfg, schedule_epochs, warmup))
            step = train_step(run.net, run.optimizer, images, targets, cfg, run.device, run.scaler, run.precision)
            state.iteration += 1
            if run.deadline is not None and state.iteration == run.deadline.refit_at:
                refit_time_budget(run, state)
                cfg, total = run.cfg, schedule_steps(run)
                warmup, schedule_epochs = run_warmup(run, state, total), total / steps
            meter.add(step, len(images), i)
            if run.ema is not None:  # a skipped step left the weights as they were
                run.ema.update_parameters(run.model)
            due = bar.due(i)
            stop = (due or not D.is_dist()) and D.any_rank(run.stop.signal is not None)  # all ranks: same i
            late = run.deadline is not None and (due or not D.is_dist()) and D.any_rank(run.deadline.passed())
            end = late or state.iteration >= total  # the same step on every rank
            loss = None
            if due or stop or end:  # a stop: the sums of every step done, for interrupted.pt (or the last epoch's row)
                seen, loss = report_steps(run, state, stats, meter.read(), seen, lr, epoch)
            bar.update(i, lr, loss)
            if stop:
                break
            if end:
                state.last_epoch = True
                if late and state.iteration < total:
                    run.log.line(f"time budget: training stops after step {i + 1}/{steps} of epoch {epoch + 1}/{cfg.epochs} "
                                 "(slower than measured), to evaluate and save best.pt within the budget")
                break
    stats.seconds += time.time() - t0
    return stats


def log_decode_skips(run: Run, messages: list[str]) -> None:
    """Images the loader skipped as undecodable (``--skip-bad``; ``target["skipped"]``), each logged
    once in train.log and kept in ``run.decode_skips`` for the summary (the workers' own warnings
    reach only the terminal)."""
    for msg in messages:
        if msg not in run.decode_skips:
            run.decode_skips.add(msg)
            run.log.line(f"data: skipped while loading: {msg}", warn=True)


def flush_decode_skips(run: Run) -> None:
    """The training images every process skipped since the last call (``run.decode_pending``),
    gathered (every rank calls it: at an epoch's end, at a stop) and logged by the main process."""
    gathered = D.all_gather_object(sorted(set(run.decode_pending)))
    run.decode_pending = []
    log_decode_skips(run, sorted({m for part in gathered for m in part}))


def train_step(model, optimizer, images, targets, cfg: TrainConfig, device, scaler,
               precision: Precision) -> dict[str, torch.Tensor]:
    """One optimisation step, queued on the device without waiting for it.

    Returns:
        detached 0-dim device tensors: each loss, ``"loss"`` (their sum) and ``"finite"`` (bool:
        the loss was finite on every rank, and so was the gradient norm; with fp16 the scaler
        also skips steps with non-finite gradients). When ``"finite"`` is False no rank changed
        its weights or optimizer state.

    Under DDP the step's only collective is DDP's gradient all-reduce (``D.wrap_ddp``; the CPU
    audit: ``tests/engine/train/test_ddp_syncs.py``): a rank whose loss is not finite makes its
    gradients NaN (``loss * nan``), so the all-reduced gradients, and their norm, are not finite on
    every rank, and every rank skips the step. With fp16 the GradScaler skips steps whose gradients
    overflowed without counting them as non-finite, so there the loss is all-reduced to agree on it.
    """
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    with precision.autocast(device.type):
        losses = model(images, targets)  # fp32: the model leaves autocast for the loss
    loss = sum(losses.values())
    if scaler.is_enabled():  # fp16: a collective per step (named in the DDP audit)
        finite = torch.isfinite(D.all_reduce_mean(loss.detach()))
    else:
        finite = torch.isfinite(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    # DDP: x 1.0 (the same gradients, bit for bit), or x NaN on a rank whose loss is not finite
    backward = loss * torch.where(finite, 1.0, float("nan")) if D.is_dist() and not scaler.is_enabled() else loss
    scaler.scale(backward).backward()
    if scaler.is_enabled():  # fp16: the scaler itself skips steps whose gradients are not finite
        if cfg.clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    else:  # a finite loss can still give non-finite gradients (e.g. a bf16 kernel's overflow): skip those too
        params = [p for p in model.parameters() if p.grad is not None]
        # the same on every rank after DDP: not finite on every rank when one rank's loss was not
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        finite = finite & torch.isfinite(norm)
        if cfg.clip_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.clip_grad_norm, norm)
    optimizer_step(optimizer, scaler, finite)
    return {k: v.detach() for k, v in losses.items()} | {"loss": loss.detach(), "finite": finite}


def report_steps(run: Run, state: RunState, stats: EpochStats, now: MeterReading, seen: MeterReading, lr: float,
                 epoch: int) -> tuple[MeterReading, float | None]:
    """At a logging point: the epoch's counts into ``stats`` and ``state``, TensorBoard scalars
    (the mean losses of the finite steps since the last reading ``seen``). Returns ``(now, that
    mean total loss or None)``.

    Raises:
        RetinaNetError: ``max_bad_steps`` consecutive non-finite losses.
    """
    stats.sums, stats.steps, stats.images, stats.skipped = dict(now.sums), now.steps, now.images, now.skipped
    state.bad_in_a_row = now.streak
    if now.limit_step >= 0:
        err = RetinaNetError(f"{run.cfg.max_bad_steps} consecutive non-finite losses (last at epoch {epoch + 1}, step "
                             f"{now.limit_step + 1}); lower --lr or use --clip-grad")
        err.every_rank = True  # the loss's finiteness is agreed across ranks (train_step): every rank stops alike
        raise err
    n = now.steps - seen.steps
    if n == 0:
        return now, None
    window = {k: (v - seen.sums.get(k, 0.0)) / n for k, v in now.sums.items()}
    if run.tb is not None:
        tensorboard_step(run.tb, window, lr, state.iteration)
    return now, window["loss"]


def stop_run(run: Run, state: RunState, epoch: int, stats: EpochStats) -> str:
    """After a signal in (0-based) ``epoch``: ``interrupted.pt`` and a log line; returns the
    signal's name. The checkpoint holds the state after the step just done (weights, optimizer,
    EMA, RNG, global step) with ``epoch`` = the last finished epoch, and ``epoch_progress``: the
    steps done in this epoch and their sums, from which ``restore`` continues."""
    reason = run.stop.signal or "signal on another rank"
    flush_decode_skips(run)  # every rank is here
    done = stats.steps + stats.skipped
    # each rank restores its own sums ("rank_sums"), so that the resumed epoch's mean loss is the
    # uninterrupted run's to the last bit (restored as their mean, each rank's sum/steps rounded apart:
    # the 16th digit differed); "sums", their mean over ranks, serves a resume with another process
    # count (rank 0's alone would stand for every rank's share). Every rank is here: the collectives are safe
    keys = sorted(stats.sums)
    sums = dict(zip(keys, D.all_reduce_mean(torch.tensor([stats.sums[k] for k in keys], dtype=torch.float64,
                                                          device=run.device)).tolist())) if keys else {}
    rank_sums = D.all_gather_object(dict(stats.sums))
    if run.main:
        progress = {"epoch": epoch, "step": done, "steps": len(run.train_loader), "sums": sums, "rank_sums": rank_sums,
                    "finite_steps": stats.steps, "images": stats.images, "skipped": stats.skipped,
                    "seconds": stats.seconds, "bad_in_a_row": state.bad_in_a_row}
        save_checkpoint(checkpoint_state(run, state, epoch - 1) | {"epoch_progress": progress}, run.out / "interrupted.pt")
    run.log.line(f"stopped by {reason} in epoch {epoch + 1} after step {done}/{len(run.train_loader)}; "
                 f"checkpoint {run.out / 'interrupted.pt'}")
    return reason


# --- end of an epoch ------------------------------------------------------------------------------


def end_epoch(run: Run, state: RunState, epoch: int, stats: EpochStats, last: bool = False) -> None:
    """Evaluate (on evaluation epochs, the last one, or ``last``: a run that stops early at its
    time budget), add the epoch's row to the history, save ``last.pt`` (and ``best.pt`` when AP
    improved), rewrite the report files, log the epoch's line."""
    cfg = run.cfg
    flush_decode_skips(run)
    # DDP: rank 0's BatchNorm statistics on every rank (each rank updated its own: D.wrap_ddp), as saved
    for module in (run.model, *([run.ema.module] if run.ema is not None else [])):
        D.broadcast_module(module, buffers_only=True)
    check_epoch_trained(run, epoch, stats)
    row = {"epoch": epoch + 1, **epoch_losses(stats.sums, stats.steps, run.device), "lr": run.optimizer.param_groups[0]["lr"]}
    t_eval = time.time()
    due = last or (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    try:
        final = last or epoch + 1 == cfg.epochs  # the run's last evaluation: a resume would not come back to it
        result = evaluate_epoch(run, cuttable=not final) if due else None
    except EvaluationCut:  # a stop signal: the trained epoch is saved below, unscored; run_epochs then stops
        result = None
        run.log.line(f"the evaluation of epoch {epoch + 1} was cut short by {run.stop.signal or 'a signal on another rank'}: "
                     "the epoch is saved unscored")
    except RetinaNetError:  # a bad val image: the trained epoch is kept, the evaluation is not
        if run.main:
            save_checkpoint(checkpoint_state(run, state, epoch), run.out / "last.pt")
            run.log.line(f"the evaluation after epoch {epoch + 1} failed: the epoch's weights are in {run.out / 'last.pt'} "
                         "(--resume continues with the next epoch)", warn=True)
        raise
    if result is not None and run.deadline is not None:
        run.deadline.evaluated(time.time() - t_eval)
    row |= {**{k: result.metrics[k] if result else None for k in METRIC_NAMES}, "val_images": result.num_images if result else None,
            "time_s": stats.seconds, "eval_s": time.time() - t_eval if result else None,
            "images_per_s": stats.images * run.world / max(stats.seconds, 1e-9), "peak_mem_mb": peak_memory_mb(run.device),
            "skipped_steps": stats.skipped}
    state.history.append(row)
    improved = result is not None and result.metrics["AP"] > state.best_ap
    if improved:
        state.best_ap, state.best_epoch = result.metrics["AP"], epoch + 1
    if run.main:
        ck = checkpoint_state(run, state, epoch)
        save_checkpoint(ck, run.out / "last.pt")
        if improved:  # the same checkpoint: best.pt becomes that file too (its bytes are not written twice)
            link_atomic(run.out / "last.pt", run.out / "best.pt")
        write_epoch_files(run.out, state.history, state.best_ap, state.best_epoch)
        if run.tb is not None:
            tensorboard_epoch(run.tb, row)
    run.log.line(epoch_line(row, cfg.epochs, improved))
    if result is not None:
        log_decode_skips(run, result.skipped)
    if result is not None:
        log_caps(run, result)
    warning = divergence_warning(state.history, cfg.lr, cfg.clip_grad_norm)
    if warning:
        run.log.line(warning)


CUT_SCORE_FACTOR = 2.0  # a cap is worth raising when what it cut can score this many times the model's score_thresh


def log_caps(run: Run, result: EvalResult) -> None:
    """The caps an evaluation reached: ``detections_per_img`` (``result.at_cap``) and a level's
    ``topk_candidates`` (``result.at_topk``). train.log counts them at every evaluation; the console
    hears each kind once a run (and once more should the advice change); ``run.last_caps`` keeps
    the last evaluation's for the summary.

    Raising a cap is advised only where what it cut can score at least ``CUT_SCORE_FACTOR`` times
    the model's ``score_thresh`` (the last detection an image kept at the cap scores that much):
    otherwise the cut boxes are low-score ones, as an untrained model gives by the hundred, and a
    larger cap would keep more of them, not more objects.
    """
    thresh = float(run.model.config.score_thresh)
    floor = CUT_SCORE_FACTOR * thresh
    where = "tile(s)" if run.data_cfg.crop else "val image(s)"
    run.last_caps = []
    caps = [("max_dets", result.at_cap, result.at_cap_score, f"reached the model's detections_per_img {result.max_dets}",
             ": the detections beyond it were cut", "--max-dets"),
            ("topk_candidates", result.at_topk, result.at_topk_score,
             f"stayed below detections_per_img {result.max_dets} while an FPN level had more candidates above score_thresh "
             f"than the {result.topk_candidates} it keeps for NMS", ": the others were never considered", "--topk-candidates")]
    for kind, count, score, what, cut, option in caps:
        if not count:
            continue
        worth = score >= floor
        if worth:
            advice = (f"they scored up to {score:.3g}, at least {CUT_SCORE_FACTOR:g}x the model's score_thresh {thresh:g}: "
                      f"train {option} N keeps them (`retinanet eval {option} N` scores this checkpoint with more)")
        else:
            advice = (f"they scored at most {score:.3g}, below {CUT_SCORE_FACTOR:g}x the model's score_thresh {thresh:g}: "
                      "low-score boxes, as a model early in training gives; a larger cap would keep more of those, "
                      "not more objects")
        first = (kind, worth) not in run.caps_said
        run.caps_said.add((kind, worth))
        note = " (said once a run; train.log counts it at every evaluation)" if first else ""
        run.log.line(f"warning: {count} {where} {what}{cut}; {advice}{note}", echo=first, warn=True)
        run.last_caps.append(f"{count} {where} {what} in the last evaluation; what was cut scored at most {score:.3g}"
                             + (f": train {option} N keeps it" if worth else ": low-score boxes (train.log says more)"))
    if result.over_coco_max_dets[0] and ("coco_max_dets", True) not in run.caps_said:  # a property of the val set: once
        run.caps_said.add(("coco_max_dets", True))
        run.log.line(f"warning: {coco_max_dets_note(*result.over_coco_max_dets)}; best.pt is chosen by that AP", warn=True)


def check_epoch_trained(run: Run, epoch: int, stats: EpochStats) -> None:
    """Stop a diverged run before its evaluation and checkpoint: an epoch all of whose steps had a
    non-finite loss trained nothing, and weights (or BatchNorm statistics: a skipped step's forward
    still updates them) that are no longer finite would be saved as last.pt / best.pt. The earlier
    checkpoints stay as they are.

    Raises:
        RetinaNetError: naming the epoch, what is wrong, and what to do.
    """
    found = [p for p in D.all_gather_object(epoch_problem(run, epoch, stats)) if p]  # every rank (its losses, its EMA)
    if found:  # every rank stops together, with the first finding (rank 0's log has it whichever rank found it)
        err = RetinaNetError(found[0])
        err.every_rank = True
        raise err


def epoch_problem(run: Run, epoch: int, stats: EpochStats) -> str:
    """``check_epoch_trained``'s finding in this process: "" when the epoch is sound."""
    keep = (f"{run.out / 'last.pt'} still holds epoch {epoch}" if epoch else "no checkpoint was written")
    advice = f"{keep}; lower --lr or use --clip-grad (with --resume-allow lr clip_grad_norm to go on from it)"
    if stats.skipped and not stats.steps:
        return (f"epoch {epoch + 1} trained nothing: all its {stats.skipped} step(s) had a non-finite loss "
                f"(the run diverged); {advice}")
    tensors = {**run.model.state_dict(), **({f"ema.{k}": v for k, v in run.ema.module.state_dict().items()}
                                            if run.ema is not None else {})}
    floats = {name: t for name, t in tensors.items() if t.is_floating_point()}
    finite = torch.stack([torch.isfinite(t).all() for t in floats.values()]).tolist() if floats else []  # one sync
    bad = [name for name, ok in zip(floats, finite) if not ok]
    if bad:
        return (f"after epoch {epoch + 1} {len(bad)} weight tensor(s) hold non-finite values ({', '.join(bad[:3])}"
                f"{' ...' if len(bad) > 3 else ''}; the steps skipped for a non-finite loss still update "
                f"BatchNorm statistics): the run diverged; {advice}")
    return ""


def evaluate_epoch(run: Run, cuttable: bool = True) -> EvalResult:
    """COCO metrics of the EMA (else the model) on the val split; every rank evaluates exactly
    the weights rank 0 saves. ``cuttable``: a stop signal cuts it short (``EvaluationCut``); the
    run's final evaluation is not (no resume would score it)."""
    model = run.ema.module if run.ema is not None else run.model
    D.broadcast_module(model)
    return evaluate(model, run.val_loader, device=run.device, class_map=run.data.class_map, amp=run.precision.mode,
                    backend=run.cfg.coco_backend, progress=run.progress and run.main and sys.stderr.isatty(), tile=val_tiling(run.data_cfg, run.cfg.batch_size),
                    stop=(lambda: run.stop.signal is not None) if cuttable else None)


def epoch_losses(sums: dict[str, float], steps: int, device: torch.device) -> dict[str, float | None]:
    """Mean losses of the epoch over every rank (None when every step was skipped)."""
    keys = list(dict.fromkeys([*LOSSES, *sums]))
    if steps == 0:  # the same on every rank: skipping is agreed (train_step: the all-reduced gradients)
        return {k: None for k in keys}
    mean = D.all_reduce_mean(torch.tensor([sums.get(k, 0.0) / steps for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, mean.tolist()))
