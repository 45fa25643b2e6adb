"""``retinanet demo``: synthetic data -> a short training -> eval -> predictions, with the real commands.

The demo runs exactly what a user would type, through ``retinanet.cli.main`` (passed in as
``run_command``, so this module does not import the parser that imports it)::

    retinanet train --config demo_synthetic --out OUT/train [--amp bf16 | --arch regnet_x_400mf_fpn_v2] [overrides]
    retinanet eval --weights OUT/train/best.pt --data SYNTHETIC_ROOT --out OUT/eval
    retinanet predict VAL_IMAGES... --weights OUT/train/best.pt --out OUT/predict

``SYNTHETIC_ROOT`` is the folder the recipe trains on: ``default_synthetic_root`` of the recipe's
``data.synthetic_train/_val/_size`` resolved as ``retinanet train`` resolves them (``DataConfig``
defaults < the recipe < the demo's options, ``retinanet.config.resolve_config``), read when the
demo runs, so the recipe can change without touching the demo. It stops at the first command
that does not exit 0 and ends with the results and where they are (``format_demo_results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from retinanet.cli.options import DEVICE_HELP, arg_type, field_type, non_negative_int, positive_int
from retinanet.config import positive_number
from retinanet.config import DataConfig, find_config, read_config_file, resolve_config
from retinanet.data import ensure_synthetic
from retinanet.engine.runtime.precision import cpu_bf16_flags, cpu_has_native_bf16
from retinanet.engine.runtime.run_dir import holds_run
from retinanet.errors import RetinaNetError
from retinanet.files import write_atomic
from retinanet.shell import command_line

RECIPE = "demo_synthetic"
DEMO_MARKER = ".retinanet-demo"  # in a demo's --out: its train/ is a demo run, which the next demo may replace
# options the demo sets itself: given after "--" they would train elsewhere than it evaluates
DEFAULT_MINUTES = 5.0  # the whole demo's wall time when neither --time nor --epochs is given
# the body of a time-budgeted demo trained in fp32 on a CPU: on a 2-core AVX2 CPU it trains 2.4x the
# images/s of the recipe's ResNet-18 and reached 1.5x its AP in 5 minutes (BENCHMARKS.md, "RegNetX bodies")
FP32_CPU_ARCH = "regnet_x_400mf_fpn_v2"
AFTER_TRAINING = (15.0, 0.06)  # seconds kept for eval + predict: at least 15 s, or this share of the budget
RESERVED = ("--time", "--epochs", "--eval-every", "--config", "--data", "--format", "--out", "--resume", "--synthetic-train", "--synthetic-val", "--synthetic-size")


@dataclass(frozen=True)
class DemoOptions:
    """What ``run_demo`` needs; None = the recipe's (or the command's) default."""

    out: str = "demo"
    device: str | None = None
    epochs: int | None = None
    time: float | None = None  # minutes for the whole demo (None: DEFAULT_MINUTES unless epochs is given)
    workers: int | None = None
    synthetic_train: int | None = None
    synthetic_val: int | None = None
    synthetic_size: int | None = None
    num_images: int = 8  # validation images drawn by predict
    train_options: tuple[str, ...] = field(default=())  # passed to ``retinanet train`` unchanged


def add_demo_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="synthetic data -> a short training -> eval -> predictions, on a CPU",
        usage="retinanet demo [options] [-- TRAIN_OPTIONS ...]",
        description="Generate the embedded synthetic dataset, train the shipped demo_synthetic recipe "
        "(retinanet train --config demo_synthetic --out DIR/train; with --amp bf16 on CPUs with native bf16; with a time budget "
        "on other CPUs, in fp32, with the faster RegNetX-400MF body: --arch regnet_x_400mf_fpn_v2), evaluate its best checkpoint (retinanet eval, "
        "DIR/eval) and draw its detections on validation images (retinanet predict, DIR/predict), then print the "
        "results and where everything is. Stops at the first command that fails.",
        epilog="Options after '--' go to 'retinanet train' unchanged, e.g. "
        "'retinanet demo --epochs 2 -- --min-size 128 --max-size 128 --batch-size 4'.",
    )
    p.add_argument("--out", default="demo", metavar="DIR", help="output folder: DIR/train, DIR/eval, DIR/predict [demo]")
    p.add_argument("--device", help=f"{DEVICE_HELP} (default: the recipe's, auto)")
    p.add_argument("--time", type=arg_type(positive_number, "time"), metavar="MINUTES", help=f"wall time of the whole demo: training gets what is left "
                   f"after the data and before eval + predict, and fits its epochs to it (retinanet train --time) [{DEFAULT_MINUTES:g}]")
    p.add_argument("--epochs", type=positive_int, help="train this many epochs instead of fitting them to --time (the recipe's: 14)")
    p.add_argument("--workers", type=non_negative_int, help="data loading processes of every step (default: each command's)")
    p.add_argument("--synthetic-train", type=positive_int, metavar="N", help="synthetic training images (default: the recipe's)")
    p.add_argument("--synthetic-val", type=positive_int, metavar="N", help="synthetic validation images (default: the recipe's)")
    p.add_argument("--synthetic-size", type=field_type("synthetic_size"), metavar="PX", help="side of the synthetic images (default: the recipe's)")
    p.add_argument("--num-images", type=positive_int, default=8, metavar="N", help="validation images to draw predictions on [8]")
    p.add_argument("train_options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def demo_options(args: argparse.Namespace) -> DemoOptions:
    """``DemoOptions`` of parsed ``retinanet demo`` arguments (training options only after ``--``)."""
    extra = list(args.train_options)
    if extra and extra[0] != "--":
        raise RetinaNetError(f"unexpected argument {extra[0]!r}: training options go after '--'")
    if args.time is not None and args.epochs is not None:
        raise RetinaNetError("--time and --epochs together: --time fits the epochs to the budget; give one of them")
    if args.time is not None and not args.time > 0:
        raise RetinaNetError(f"--time must be > 0 minutes, got {args.time:g}")
    return DemoOptions(
        out=args.out, device=args.device, epochs=args.epochs, time=args.time, workers=args.workers, synthetic_train=args.synthetic_train,
        synthetic_val=args.synthetic_val, synthetic_size=args.synthetic_size, num_images=args.num_images,
        train_options=tuple(extra[1:]),
    )


def demo_data_config(opts: DemoOptions, recipe: str | None = None) -> DataConfig:
    """The ``DataConfig`` that ``retinanet train --config RECIPE`` with the demo's options trains on
    (``recipe``: default ``RECIPE``)."""
    path = find_config(recipe or RECIPE)
    given = {k: getattr(opts, k) for k in ("synthetic_train", "synthetic_val", "synthetic_size") if getattr(opts, k) is not None}
    return resolve_config(read_config_file(path), {"data": given}, source=str(path))[1]


def val_images(root: Path, n: int) -> list[Path]:
    """The first ``n`` images of the synthetic set's val split (``ImageSets/Main/val.txt``)."""
    year = Path(root) / "VOCdevkit" / "VOC2012"
    listing = year / "ImageSets" / "Main" / "val.txt"
    if not listing.is_file():
        raise RetinaNetError(f"{listing}: split file missing (delete {root} to regenerate the synthetic dataset)")
    stems = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [year / "JPEGImages" / f"{s}.jpg" for s in stems]


