"""Training loop: ``train(model_cfg, data_cfg, train_cfg) -> summary dict``.

Single process or DDP under torchrun (gloo on CPU, NCCL on GPUs). Every epoch: train, evaluate
(COCO metrics), write ``last.pt``/``best.pt`` (plain types, ``weights_only`` loadable), append a
row to ``results.csv`` and rewrite ``metrics.json``. SIGINT/SIGTERM stop at the next step with a
checkpoint; non-finite losses are skipped and counted (stop after ``max_bad_steps`` in a row).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.engine import distributed as D
from retinanet.engine.checkpoint import read_file, save_checkpoint
from retinanet.errors import RetinaNetError

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


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
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resume_path(resume: str) -> Path:
    p = Path(resume)
    return p / "last.pt" if p.is_dir() else p


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train a RetinaNet; returns a summary dict (best AP, best epoch, paths, stop reason)."""
    from retinanet.data import build_datasets, build_loader
    from retinanet.engine.evaluate import evaluate
    from retinanet.model import build_model, load_weights

    cfg = train_cfg
    device = D.local_device(cfg.device)
    dist = D.init_distributed(device)
    main = D.is_main_process()
    torch.manual_seed(cfg.seed), random.seed(cfg.seed), np.random.seed(cfg.seed)
    data = build_datasets(data_cfg, min_size=model_cfg.min_size, max_size=model_cfg.max_size)
    model_cfg = dataclasses.replace(model_cfg, num_classes=data.class_map.num_classes)
    model = build_model(**dataclasses.asdict(model_cfg)).to(device)
    if cfg.weights and not cfg.resume:
        skipped = load_weights(model, cfg.weights, source=cfg.weights)
        if main and skipped:
            print(f"loaded {cfg.weights}; re-initialised {len(skipped)} tensors: {', '.join(skipped)}")
    if cfg.sync_bn and dist:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if dist else model
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema else None
    train_loader = build_loader(data.train, batch_size=cfg.batch_size, workers=data_cfg.workers, train=True,
                                distributed=dist, seed=cfg.seed, aspect_grouping=data_cfg.aspect_grouping)
    val_loader = build_loader(data.val, batch_size=cfg.batch_size, workers=data_cfg.workers, train=False, distributed=dist)
    out = Path(cfg.out)
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
    if main:
        out.mkdir(parents=True, exist_ok=True)
        data.class_map.save(out / "classes.json")
        _write_config(out / "config.yaml", config)
    log = (out / "train.log").open("a") if main else None
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
            for i, (images, targets) in enumerate(train_loader):
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * lr_factor(it, epoch + i / nb, cfg, cfg.epochs)
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
                if main and progress and i % cfg.print_every == 0:
                    print(f"epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{nb} loss {losses['loss'] if losses else float('nan'):.4f}", flush=True)
                if stop.signal:
                    break
            if stop.signal:
                reason = stop.signal
                if main:
                    save_checkpoint(state(epoch - 1), out / "interrupted.pt")
                break
            seconds = time.time() - t0
            res = evaluate(ema.module if ema is not None else model, val_loader, device=device, class_map=data.class_map,
                           amp=cfg.amp, progress=progress and main)
            row = {"epoch": epoch + 1, **{k: v / max(1, steps) for k, v in sums.items()}, "lr": optimizer.param_groups[0]["lr"],
                   **{k: res.metrics[k] for k in METRICS}, "time_s": seconds, "images_per_s": n_img * D.get_world_size() / max(seconds, 1e-9),
                   "peak_mem_mb": peak_memory_mb(device), "skipped_steps": skipped}
            history.append(row)
            if res.metrics["AP"] > best_ap:
                best_ap, best_epoch = res.metrics["AP"], epoch + 1
            if main:
                s = state(epoch)
                save_checkpoint(s, out / "last.pt")
                if best_epoch == epoch + 1:
                    save_checkpoint(s, out / "best.pt")
                _write_outputs(out, history, best_ap, best_epoch)
                msg = f"epoch {epoch + 1}: loss {row.get('loss', float('nan')):.4f} AP {row['AP']:.4f} AP50 {row['AP50']:.4f} ({seconds:.1f} s)"
                print(msg, flush=True)
                log.write(msg + "\n"), log.flush()
    finally:
        if old:
            for s, h in old.items():
                signal.signal(s, h)
        if log:
            log.close()
    summary = {"best_ap": best_ap, "best_epoch": best_epoch, "out": str(out), "stopped": reason, "history": history,
               "best": str(out / "best.pt"), "last": str(out / "last.pt")}
    if reason != "finished":
        summary["resume"] = f"retinanet train --resume {out / 'interrupted.pt'}"
    return summary


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
    (out / "metrics.json").write_text(json.dumps({"best_ap": best_ap, "best_epoch": best_epoch, "epochs": history}, indent=2))
    _plot(out, history)


def _plot(out: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for k in ("loss", "classification", "bbox_regression"):
        axes[0].plot(ep, [r.get(k, float("nan")) for r in history], label=k)
    axes[1].plot(ep, [r["lr"] for r in history], label="lr")
    for k in ("AP", "AP50"):
        axes[2].plot(ep, [r[k] for r in history], label=k)
    for ax, t in zip(axes, ("losses", "learning rate", "COCO AP")):
        ax.set_title(t), ax.set_xlabel("epoch"), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=80)
    plt.close(fig)


from retinanet.config import RECIPES_DIR  # noqa: E402

QUICK_RECIPE = RECIPES_DIR / "quick_synthetic.yaml"
_MODEL_OPTS = ("arch", "min_size", "max_size", "trainable_backbone_layers", "norm")
_TRAIN_OPTS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed", "clip_grad": "clip_grad_norm",
               "optimizer": "optimizer", "scheduler": "scheduler", "device": "device", "out": "out", "resume": "resume",
               "amp": "amp", "ema": "ema", "sync_bn": "sync_bn", "tensorboard": "tensorboard", "weights": "weights"}


def configs_from(args, data_config_from_args) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """(ModelConfig, DataConfig, TrainConfig) from ``--config FILE`` (if any) overridden by given options."""
    from retinanet.config import from_dict

    sections: dict[str, dict] = {"model": {}, "data": {}, "train": {}}
    if not args.config and args.data is None and QUICK_RECIPE.is_file():
        args.config = str(QUICK_RECIPE)  # no dataset option: the quick synthetic recipe
    if args.config:
        import yaml

        from retinanet.config import find_config

        path = find_config(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise RetinaNetError(f"{path}: cannot read config ({err})") from None
        unknown = set(loaded) - set(sections)
        if unknown:
            raise RetinaNetError(f"{path}: unknown section(s) {sorted(unknown)} (model, data, train)")
        sections.update({k: dict(v or {}) for k, v in loaded.items()})
    given = vars(args)
    sections["model"].update({k: given[k] for k in _MODEL_OPTS if k in given})
    sections["train"].update({v: given[k] for k, v in _TRAIN_OPTS.items() if k in given})
    src = args.config or "command line"
    data_file = from_dict(DataConfig, sections["data"], source=src)
    if args.data is not None or not args.config:
        data_cfg = data_config_from_args(args, **({"workers": given["workers"]} if "workers" in given else {}))
    else:
        data_cfg = dataclasses.replace(data_file, **({"workers": given["workers"]} if "workers" in given else {}))
    return from_dict(ModelConfig, sections["model"], source=src), data_cfg, from_dict(TrainConfig, sections["train"], source=src)
