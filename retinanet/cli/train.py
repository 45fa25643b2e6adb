"""``retinanet train``: its options, and where each value comes from.

Lowest first: the ``ModelConfig``/``DataConfig``/``TrainConfig`` defaults, the config file (``--config
FILE`` or a shipped recipe name; else the config stored in the ``--resume`` checkpoint; else, without
``--data``, the quick_synthetic recipe), the options given on the command line. Every training option
defaults to ``argparse.SUPPRESS``, so ``args`` holds only what the user typed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from retinanet.cli.options import (DEVICE_HELP, add_amp_options, add_cap_options, add_data_options, any_int, field_type,
                                   given_options)
from retinanet.config import (RECIPES_DIR, SECTIONS, DataConfig, ModelConfig, TrainConfig, find_config, read_config_file,
                              recipe_names, resolve_config)
from retinanet.data.crop import crop_model_config
from retinanet.engine.runtime.checkpoint import stored_config
from retinanet.engine.runtime.run_dir import resume_file
from retinanet.engine.train.loop import train
from retinanet.engine.train.report import format_run_summary
from retinanet.engine.train.resume import resume_setting
from retinanet.errors import RetinaNetError
from retinanet.files import ReadOnce

QUICK_RECIPE = RECIPES_DIR / "quick_synthetic.yaml"
START_OPTIONS = ("weights", "backbone_weights")  # with --from-scratch: what the run starts from
EXIT_CODES = {"finished": 0, "SIGINT": 130, "SIGTERM": 143}  # any other stop (a signal on another rank): 1


def add_train_parser(sub) -> argparse.ArgumentParser:
    m0, d0, t0 = ModelConfig(), DataConfig(), TrainConfig()
    p = sub.add_parser(
        "train", help="train a detector (CPU, one GPU, or many with torchrun)",
        description="Train a RetinaNet. Every option comes from, lowest first: the built-in default (in brackets), the "
        f"config file (--config FILE or a shipped recipe: {', '.join(recipe_names())}; without --config and --data: "
        "the quick_synthetic recipe; with --resume and no --config: the checkpoint's config), the options given here. "
        "The resolved config is written to RUN_DIR/config.yaml (train again with --config RUN_DIR/config.yaml). "
        "--resume continues the run it names: settings that define the run (data, class map, model, batch size, "
        "processes, schedule) must stay as they were (--resume-allow SETTING lets one change, said in the log); "
        "epochs (multistep), workers, device and logging may change and are said aloud. "
        "Run with 'torchrun --nproc_per_node=N -m retinanet train ...' for DDP (NCCL on GPUs, gloo on CPU).",
    )
    add_data_options(p, from_config=True, augment=True)
    S = argparse.SUPPRESS  # only options the user gives override --config
    s = p.add_argument_group("embedded synthetic dataset (used when no --data is given)",
                             "without --config and --data the quick_synthetic recipe applies, and its values win over "
                             "the defaults in brackets (1000 train, 100 val images of 160 px; see also retinanet demo)")
    s.add_argument("--synthetic-train", type=field_type("synthetic_train"), default=S, metavar="N", help=f"training images [{d0.synthetic_train}]")
    s.add_argument("--synthetic-val", type=field_type("synthetic_val"), default=S, metavar="N", help=f"validation images [{d0.synthetic_val}]")
    s.add_argument("--synthetic-size", type=field_type("synthetic_size"), default=S, metavar="PX", help=f"side of the square images [{d0.synthetic_size}]")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=S, help=f"resnet18_fpn ... resnet152_fpn, regnet_x_400mf_fpn ... regnet_x_3_2gf_fpn (RegNetX bodies: fast on CPUs); each with a _v2 variant (GroupNorm heads, GIoU loss) [{m0.arch}]")
    m.add_argument("--min-size", type=field_type("min_size"), default=S, metavar="PX", help=f"short side of the network input [{m0.min_size}]")
    m.add_argument("--max-size", type=field_type("max_size"), default=S, metavar="PX", help=f"cap on the long side [{m0.max_size}]")
    m.add_argument("--norm", choices=["frozen_bn", "bn"], default=S, help="backbone BatchNorm: frozen (pretrained start only) or trained [frozen_bn with pretrained weights, else bn]")
    m.add_argument("--trainable-backbone-layers", type=field_type("trainable_backbone_layers"), default=S, metavar="N", help="backbone stages trained, 0..5 (< 5: pretrained start only) [3 with pretrained weights, else 5]")
    m.add_argument("--fpn-channels", type=field_type("fpn_channels"), default=S, metavar="C", help=f"FPN and head width (256 to load torchvision weights) [{m0.fpn_channels}]")
    m.add_argument("--box-loss", choices=["l1", "giou"], default=S, help="box regression loss [the arch's: l1 for v1, giou for _v2 archs]")
    m.add_argument("--anchor-sizes", type=field_type("anchor_sizes"), nargs=5, default=S, metavar="PX", help=f"base anchor side of FPN levels P3..P7; lower them for objects smaller than the first (check-data --out draws both) [{' '.join(map(str, m0.anchor_sizes))}]")
    add_cap_options(m, "detections kept per image (per tile with --crop) by each evaluation; saved in the checkpoint as "
                    "its detections_per_img, the default --max-dets of eval, predict and export", default=S)
    m.add_argument("--head-convs", type=field_type("head_convs"), default=S, metavar="N", help=f"conv layers per head branch (4 to load torchvision weights) [{m0.head_convs}]")
    t = p.add_argument_group("training")
    t.add_argument("--config", metavar="FILE", default=S, help="YAML/JSON with model:, data:, train: sections, or a shipped recipe name")
    w = p.add_argument_group("start (default: resnet50_fpn from --weights coco, resnet50_fpn_v2 from coco-v2, other archs from --backbone-weights imagenet)")
    w.add_argument("--weights", default=S, metavar="NAME_OR_FILE", help="start from a whole detector: coco or coco-v2 (torchvision's COCO RetinaNet files, downloaded once into $TORCH_HOME/hub/checkpoints, hash-checked), a torchvision RetinaNet state_dict (or a checkpoint of torchvision's detection reference scripts: its 'model' entry, said in the log) or our checkpoint (a different class count re-initialises the classification layer); none: no detector weights")
    w.add_argument("--backbone-weights", default=S, metavar="NAME_OR_FILE", help="start the ResNet or RegNet body from imagenet (torchvision's ImageNet weights, downloaded once like coco) or a torchvision ResNet/RegNet classification state_dict; FPN and heads start fresh")
    w.add_argument("--from-scratch", action="store_true", default=S, help="random weights everywhere (same as --weights none); trains every layer with trainable BatchNorm")
    t.add_argument("--resume", default=S, metavar="RUN_DIR_OR_CKPT", help="continue a run exactly from RUN_DIR/last.pt (or its interrupted.pt when written after it) or a checkpoint, in its folder (--out: elsewhere), with the run's own settings (see --resume-allow)")
    t.add_argument("--resume-allow", action="extend", nargs="+", type=resume_allow_type, default=[], metavar="SETTING",
                   help="with --resume: let the resumed run change these settings that define a run (batch_size, lr, "
                   "root, class_map, world_size, ...); without it a resume refuses them and lists each (old -> new). "
                   "The log names each change, config.yaml records it")
    t.add_argument("--out", default=S, metavar="RUN_DIR", help=f"run directory for checkpoints, logs and plots; a new run refuses one that holds another run [{t0.out}]")
    t.add_argument("--exist-ok", action="store_true", help="let a new run replace the files of another run in --out (it says which); with --resume, let an older "
                   "checkpoint of the folder (best.pt) take the run back, training its later epochs again")
    t.add_argument("--epochs", type=field_type("epochs"), default=S, help=f"[{t0.epochs}]")
    t.add_argument("--time", type=field_type("time"), default=S, metavar="MINUTES", help="train for this wall time instead of --epochs: the run measures its speed on its first batches, fits the epochs, evaluations and warmup to the budget (the log says what and why), fits the steps again once from its own speed after a fifth of them, and ends within it with best.pt; a resume keeps the fitted schedule [off]")
    t.add_argument("--batch-size", type=field_type("batch_size"), default=S, help=f"images per step and process [{t0.batch_size}]")
    t.add_argument("--workers", type=field_type("workers"), default=S, help=f"data loading processes per training process [{d0.workers}]")
    t.add_argument("--optimizer", choices=["sgd", "adamw"], default=S, help=f"[{t0.optimizer}]")
    t.add_argument("--lr", type=field_type("lr"), default=S, help=f"peak learning rate (for --batch-size x processes images) [{t0.lr}]")
    t.add_argument("--momentum", type=field_type("momentum"), default=S, help=f"SGD momentum [{t0.momentum}]")
    t.add_argument("--weight-decay", type=field_type("weight_decay"), default=S, help=f"[{t0.weight_decay}]")
    t.add_argument("--scheduler", choices=["multistep", "cosine"], default=S, help=f"learning rate schedule after warmup [{t0.scheduler}]")
    t.add_argument("--warmup-iters", type=field_type("warmup_iters"), default=S, metavar="N", help=f"linear warmup steps, at most --warmup-max-fraction of the run's [{t0.warmup_iters}]")
    t.add_argument("--warmup-max-fraction", type=field_type("warmup_max_fraction"), default=S, metavar="F", help=f"cap on the warmup: this share of the run's steps (0..1; the log says the warmup it resolved to) [{t0.warmup_max_fraction}]")
    t.add_argument("--lr-steps", type=field_type("lr_steps"), nargs="+", default=S, metavar="EPOCH", help=f"multistep: epochs where the lr is multiplied by --lr-gamma [{' '.join(map(str, t0.lr_steps))}]")
    t.add_argument("--lr-gamma", type=field_type("lr_gamma"), default=S, help=f"multistep factor [{t0.lr_gamma}]")
    t.add_argument("--clip-grad", dest="clip_grad_norm", type=field_type("clip_grad_norm"), default=S, metavar="NORM", help="clip the gradient norm to this [off]")
    add_amp_options(t, S)
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S, help="run the model in channels_last (NHWC) memory layout: the same results, usually faster (BENCHMARKS.md) [on]")
    t.add_argument("--ema", action=argparse.BooleanOptionalAction, default=S, help="keep an exponential moving average of the weights; it is evaluated and saved as 'ema' [off]")
    t.add_argument("--ema-decay", type=field_type("ema_decay"), default=S, help=f"EMA decay, ramped up over the first steps [{t0.ema_decay}]")
    t.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=S, help="SyncBatchNorm across GPU processes (DDP with --norm bn; no effect on CPU, said in the log) [off]")
    t.add_argument("--eval-every", type=field_type("eval_every"), default=S, metavar="N", help=f"evaluate every N epochs and after the last; best.pt only changes then [{t0.eval_every}]")
    t.add_argument("--print-every", type=field_type("print_every"), default=S, metavar="N", help=f"read the losses from the device every N steps: a progress line in train.log (on stdout when it is not a terminal), TensorBoard step scalars; under torchrun a Ctrl-C takes effect at the next such step (torchrun kills its "
                   f"processes 30 s after one) [{t0.print_every}]")
    t.add_argument("--coco-backend", choices=["pycocotools", "faster_coco_eval"], default=S,
                   help="the per-epoch COCO metrics: pycocotools (the reference) or faster_coco_eval (several times faster on "
                        "crowded images, equal up to float rounding; pip install 'retinanet[fast-eval]') "
                        f"[{t0.coco_backend}]")
    t.add_argument("--seed", type=any_int, default=S, help=f"[{t0.seed}]")
    t.add_argument("--device", default=S, help=f"{DEVICE_HELP} [{t0.device}]")
    t.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=S, help="also log to RUN_DIR/tensorboard (needs: pip install 'retinanet[tensorboard]') [off]")
    t.add_argument("--quiet", action="store_true", help="no progress bars or lines on the terminal (train.log is still written)")
    return p


def resume_allow_type(text: str) -> str:
    """argparse type of ``--resume-allow``: a setting a resume may be allowed to change."""
    try:
        return resume_setting(text)
    except RetinaNetError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--resume-allow: ")) from None


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume_allow and not getattr(args, "resume", None):
        raise RetinaNetError("--resume-allow lets a resumed run change settings: give --resume RUN_DIR too")
    once = ReadOnce()  # --resume's checkpoint: read for its configs here, its training state taken from that read
    model_cfg, data_cfg, train_cfg = train_configs(args, once)
    crop_model_config(model_cfg, data_cfg, min_size_given="min_size" in vars(args))  # refuses --crop with another --min-size
    summary = train(model_cfg, data_cfg, train_cfg, progress=not args.quiet, exist_ok=args.exist_ok,
                    resume_allow=tuple(args.resume_allow), once=once)
    if summary["rank"] == 0:  # the process group is gone by now: the rank is in the summary
        print(format_run_summary(summary))
    return EXIT_CODES.get(summary["stopped"], 1)


def train_configs(args: argparse.Namespace, once: ReadOnce | None = None) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """The configs of ``retinanet train``: defaults < config file (``config_file_sections``, the
    checkpoint read through ``once``) < options given."""
    sections, source = config_file_sections(vars(args), once)
    given = given_options(args)
    check_time_options(given["train"])
    if "time" in given["train"]:  # a new budget: fitted when the run starts
        given["train"]["time_fitted"] = False
    elif "epochs" in given["train"]:  # N whole epochs, not a schedule a config's --time run fitted
        given["train"] |= {"time": None, "time_fitted": False, "max_steps": None}
    start = {k: v for k, v in given["train"].items() if k in START_OPTIONS}
    if getattr(args, "from_scratch", False):
        other = {k: v for k, v in start.items() if v.strip().lower() != "none"}
        if other:
            raise RetinaNetError(f"--from-scratch and --{next(iter(other)).replace('_', '-')} {next(iter(other.values()))}: "
                                 "a start from scratch has no weights; give one of them")
        start = {"weights": "none", "backbone_weights": "none"}
    if start:  # the command line names the start: a config file's choice and recorded hash give way
        sections["train"] = {k: v for k, v in sections["train"].items() if k not in (*START_OPTIONS, "start_sha256")}
        given["train"] |= start
    moved = sections["data"].get("root")  # with --resume and no --config: the checkpoint's dataset
    if (given["train"].get("resume") and not vars(args).get("config") and source != "defaults" and "root" not in given["data"]
            and moved and not Path(moved).exists()):
        raise RetinaNetError(f"{source} was trained on {moved}, which is not there now: to resume with the same data "
                             "where it is now, give --data NEW_ROOT --resume-allow root")
    if given["train"].get("resume") and "out" not in given["train"]:  # the run named continues where it is now,
        given["train"]["out"] = str(resume_file(given["train"]["resume"]).parent)  # also when its folder was moved
    return resolve_config(sections, given, source=source)


def check_time_options(train: dict[str, Any]) -> None:
    """``--time`` fits the epochs itself, and a resumed run keeps the schedule it fitted: refuse
    ``--time`` with ``--epochs``, ``--eval-every`` or ``--resume``."""
    if "time" not in train:
        return
    for key in ("epochs", "eval_every", "resume"):
        if key in train:
            flag = "--" + key.replace("_", "-")
            why = ("a resumed run keeps the schedule it fitted to its budget" if key == "resume"
                   else "--time fits it to the budget")
            raise RetinaNetError(f"--time and {flag} together: {why}; give one of them")
    if not train["time"] > 0:
        raise RetinaNetError(f"--time must be > 0 minutes, got {train['time']:g}")


def config_file_sections(given: dict[str, Any], once: ReadOnce | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """The config under the command line's options, and where it comes from: ``--config``, else
    the checkpoint of ``--resume`` (read through ``once``: the run takes that read for its
    training state), else (no ``--data``) the quick_synthetic recipe, else nothing."""
    if given.get("config"):
        path = find_config(given["config"])
        return read_config_file(path), str(path)
    if given.get("resume"):
        ckpt = resume_file(given["resume"])
        stored = stored_config(ckpt, once)
        if stored is not None:
            return stored, str(ckpt)
    if given.get("data") is None and QUICK_RECIPE.is_file():
        return read_config_file(QUICK_RECIPE), str(QUICK_RECIPE)
    return {k: {} for k in SECTIONS}, "defaults"