def _common(opts: DemoOptions) -> list[str]:
    return [a for k in ("device", "workers") if getattr(opts, k) is not None for a in (f"--{k}", str(getattr(opts, k)))]


def demo_budget(opts: DemoOptions) -> float | None:
    """The whole demo's budget in minutes: ``opts.time``, else ``DEFAULT_MINUTES`` unless ``opts.epochs`` is given."""
    if opts.time is not None:
        return opts.time
    return None if opts.epochs is not None else DEFAULT_MINUTES


def training_minutes(total_minutes: float, spent_s: float) -> float:
    """What the training gets of the demo's budget: the rest after ``spent_s`` seconds (the data)
    less the time kept for eval and predict (``AFTER_TRAINING``: 18 s of 5 minutes; an idle 2-core
    AVX2 CPU evaluated the 100 val images and drew 8 predictions in 6 s); at least 0.1 minutes."""
    keep_s = max(AFTER_TRAINING[0], AFTER_TRAINING[1] * total_minutes * 60)
    return max(0.1, (total_minutes * 60 - spent_s - keep_s) / 60)


def demo_commands(opts: DemoOptions, root: Path, images: list[Path], train_minutes: float | None = None) -> list[tuple[str, list[str]]]:
    """``[(step name, argv of retinanet.cli.main)]``: train (``--time train_minutes`` when given), eval, predict."""
    out = Path(opts.out)
    best = str(out / "train" / "best.pt")
    bad = [a for a in opts.train_options if a.split("=", 1)[0] in RESERVED]
    if bad:
        raise RetinaNetError(f"{', '.join(bad)}: set by the demo itself, not allowed after '--' "
                             "(use the demo's --out, --time, --epochs and --synthetic-* options)")
    train = ["train", "--config", RECIPE, "--out", str(out / "train"), *_common(opts)]
    given = {a.split("=", 1)[0] for a in opts.train_options}
    if _native_bf16_cpu(opts) and not given & {"--amp", "--no-amp"}:
        print(f"note: this CPU has native bf16 ({', '.join(cpu_bf16_flags())}): training with --amp bf16 "
              "(about 1.6x faster; --no-amp after '--' to train in fp32)", flush=True)
        train += ["--amp", "bf16"]
    elif train_minutes is not None and _on_cpu(opts) and not cpu_has_native_bf16() and "--arch" not in given:
        print(f"note: training in fp32 on this CPU (no native bf16) for a time budget: the RegNetX-400MF body "
              f"(--arch {FP32_CPU_ARCH}), which trains 2.4x the images/s of the recipe's ResNet-18 and reached "
              "1.5x its AP in 5 minutes on a 2-core AVX2 CPU ('-- --arch resnet18_fpn_v2' keeps the recipe's)", flush=True)
        train += ["--arch", FP32_CPU_ARCH]
    if holds_run(out / "train") and "--exist-ok" not in opts.train_options:
        if not (out / DEMO_MARKER).is_file():  # a run of the user's own (`retinanet train --out DIR/train`): kept
            raise RetinaNetError(f"{out / 'train'} holds a training run that no demo wrote: the demo would replace it; "
                                 "give the demo another --out (or '-- --exist-ok' to replace it)")
        print(f"note: {out / 'train'} holds an earlier demo run: this demo replaces it (--exist-ok)", flush=True)
        train.append("--exist-ok")
    if train_minutes is not None:
        train += ["--time", f"{train_minutes:.2f}"]
    for key in ("epochs", "synthetic_train", "synthetic_val", "synthetic_size"):
        if getattr(opts, key) is not None:
            train += [f"--{key.replace('_', '-')}", str(getattr(opts, key))]
    return [
        ("train", train + list(opts.train_options)),
        ("eval", ["eval", "--weights", best, "--data", str(root), "--out", str(out / "eval"), *_common(opts)]),
        ("predict", ["predict", *map(str, images), "--weights", best, "--out", str(out / "predict"), *_common(opts)]),
    ]


