"""Training loop: ``train(model_cfg, data_cfg, train_cfg) -> summary dict``.

Single process or DDP under torchrun (gloo on CPU, NCCL on GPUs; only rank 0 writes files and
prints). Every ``eval_every`` epochs (and after the last): evaluate (COCO metrics, split across
ranks and gathered). Every epoch: write ``last.pt`` (``best.pt`` when the evaluated AP improved;
plain types, ``weights_only`` loadable), append a row to ``results.csv``, rewrite
``metrics.json``/``results.png``; ``train.log`` keeps every line printed. SIGINT/SIGTERM stop at
the next step with a checkpoint; non-finite losses are skipped and counted (stop after
``max_bad_steps`` in a row). ``summary_text(summary)`` is the one-screen report of a run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import resource
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinanet.checkpoint_io import read_file, save_checkpoint
from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.engine import distributed as D
from retinanet.errors import RetinaNetError

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LOSSES = ("loss", "classification", "bbox_regression")
TB_HINT = "pip install 'retinanet[tensorboard]'"


def lr_factor(it: int, epoch_float: float, cfg: TrainConfig, total_epochs: int) -> float:
    """Multiplier of ``cfg.lr`` at global step ``it`` (linear warmup, then multistep or cosine)."""
    warm = 1.0
    if it < cfg.warmup_iters:
        alpha = it / max(1, cfg.warmup_iters)
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.scheduler == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch_float / max(1, total_epochs))))
    if cfg.scheduler == "multistep":
        return warm * cfg.lr_gamma ** sum(int(epoch_float) >= s for s in cfg.lr_steps)
    raise RetinaNetError(f"unknown scheduler '{cfg.scheduler}' (multistep or cosine)")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise RetinaNetError(f"unknown optimizer '{cfg.optimizer}' (sgd or adamw)")


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after every step."""

    def __init__(self):
        self.signal: str | None = None

    def __call__(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    def install(self):
        return {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain types/tensors."""
    np_state = np.random.get_state()
    state = {"python": repr(random.getstate()), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_step(model, optimizer, images, targets, cfg: TrainConfig, device, scaler) -> dict[str, float] | None:
    """One optimisation step. Returns the losses, or None when the loss was not finite (skipped)."""
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device.type, dtype=dtype, enabled=cfg.amp):
        losses = model(images, targets)
    loss = sum(losses.values())
    if not torch.isfinite(D.all_reduce_mean(loss.detach())):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return {k: float(v.detach()) for k, v in losses.items()} | {"loss": float(loss.detach())}


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resume_path(resume: str) -> Path:
    p = Path(resume)
    return p / "last.pt" if p.is_dir() else p


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or a ``RetinaNetError`` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RetinaNetError(f"--tensorboard needs the tensorboard package: {TB_HINT}") from None
    return SummaryWriter


def ema_multi_avg_fn(decay: float, ramp_iters: int):
    """EMA update for ``AveragedModel``: decay ``decay * (1 - exp(-n / ramp_iters))`` after n updates
    (constant ``decay`` when ``ramp_iters`` is 0), so short runs do not average in the initial weights."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged) -> None:
        d = decay * (1 - math.exp(-float(num_averaged) / ramp_iters)) if ramp_iters > 0 else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunLog:
    """Lines of a run: appended to ``train.log`` (main process) and printed when ``echo``."""

    def __init__(self, path: Path | None, echo: bool):
        self.file = path.open("a") if path is not None else None
        self.echo = echo

    def line(self, msg: str, echo: bool = True) -> None:
        if self.echo and echo:
            print(msg, flush=True)
        if self.file:
            self.file.write(msg + "\n")
            self.file.flush()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()
            self.file = None


class StepProgress:
    """Progress of one epoch's steps: a tqdm bar with ETA (loss, lr) when stderr is a terminal;
    every ``every`` steps (and at the last) a line with ETA in the log, printed when there is no bar."""

    def __init__(self, log: RunLog, total: int, desc: str, every: int, show: bool):
        from tqdm import tqdm

        self.log, self.total, self.desc, self.every = log, total, desc, max(1, every)
        self.bar = (tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.5)
                    if show and log.echo and sys.stderr.isatty() else None)
        self.t0 = time.time()

    def update(self, i: int, losses: dict[str, float] | None, lr: float) -> None:
        loss = losses["loss"] if losses else float("nan")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", refresh=False)
            self.bar.update(1)
        if (i + 1) % self.every == 0 or i + 1 == self.total:
            eta = (time.time() - self.t0) / (i + 1) * (self.total - i - 1)
            self.log.line(f"{self.desc} step {i + 1}/{self.total} loss {loss:.4f} lr {lr:.4g} eta {_hms(eta)}",
                          echo=self.bar is None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train a RetinaNet; returns the summary dict (see ``summary_text``).

    Under torchrun this joins the process group (and leaves it at the end if it created it).
    ``progress=False``: no printing at all (``train.log`` is still written).
    """
    own_group = not D.is_dist()
    try:
        return _train(model_cfg, data_cfg, train_cfg, progress)
    finally:
        if own_group:
            D.cleanup()


def _train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, progress: bool) -> dict[str, Any]:
    from retinanet.data import build_datasets, build_loader
    from retinanet.engine.evaluate import evaluate
    from retinanet.model import build_model, load_weights

    cfg, t_start = train_cfg, time.time()
    writer_cls = tensorboard_writer_class() if cfg.tensorboard else None  # every rank fails alike, before any work
    for name in ("epochs", "batch_size", "eval_every", "print_every", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            raise RetinaNetError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    device = D.local_device(cfg.device)
    dist = D.init_distributed(device)
    main, world = D.is_main_process(), D.get_world_size()
    torch.manual_seed(cfg.seed), random.seed(cfg.seed), np.random.seed(cfg.seed)
    data = build_datasets(data_cfg, min_size=model_cfg.min_size, max_size=model_cfg.max_size)
    if len(data.val) == 0:
        raise RetinaNetError(f"{data.root}: the validation split {data_cfg.val_split!r} has no images "
                             "(training evaluates on it; give --val-split, or --val-fraction > 0 for a flat folder)")
    model_cfg = dataclasses.replace(model_cfg, num_classes=data.class_map.num_classes)
    model = build_model(**dataclasses.asdict(model_cfg)).to(device)
    if cfg.channels_last:  # before the optimizer, DDP and EMA see the parameters
        model.to(memory_format=torch.channels_last)
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    with RunLog(out / "train.log" if main else None, echo=progress and main) as log:
        log.line(f"retinanet train {time.strftime('%Y-%m-%d %H:%M:%S')}: {world} process(es) on {device.type}, run dir {out}")
        log.line(f"data: {data.root} ({data.format}), {len(data.train)} train / {len(data.val)} val images, "
                 f"{len(data.class_map.ids)} classes; model {model_cfg.arch} ({model_cfg.num_classes} outputs), "
                 f"{model_cfg.min_size}-{model_cfg.max_size} px")
        reinit: list[str] = []
        if cfg.weights and not cfg.resume:
            reinit = load_weights(model, cfg.weights, source=cfg.weights)
            log.line(f"weights: loaded {cfg.weights}" + (f"; re-initialised {len(reinit)} tensor(s) for "
                     f"{model_cfg.num_classes} outputs: {', '.join(reinit)}" if reinit else ""))
        if cfg.sync_bn and dist:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids) if dist else model
        optimizer = build_optimizer(model, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
        ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(cfg.ema_decay, cfg.ema_ramp_iters))
               if cfg.ema else None)
        train_loader = build_loader(data.train, batch_size=cfg.batch_size, workers=data_cfg.workers, train=True,
                                    distributed=dist, seed=cfg.seed, aspect_grouping=data_cfg.aspect_grouping)
        val_loader = build_loader(data.val, batch_size=cfg.batch_size, workers=data_cfg.workers, train=False, distributed=dist)
        config = {"model": dataclasses.asdict(model_cfg), "data": dataclasses.asdict(data_cfg), "train": dataclasses.asdict(cfg)}
        start_epoch, it, best_ap, best_epoch, history = 0, 0, -1.0, -1, []
        if cfg.resume:
            ck = read_file(_resume_path(cfg.resume))
            model.load_state_dict(ck["model"]), optimizer.load_state_dict(ck["optimizer"]), scaler.load_state_dict(ck["scaler"])
            if ema is not None and "ema_module" in ck:
                ema.load_state_dict(ck["ema_module"])
            start_epoch, it, best_ap, best_epoch = ck["epoch"] + 1, ck["iteration"], ck["best_ap"], ck["best_epoch"]
            history = list(ck.get("history", []))
            set_rng_state(ck["rng"])
            log.line(f"resumed from {_resume_path(cfg.resume)} at epoch {start_epoch + 1} (step {it})")
        if main:
            data.class_map.save(out / "classes.json")
            _write_config(out / "config.yaml", config)
        tb = writer_cls(str(out / "tensorboard")) if writer_cls is not None and main else None
        stop, old = StopFlag(), None
        try:
            old = stop.install()
        except ValueError:  # not the main thread
            pass
        bad, reason = 0, "finished"

        def state(epoch: int) -> dict[str, Any]:
            s = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "epoch": epoch, "iteration": it, "best_ap": best_ap, "best_epoch": best_epoch, "config": config,
                 "class_map": data.class_map.to_dict(), "rng": rng_state(), "history": history}
            if ema is not None:
                s["ema"] = ema.module.state_dict()
                s["ema_module"] = ema.state_dict()
            return s

        try:
            for epoch in range(start_epoch, cfg.epochs):
                train_loader.batch_sampler.set_epoch(epoch)
                net.train()
                t0, n_img, sums, steps, skipped = time.time(), 0, {}, 0, 0
                nb = len(train_loader)
                bar = StepProgress(log, nb, f"epoch {epoch + 1}/{cfg.epochs}", cfg.print_every, show=progress)
                try:
                    for i, (images, targets) in enumerate(train_loader):
                        lr = cfg.lr * lr_factor(it, epoch + i / nb, cfg, cfg.epochs)
                        for g in optimizer.param_groups:
                            g["lr"] = lr
                        losses = train_step(net, optimizer, images, targets, cfg, device, scaler)
                        it += 1
                        if losses is None:
                            bad, skipped = bad + 1, skipped + 1
                            if bad >= cfg.max_bad_steps:
                                raise RetinaNetError(f"{bad} consecutive non-finite losses (last at epoch {epoch + 1}, step {i + 1}); "
                                                     "lower --lr or use --clip-grad")
                        else:
                            bad, steps, n_img = 0, steps + 1, n_img + len(images)
                            sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
                            if ema is not None:
                                ema.update_parameters(model)
                            if tb is not None:
                                for k, v in losses.items():
                                    tb.add_scalar(f"train/{k}", v, it)
                                tb.add_scalar("train/lr", lr, it)
                        bar.update(i, losses, lr)
                        if D.any_rank(stop.signal is not None):
                            break
                finally:
                    bar.close()
                if D.any_rank(stop.signal is not None):
                    reason = stop.signal or "signal on another rank"
                    if main:
                        save_checkpoint(state(epoch - 1), out / "interrupted.pt")
                    log.line(f"stopped by {reason} in epoch {epoch + 1}; checkpoint {out / 'interrupted.pt'}")
                    break
                seconds = time.time() - t0
                losses_mean = _epoch_losses(sums, steps, device)
                row = {"epoch": epoch + 1, **losses_mean, "lr": optimizer.param_groups[0]["lr"]}
                evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
                t1, res = time.time(), None
                if evaluated:
                    evaluated_model = ema.module if ema is not None else model
                    D.broadcast_module(evaluated_model)  # every rank evaluates exactly the weights rank 0 saves
                    res = evaluate(evaluated_model, val_loader, device=device, class_map=data.class_map, amp=cfg.amp,
                                   progress=progress and main and sys.stderr.isatty())
                row |= {**{k: res.metrics[k] if res else None for k in METRICS}, "val_images": res.num_images if res else None,
                        "time_s": seconds, "eval_s": time.time() - t1 if res else None,
                        "images_per_s": n_img * world / max(seconds, 1e-9), "peak_mem_mb": peak_memory_mb(device),
                        "skipped_steps": skipped}
                history.append(row)
                improved = res is not None and res.metrics["AP"] > best_ap
                if improved:
                    best_ap, best_epoch = res.metrics["AP"], epoch + 1
                if main:
                    s = state(epoch)
                    save_checkpoint(s, out / "last.pt")
                    if improved:
                        save_checkpoint(s, out / "best.pt")
                    _write_outputs(out, history, best_ap, best_epoch)
                    if tb is not None:
                        _tensorboard_epoch(tb, row)
                log.line(epoch_line(row, cfg.epochs, improved))
            if reason == "finished":
                if main:
                    (out / "interrupted.pt").unlink(missing_ok=True)  # a finished run has nothing to resume
                D.barrier()  # every rank leaves together, after rank 0's last writes
            summary = make_summary(out, history, best_ap, best_epoch, reason, time.time() - t_start, world, data_cfg, data.root,
                                   tensorboard=tb is not None, reinitialised=reinit)
            log.line(summary_text(summary), echo=False)
            return summary
        finally:
            if old:
                for s, h in old.items():
                    signal.signal(s, h)
            if tb is not None:
                tb.close()


def _epoch_losses(sums: dict[str, float], steps: int, device) -> dict[str, float | None]:
    """Mean losses of the epoch over every rank (None when every step was skipped)."""
    keys = list(dict.fromkeys([*LOSSES, *sums]))
    if steps == 0:  # the same on every rank: skipping is decided on the all-reduced loss
        return {k: None for k in keys}
    mean = D.all_reduce_mean(torch.tensor([sums.get(k, 0.0) / steps for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, mean.tolist()))


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """The one line printed (and logged) after an epoch."""
    ap = (f"AP {_fmt(row['AP'])} AP50 {_fmt(row['AP50'])} AR100 {_fmt(row['AR100'])}{' (best)' if improved else ''}"
          if row["AP"] is not None else "not evaluated")
    msg = (f"epoch {row['epoch']}/{epochs}: loss {_fmt(row.get('loss'))} lr {row['lr']:.4g} | {ap} | "
           f"train {row['time_s']:.1f} s, {row['images_per_s']:.1f} img/s")
    if row["eval_s"] is not None:
        msg += f", eval {row['eval_s']:.1f} s"
    msg += f", peak mem {row['peak_mem_mb']:.0f} MiB"
    return msg + (f", {row['skipped_steps']} non-finite step(s) skipped" if row["skipped_steps"] else "")


def _tensorboard_epoch(tb, row: dict[str, Any]) -> None:
    for k in (*METRICS, "val_images"):
        if row.get(k) is not None:
            tb.add_scalar(f"val/{k}", row[k], row["epoch"])
    for k in (*LOSSES, "lr", "images_per_s", "peak_mem_mb", "time_s"):
        if row.get(k) is not None:
            tb.add_scalar(f"epoch/{k}", row[k], row["epoch"])
    tb.flush()


def eval_command(data_cfg: DataConfig, root: Path, weights: Path) -> str:
    """``retinanet eval`` command line evaluating ``weights`` on the run's validation split."""
    parts = ["retinanet", "eval", "--weights", str(weights), "--data", str(root)]
    if data_cfg.format:
        parts += ["--format", data_cfg.format]
    for year in data_cfg.years:
        parts += ["--year", str(year)]
    default = DataConfig()
    for name in ("train_split", "val_split", "classes", "val_fraction", "split_seed"):
        if getattr(data_cfg, name) != getattr(default, name):
            parts += [f"--{name.replace('_', '-')}", str(getattr(data_cfg, name))]
    if data_cfg.skip_bad:
        parts.append("--skip-bad")
    return shlex.join(parts)


def make_summary(out: Path, history: list[dict[str, Any]], best_ap: float, best_epoch: int, stopped: str, seconds: float,
                 world: int, data_cfg: DataConfig, root: Path, tensorboard: bool = False,
                 reinitialised: list[str] | None = None) -> dict[str, Any]:
    """The run's summary dict: best/last metrics, throughput, files and next commands."""
    best_row = next((r for r in history if r["epoch"] == best_epoch), None)
    train_s = sum(r["time_s"] for r in history)
    images = sum(r["images_per_s"] * r["time_s"] for r in history)
    names = ("best.pt", "last.pt", "results.csv", "metrics.json", "results.png", "config.yaml", "classes.json", "train.log")
    files = {n: str(out / n) for n in names if (out / n).exists() or n == "train.log"}
    if tensorboard:
        files["tensorboard"] = str(out / "tensorboard")
    weights = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
    summary = {
        "out": str(out), "stopped": stopped, "history": history, "best_ap": best_ap, "best_epoch": best_epoch,
        "best_ap50": best_row["AP50"] if best_row else None, "last_metrics": history[-1] if history else None,
        "time_s": seconds, "train_time_s": train_s, "images_per_s": images / train_s if train_s > 0 else None,
        "peak_mem_mb": max((r["peak_mem_mb"] for r in history), default=None),
        "skipped_steps": sum(r["skipped_steps"] for r in history), "world_size": world, "rank": D.get_rank(),
        "reinitialised": list(reinitialised or []), "files": files,
        "best": str(out / "best.pt"), "last": str(out / "last.pt"),
        "commands": {} if not weights.exists() else {
            "eval": eval_command(data_cfg, root, weights),
            "predict": shlex.join(["retinanet", "predict", "IMAGES", "--weights", str(weights), "--out", str(out / "predict")]),
            "export": shlex.join(["retinanet", "export", "--weights", str(weights), "--out", str(out / "model.onnx")])},
    }
    if stopped != "finished":
        summary["resume"] = shlex.join(["retinanet", "train", "--resume", str(out / "interrupted.pt")])
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """One screen: best and last metrics, time, throughput, memory, files, next commands."""
    lines = ["", f"training {'finished' if summary['stopped'] == 'finished' else 'stopped by ' + summary['stopped']}: "
                 f"{len(summary['history'])} epoch(s) in {_hms(summary['time_s'])} on {summary['world_size']} process(es)"]
    if summary["best_epoch"] > 0:
        lines.append(f"  best:   AP {_fmt(summary['best_ap'])}  AP50 {_fmt(summary['best_ap50'])}  (epoch {summary['best_epoch']})")
    else:
        lines.append("  best:   no epoch evaluated yet")
    last = summary["last_metrics"]
    if last:
        lines.append(f"  last:   epoch {last['epoch']}  loss {_fmt(last.get('loss'))}  AP {_fmt(last['AP'])}  "
                     f"AP50 {_fmt(last['AP50'])}  AR100 {_fmt(last['AR100'])}")
    lines.append(f"  speed:  {_fmt(summary['images_per_s'], '.1f')} train images/s (all processes), "
                 f"peak memory {_fmt(summary['peak_mem_mb'], '.0f')} MiB (rank 0)")
    if summary["skipped_steps"]:
        lines.append(f"  skipped {summary['skipped_steps']} step(s) with a non-finite loss")
    lines.append(f"files in {summary['out']}:")
    lines += [f"  {name:<13} {path}" for name, path in summary["files"].items()]
    if "resume" in summary:
        lines += ["resume:", f"  {summary['resume']}"]
    if summary["commands"]:
        lines.append("next:")
        lines += [f"  {cmd}" for cmd in summary["commands"].values()]
    return "\n".join(lines)


def _write_config(path: Path, config: dict[str, Any]) -> None:
    import yaml

    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    path.write_text(yaml.safe_dump({k: {f: plain(v) for f, v in sec.items()} for k, sec in config.items()}, sort_keys=False))


def _write_outputs(out: Path, history: list[dict[str, Any]], best_ap: float, best_epoch: int) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    best_ap50 = next((r["AP50"] for r in history if r["epoch"] == best_epoch), None)
    (out / "metrics.json").write_text(json.dumps({"best_ap": best_ap, "best_ap50": best_ap50, "best_epoch": best_epoch,
                                                  "epochs": history}, indent=2))
    _plot(out, history)


def _plot(out: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        return [float("nan") if r.get(key) is None else r[key] for r in history]

    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for k in LOSSES:
        axes[0].plot(ep, series(k), marker=".", label=k)
    axes[1].plot(ep, series("lr"), marker=".", label="lr")
    evaluated = [r for r in history if r.get("AP") is not None]
    for k in ("AP", "AP50"):
        axes[2].plot([r["epoch"] for r in evaluated], [r[k] for r in evaluated], marker="o", label=k)
    for ax, t in zip(axes, ("losses", "learning rate", "COCO AP")):
        ax.set_title(t), ax.set_xlabel("epoch"), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=80)
    plt.close(fig)


# --- configs from the command line ------------------------------------------------------------------

from retinanet.config import RECIPES_DIR  # noqa: E402

QUICK_RECIPE = RECIPES_DIR / "quick_synthetic.yaml"


def read_config_file(path: Path) -> dict[str, dict[str, Any]]:
    """The ``model:``, ``data:``, ``train:`` sections of a YAML/JSON config file (missing ones empty)."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RetinaNetError(f"{path}: cannot read config ({first})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise RetinaNetError(f"{path}: a config file is a mapping with model:, data:, train: sections")
    unknown = sorted(set(loaded) - {"model", "data", "train"})
    if unknown:
        raise RetinaNetError(f"{path}: unknown section(s) {', '.join(map(str, unknown))} (model, data, train)")
    sections = {}
    for name in ("model", "data", "train"):
        sec = loaded.get(name) or {}
        if not isinstance(sec, dict):
            raise RetinaNetError(f"{path}: section '{name}' must be a mapping of options")
        sections[name] = dict(sec)
    return sections


def _base_sections(given: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    """Config sections under the command line, and where they come from: ``--config``, else the
    checkpoint of ``--resume``, else (no ``--data``) the quick_synthetic recipe, else nothing."""
    from retinanet.config import find_config

    if given.get("config"):
        path = find_config(given["config"])
        return read_config_file(path), str(path)
    if given.get("resume"):
        ckpt = _resume_path(given["resume"])
        stored = read_file(ckpt).get("config")
        if isinstance(stored, dict):
            return {k: dict(stored.get(k) or {}) for k in ("model", "data", "train")}, str(ckpt)
    if given.get("data") is None and QUICK_RECIPE.is_file():
        return read_config_file(QUICK_RECIPE), str(QUICK_RECIPE)
    return {"model": {}, "data": {}, "train": {}}, "defaults"


def configs_from(args, data_config_from_args) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """(ModelConfig, DataConfig, TrainConfig): dataclass defaults < config file < options given.

    The config file is ``--config FILE`` (or a shipped recipe name), else the config stored in the
    ``--resume`` checkpoint, else, without ``--data``, the quick_synthetic recipe. ``args`` holds
    only the options given on the command line (argparse ``SUPPRESS`` defaults);
    ``data_config_from_args(args, base)`` applies the data options to ``base``.
    """
    from retinanet.config import from_dict

    given = vars(args)
    sections, source = _base_sections(given)
    model = from_dict(ModelConfig, sections["model"], source=source)
    data = from_dict(DataConfig, sections["data"], source=source)
    train = from_dict(TrainConfig, sections["train"], source=source)
    def options(cls) -> dict[str, Any]:
        return {f.name: tuple(given[f.name]) if isinstance(given[f.name], list) else given[f.name]
                for f in dataclasses.fields(cls) if f.name in given}

    model, train = dataclasses.replace(model, **options(ModelConfig)), dataclasses.replace(train, **options(TrainConfig))
    return model, data_config_from_args(args, data), train
