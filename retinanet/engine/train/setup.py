"""Set-up of a training run: the ``Run`` the epoch functions use (``setup``), its ``RunState``,
and the round trip of that state through a checkpoint (``checkpoint_state`` out, ``restore`` in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import Datasets, build_datasets, build_loader
from retinanet.data.progress import ReadProgress, no_progress
from retinanet.engine.evaluate.coco import BACKENDS, check_backend
from retinanet.engine.runtime import distributed as D
from retinanet.engine.runtime.checkpoint import load_training_state, read_checkpoint, training_checkpoint
from retinanet.engine.runtime.precision import Precision, normalize_mode, resolve_precision
from retinanet.engine.train.meter import EpochStats
from retinanet.engine.train.optim import build_ema, build_optimizer, rng_state, set_rng_state
from retinanet.engine.train.report import RunLog
from retinanet.engine.train.start import load_start
from retinanet.errors import RetinaNetError
from retinanet.model.tiling import TileOptions, trained_tiling
from retinanet.model.weights import frozen_bn_eps_of


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after every step and after each epoch's
    evaluation. As a context manager it installs itself for both signals and restores the
    previous handlers on exit (outside the main thread, where Python allows no handlers, it is a
    flag nobody sets). The first signal is acknowledged at once on stderr (``announce``: the main
    process only); a second one raises ``KeyboardInterrupt``: stop now, without the checkpoint."""

    def __init__(self, announce: bool = True, distributed: bool = False):
        self.signal: str | None = None
        self.announce = announce
        self.distributed = distributed
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    def __call__(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a loader worker forked with this handler: the run's process decides
            return
        if self.signal is not None:  # asked twice: the user wants out now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        if self.announce:  # os.write: safe in a signal handler, where print could re-enter a busy stream
            when = ("at the next logging point (every --print-every steps: every process stops at the same step)"
                    if self.distributed else "after the current step")
            os.write(2, (f"\nretinanet train: {self.signal}: stopping {when}, or when the evaluation under way is cut "
                         "short, with a checkpoint to resume from; again to stop at once (nothing more saved)\n").encode())

    def __enter__(self) -> StopFlag:
        self._pid = os.getpid()
        with contextlib.suppress(ValueError):  # not the main thread
            self._old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


@dataclass
class RunState:
    """What carries from one epoch to the next; all but ``bad_in_a_row`` is in the checkpoint."""

    epoch: int = 0  # the next epoch to run, 0-based
    iteration: int = 0  # optimisation steps so far, over all epochs: the lr schedule's clock
    best_ap: float = -1.0
    best_epoch: int = -1  # 1-based epoch of best_ap; -1 = none evaluated yet
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (results.csv)
    bad_in_a_row: int = 0  # consecutive non-finite losses (as of the last read of the step meter)
    step: int = 0  # batches of epoch ``epoch`` already done (resumed mid-epoch from interrupted.pt)
    epoch_stats: EpochStats | None = None  # and their sums
    last_epoch: bool = False  # the epoch in progress is the last: max_steps reached or the --time deadline passed
    changes: list[str] = field(default_factory=list)  # settings changed on resume by --resume-allow, with the epoch
    warmup: int | None = None  # the warmup steps resolved for the schedule (saved); a resume keeps the run's
    warmup_kept: bool = False  # resumed: the run's warmup stays, whatever a new --epochs would resolve to
    resumed_at: str | None = None  # resumed: where this process took the run up ("epoch 2", "epoch 1 at step 9/24")


@dataclass
class Run:
    """The parts of a training run that the epoch functions use (built by ``setup``)."""

    cfg: TrainConfig
    data_cfg: DataConfig
    config: dict[str, dict[str, Any]]  # the resolved model/data/train configs, as saved
    data: Datasets
    model: torch.nn.Module  # the bare model: saved, and evaluated when there is no EMA
    net: torch.nn.Module  # what the steps run: DistributedDataParallel(model) or model itself
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    precision: Precision  # the autocast dtype of the steps and evaluations
    ema: torch.optim.swa_utils.AveragedModel | None
    train_loader: Any
    val_loader: Any
    device: torch.device
    out: Path
    log: RunLog
    progress: bool
    reinitialised: list[str]
    main: bool = field(default_factory=D.is_main_process)
    world: int = field(default_factory=D.get_world_size)
    stop: StopFlag = field(default_factory=lambda: StopFlag(announce=D.is_main_process(), distributed=D.is_dist()))
    tb: Any = None  # a TensorBoard SummaryWriter (main process, --tensorboard)
    resumed_interrupted: Path | None = None  # out/interrupted.pt when resumed from it: deleted once passed
    decode_skips: set[str] = field(default_factory=set)  # images skipped as undecodable (--skip-bad), as logged
    decode_pending: list[str] = field(default_factory=list)  # this process's skips since the last gather
    deadline: Any = None  # ``retinanet.engine.train.budget.Deadline`` of a ``--time`` run (None: no deadline)
    caps_said: set[tuple[str, bool]] = field(default_factory=set)  # cap warnings printed (``loop.log_caps``): once a run
    last_caps: list[str] = field(default_factory=list)  # the caps the last evaluation reached, for the summary


# the settings that take one of a few words (a config file's typo, `scheduler: cosinus`, ran as multistep)
TRAIN_CHOICES = {"optimizer": ("sgd", "adamw"), "scheduler": ("multistep", "cosine"), "coco_backend": BACKENDS}


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ``RetinaNetError`` for counts that must be at least 1 and words not among ``TRAIN_CHOICES``."""
    for name, allowed in TRAIN_CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise RetinaNetError(f"{name} {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    check_backend(cfg.coco_backend)  # installed
    for name in ("epochs", "batch_size", "eval_every", "print_every", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            raise RetinaNetError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.time is not None and not cfg.time > 0:
        raise RetinaNetError(f"time must be > 0 minutes, got {cfg.time:g}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise RetinaNetError(f"max_steps must be >= 1, got {cfg.max_steps}")
    normalize_mode(cfg.amp)


def read_datasets(data_cfg: DataConfig, model_cfg: ModelConfig, progress: ReadProgress = no_progress) -> Datasets:
    """The train and val datasets at the model's input size; an empty val split is an error. What
    reading left out or changed is not issued as warnings: ``log_data_notes`` logs it. ``progress``:
    see ``read_records``."""
    # --crop: the model sees native-resolution crops, so its evaluations tile native-resolution images (val_tiling)
    data = build_datasets(data_cfg, min_size=model_cfg.min_size, max_size=model_cfg.max_size, warn=False,  # logged
                          resize_val=data_cfg.crop is None, progress=progress)
    if len(data.val) == 0:
        raise RetinaNetError(f"{data.root}: the validation split {data_cfg.val_split!r} has no images "
                             "(training evaluates on it; give --val-split, or --val-fraction > 0 for a flat folder)")
    return data


def setup(model: torch.nn.Module, model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig, data: Datasets,
          device: torch.device, distributed: bool, log: RunLog, progress: bool) -> Run:
    """Start weights (``retinanet.engine.train.start``, not on resume), SyncBN/DDP, precision, optimizer,
    scaler, EMA, loaders. The saved config holds the precision that runs (``amp``: bf16, fp16 or off)."""
    reinit: list[str] = []
    if not cfg.resume:
        cfg, reinit, line = load_start(model, cfg, progress)  # cfg records the file's sha256
        # the FrozenBatchNorm eps the start file implies (torchvision's v1 COCO file: 0), recorded once
        model_cfg = dataclasses.replace(model_cfg, frozen_bn_eps=frozen_bn_eps_of(model, model_cfg.frozen_bn_eps))
        model.config = model_cfg
        log.line(line + (f"; re-initialised {len(reinit)} tensor(s) for {model_cfg.num_classes} outputs: "
                         f"{', '.join(reinit)}" if reinit else ""))
    if cfg.sync_bn and distributed and device.type == "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only (said)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = D.wrap_ddp(model, device) if distributed else model  # no per-step buffer broadcast
    precision = resolve_precision(cfg.amp, device)
    log.line(f"precision: {precision.describe()}")
    optimizer = build_optimizer(model, cfg, fused=device.type in ("cpu", "cuda"))  # fused: skips on the device
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaling)
    ema = build_ema(model, cfg)
    log.line(training_line(data_cfg, cfg, D.get_world_size()))
    pin = device.type == "cuda"  # page-locked batches: the non_blocking copies to the GPU are asynchronous
    train_loader = build_loader(data.train, batch_size=cfg.batch_size, workers=data_cfg.workers, train=True,
                                distributed=distributed, seed=cfg.seed, aspect_grouping=data_cfg.aspect_grouping,
                                pin_memory=pin)
    # one val loader for the run: its workers start once and serve every evaluation (``close_loaders`` ends them)
    val_loader = build_loader(data.val, batch_size=cfg.batch_size, workers=data_cfg.workers, train=False,
                              distributed=distributed, pin_memory=pin, keep_workers=True)
    config = {"model": dataclasses.asdict(model_cfg), "data": dataclasses.asdict(data_cfg),
              "train": dataclasses.asdict(cfg) | {"amp": precision.mode}}
    return Run(cfg=cfg, data_cfg=data_cfg, config=config, data=data, model=model, net=net, optimizer=optimizer,
               scaler=scaler, precision=precision, ema=ema, train_loader=train_loader, val_loader=val_loader, device=device, out=Path(cfg.out),
               log=log, progress=progress, reinitialised=reinit)


def close_loaders(run: Run) -> None:
    """End the loader workers that live across epochs (training) and evaluations (val): at the end
    of the run however it ends (finished, an error, Ctrl-C), not when the garbage collector or the
    interpreter's exit gets to them."""
    for loader in (run.train_loader, run.val_loader):
        if hasattr(loader, "close"):
            loader.close()


def restore(run: Run, path: Path, ck: dict[str, Any] | None = None) -> RunState:
    """Load model, optimizer, scaler, EMA and RNG states from checkpoint ``path`` (``ck``: its
    content, already read); its run state (with the position in the epoch and its sums for an
    ``interrupted.pt``).

    Raises:
        RetinaNetError: an ``interrupted.pt`` of an epoch with another number of steps (batch size
            or data changed): its position cannot be continued.
    """
    ck = read_checkpoint(path) if ck is None else ck
    load_training_state(ck, run.model, run.optimizer, run.scaler, run.ema)
    state = RunState(epoch=ck["epoch"] + 1, iteration=ck["iteration"], best_ap=ck["best_ap"], best_epoch=ck["best_epoch"],
                     history=list(ck.get("history", [])), changes=list(ck.get("changes", [])))
    if ck.get("warmup") is not None:  # another --epochs would resolve another warmup: a jump in lr, or a second warmup
        state.warmup, state.warmup_kept = int(ck["warmup"]), True
    if ck.get("epoch_progress"):
        resume_mid_epoch(run, state, ck["epoch_progress"], path)
    set_rng_state(ck["rng"])
    n = len(run.train_loader)  # stopped after an epoch's last step: its evaluation and checkpoint are still to come
    where = f" at step {state.step + 1}/{n}" if 0 < state.step < n else f" after its last step ({n}/{n})" if state.step else ""
    cfg = run.cfg
    state.resumed_at = f"epoch {state.epoch + 1}{where}"
    if state.epoch >= cfg.epochs or (cfg.max_steps is not None and state.iteration >= cfg.max_steps):
        state.resumed_at = "its end (nothing to train)"
        run.log.line(f"resumed from {path}: the run already finished its {state.epoch} epoch(s) (global step "
                     f"{state.iteration}), so there is nothing to train; to train on, give a larger --epochs"
                     + (" with --resume-allow epochs (a cosine schedule is redrawn over them)" if cfg.scheduler == "cosine"
                        else ""), warn=True)
    else:
        run.log.line(f"resumed from {path}: epoch {state.epoch + 1}{where} (global step {state.iteration})")
    return state


def resume_mid_epoch(run: Run, state: RunState, progress: dict[str, Any], path: Path) -> None:
    """Put the position and sums of an interrupted epoch (``stop_run``) into ``state``."""
    run.train_loader.batch_sampler.set_epoch(progress["epoch"])  # the epoch's length (DDP shards depend on it)
    steps = len(run.train_loader)
    if progress["epoch"] != state.epoch or progress["steps"] != steps:
        raise RetinaNetError(f"{path}: stopped at step {progress['step']} of {progress['steps']} in epoch "
                             f"{progress['epoch'] + 1}, but this run has {steps} steps per epoch (batch size, processes "
                             "or data differ); resume with the same settings, or from last.pt")
    state.step, state.bad_in_a_row = progress["step"], progress["bad_in_a_row"]
    # this rank's own sums (the same processes: the uninterrupted run's sums to the last bit), else the
    # mean over the ranks that wrote it (another process count, or a checkpoint from before rank_sums)
    own = progress.get("rank_sums") or []
    sums = own[D.get_rank()] if len(own) == run.world else progress["sums"]
    state.epoch_stats = EpochStats(sums=dict(sums), steps=progress["finite_steps"], images=progress["images"],
                                   skipped=progress["skipped"], seconds=progress["seconds"])


def checkpoint_state(run: Run, state: RunState, epoch: int) -> dict[str, Any]:
    """What ``last.pt``/``best.pt``/``interrupted.pt`` hold after (0-based) ``epoch``: plain types
    and tensors only."""
    return training_checkpoint(run.model, run.optimizer, run.scaler, run.ema, epoch=epoch, iteration=state.iteration,
                               best_ap=state.best_ap, best_epoch=state.best_epoch, config=run.config,
                               class_map=run.data.class_map.to_dict(), rng=rng_state(), history=state.history,
                               world_size=run.world, changes=state.changes, warmup=state.warmup)



def log_data_notes(log: RunLog, data: Datasets, shown: int = 10) -> None:
    """Every item the data left out (``--skip-bad``) and every warning, in train.log; the first
    ``shown`` echoed, then a count (a dataset can have thousands)."""
    notes = data.notes()
    for i, note in enumerate(notes):
        log.line(f"data: {note}", echo=i < shown, warn=True)
    if notes:
        log.line(warn=True, msg=f"data: {len(data.skipped)} item(s) left out, {len(data.warnings)} warning(s)"
                 + (f" ({len(notes) - shown} of them only in train.log)" if len(notes) > shown else ""))


def settings_without_effect(model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig, data_format: str,
                            world_size: int, device_type: str = "cuda") -> list[str]:
    """A warning for each setting, other than its default, that this run cannot use (it would
    otherwise be recorded in config.yaml as if it applied): multistep's steps under another
    schedule, a flat folder's split draw on a layout that names its splits, SyncBN with one
    process or nothing to synchronise."""
    def changed(section, default, keys) -> str:
        """``lr_steps [1] has`` / ``lr_steps [1] and lr_gamma 0.5 have``: the settings other than their default."""
        shown = [f"{k} {list(v) if isinstance(v, tuple) else v}" for k in keys
                 if (v := getattr(section, k)) != getattr(default, k)]
        return f"{' and '.join(shown)} {'has' if len(shown) == 1 else 'have'}" if shown else ""

    out = []
    said = changed(cfg, TrainConfig(), ("lr_steps", "lr_gamma"))
    if cfg.scheduler != "multistep" and said:
        out.append(f"{said} no effect: settings of the multistep schedule, and this run's is {cfg.scheduler}")
    said = changed(data_cfg, DataConfig(), ("val_fraction", "split_seed"))
    if data_format != "voc-flat" and said:
        out.append(f"{said} no effect: settings of a flat VOC folder's validation draw, and this dataset "
                   f"({data_format}) names its splits (--train-split/--val-split)")
    above = [t for t in data_cfg.train_sizes if t > model_cfg.max_size]
    if above:  # the long side's cap decides those scales: they train at max_size (or less), not as asked
        out.append(f"train_sizes {', '.join(map(str, above))} are above max_size {model_cfg.max_size}: the long side's cap "
                   "makes them smaller (raise --max-size, or give smaller --train-sizes)")
    if cfg.sync_bn and world_size == 1:
        out.append("sync_bn has no effect: one process, so no batch statistics to synchronise")
    elif cfg.sync_bn and device_type != "cuda":
        out.append(f"sync_bn has no effect on {device_type}: PyTorch's SyncBatchNorm runs on GPUs only, so each "
                   "process keeps its own batch statistics")
    elif cfg.sync_bn and model_cfg.norm == "frozen_bn":
        out.append("sync_bn has no effect: the BatchNorm layers are frozen, so no batch statistics to synchronise")
    return out


def shared_images(data: Datasets) -> str:
    """A warning when the training and validation splits share image files ("" when not): the AP
    would be measured on images the model trains on."""
    val = {r.file for r in data.val.records}
    both = [f for f in dict.fromkeys(r.file for r in data.train.records) if f in val]
    if not both:
        return ""
    return (f"the training and validation splits share {len(both)} of the {len(val)} validation image(s) "
            f"({', '.join(Path(f).name for f in both[:3])}{' ...' if len(both) > 3 else ''}): the AP is measured on "
            "images the model trains on")


def val_tiling(data_cfg: DataConfig, batch_size: int) -> TileOptions | None:
    """How a ``--crop PX`` run evaluates: tiles of PX at native resolution (``trained_tiling``: what
    ``eval`` and ``predict`` of its checkpoint do by default, as ``--tile``), ``batch_size`` tiles a
    pass; None (whole resized images) without a crop. Resized whole, a 3000 px image shrinks its
    objects below every anchor: AP ~0, and best.pt chosen by noise."""
    return trained_tiling(data_cfg.crop, data_cfg.crop, batch_size)


def training_line(data_cfg: DataConfig, cfg: TrainConfig, world_size: int) -> str:
    """One log line of how the run trains: batch, optimizer, the augmentation and the EMA (its decay
    ramps up over ``ema_ramp_iters`` steps: in a short run its weights follow the model closely)."""
    aug = [f"hflip {data_cfg.hflip_prob:g}"] if data_cfg.hflip_prob else []
    aug += [f"short sides {', '.join(map(str, data_cfg.train_sizes))}"] if data_cfg.train_sizes else []
    aug += [name for name, on in (("photometric", data_cfg.photometric), ("IoU crop", data_cfg.iou_crop)) if on]
    aug += [f"{data_cfg.crop} px crops"] if data_cfg.crop else []
    ema = (f"EMA of the weights (decay {cfg.ema_decay:g}, ramped up over {cfg.ema_ramp_iters} steps), evaluated and saved"
           if cfg.ema else "no EMA")
    return (f"training: batch {cfg.batch_size} x {world_size} process(es), {cfg.optimizer} lr {cfg.lr:g}, augmentation: "
            f"{', '.join(aug) or 'none'}; {ema}")