def _metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("metrics", {})
    except (OSError, ValueError):
        return {}


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def format_demo_results(out: Path, root: Path, seconds: dict[str, float]) -> str:
    """Results and locations of a finished demo, and the commands to go on with."""
    m = _metrics(out / "eval" / "eval.json")
    best = out / "train" / "best.pt"
    timing = ", ".join(f"{k} {_duration(v)}" for k, v in seconds.items())
    ap = f"COCO AP {m['AP']:.3f}, AP50 {m['AP50']:.3f}" if "AP" in m else "no metrics (eval.json missing)"
    return "\n".join([
        "",
        f"demo finished in {_duration(sum(seconds.values()))} ({timing})",
        f"best checkpoint on the {root.name} synthetic val split: {ap}",
        f"  dataset      {root}",
        f"  run dir      {out / 'train'}  (best.pt, last.pt, results.csv, results.png, config.yaml, train.log)",
        f"  eval         {out / 'eval' / 'eval.json'}  (detections.json beside it)",
        f"  PR curves    {out / 'eval' / 'pr_curves.png'}",
        f"  drawn images {out / 'predict' / 'images'}  (detections in {out / 'predict' / 'predictions.json'})",
        "next:",
        "  retinanet check-data --data PATH/TO/VOCdevkit          # your own data (VOC, flat VOC export, COCO JSON or YOLO data.yaml)",
        "  retinanet train --data PATH/TO/VOCdevkit --out runs/mine",
        f"  {command_line(['retinanet', 'eval', '--weights', str(best), '--data', str(root), '--voc'])}",
        f"  {command_line(['retinanet', 'predict', 'IMAGES_OR_FOLDER', '--weights', str(best)])}",
        f"  {command_line(['retinanet', 'export', '--weights', str(best), '--out', str(out / 'model.onnx')])}",
    ])


def run_demo(opts: DemoOptions, run_command: Callable[[Sequence[str]], int]) -> int:
    """Generate the data, run train, eval and predict with ``run_command`` (``retinanet.cli.main``);
    the first non-zero exit status stops it."""
    out = Path(opts.out)
    seconds: dict[str, float] = {}
    t0 = started = time.time()
    budget = demo_budget(opts)
    if budget is not None:
        print(f"time budget: {budget:g} min for the whole demo (--time; --epochs N trains a fixed number of epochs instead)",
              flush=True)
    data = demo_data_config(opts)
    if data.root is not None:
        raise RetinaNetError(f"recipe {RECIPE} sets data.root ({data.root}); the demo runs on the embedded synthetic dataset")
    print(f"[1/4] synthetic dataset: {data.synthetic_train} train + {data.synthetic_val} val images of {data.synthetic_size} px "
          "(written on first use, then reused)", flush=True)
    root = ensure_synthetic(num_train=data.synthetic_train, num_val=data.synthetic_val, image_size=data.synthetic_size)
    seconds["data"] = time.time() - t0
    train_minutes = None if budget is None else training_minutes(budget, time.time() - started)
    commands = demo_commands(opts, root, val_images(root, opts.num_images), train_minutes)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / DEMO_MARKER, "written by retinanet demo: train/ here is a demo run, which the next demo may replace\n")
    for k, (name, argv) in enumerate(commands, start=2):
        print(f"\n[{k}/4] {command_line(['retinanet', *argv])}", flush=True)
        t0 = time.time()
        try:
            code = run_command(argv)
        except SystemExit as exit_:  # argparse rejected an option (its message is printed)
            code = exit_.code if isinstance(exit_.code, int) else 2
        seconds[name] = time.time() - t0
        if code != 0:
            print(f"retinanet demo: error: step {name} exited with status {code}; stopped (see the messages above)", file=sys.stderr)
            return code
        if name == "train":
            code = _check_training(out / "train", started=t0)
            if code:
                return code
    print(format_demo_results(out, root, seconds))
    return 0


def _check_training(run: Path, started: float) -> int:
    """0 when this run wrote ``run/best.pt`` and was not interrupted (Ctrl-C); else a message and non-zero."""
    interrupted = run / "interrupted.pt"
    if _written_since(interrupted, started):
        resume = command_line(["retinanet", "train", "--resume", str(interrupted)])
        print(f"retinanet demo: training was interrupted; resume it with: {resume}", file=sys.stderr)
        return 130
    if not _written_since(run / "best.pt", started):
        print(f"retinanet demo: error: training wrote no {run / 'best.pt'}; stopped", file=sys.stderr)
        return 2
    return 0


def _on_cpu(opts: DemoOptions) -> bool:
    """The demo trains on a CPU (no GPU, or --device cpu)."""
    return opts.device == "cpu" or (opts.device in (None, "auto") and not torch.cuda.is_available())


def _native_bf16_cpu(opts: DemoOptions) -> bool:
    """The demo trains on a CPU that computes bf16 natively."""
    return _on_cpu(opts) and cpu_has_native_bf16()


def _written_since(path: Path, started: float) -> bool:
    """``path`` was written by this run, not left by an earlier demo."""
    return path.is_file() and path.stat().st_mtime >= started
