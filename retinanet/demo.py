"""``retinanet demo``: synthetic data -> quick training -> eval -> predictions, with the real commands.

The demo runs exactly what a user would type, through ``retinanet.cli.main``::

    retinanet train --config quick_synthetic --out OUT/train [overrides]
    retinanet eval --weights OUT/train/best.pt --data SYNTHETIC_ROOT --out OUT/eval
    retinanet predict VAL_IMAGES... --weights OUT/train/best.pt --out OUT/predict

``SYNTHETIC_ROOT`` is the folder the recipe trains on: ``default_synthetic_root`` of the recipe's
``data.synthetic_train/_val/_size`` (``DataConfig`` defaults when absent, demo options when given),
read when the demo runs, so the recipe can change without touching the demo. It stops at the
first command that does not exit 0 and ends with a summary of the results and where they are.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from retinanet.errors import RetinaNetError

RECIPE = "quick_synthetic"
# options the demo sets itself: given after "--" they would train elsewhere than it evaluates
RESERVED = ("--config", "--data", "--format", "--out", "--resume", "--synthetic-train", "--synthetic-val", "--synthetic-size")


@dataclass(frozen=True)
class DemoOptions:
    """What ``run_demo`` needs; None = the recipe's (or the command's) default."""

    out: str = "demo"
    device: str | None = None
    epochs: int | None = None
    workers: int | None = None
    synthetic_train: int | None = None
    synthetic_val: int | None = None
    synthetic_size: int | None = None
    num_images: int = 8  # validation images drawn by predict
    train_options: tuple[str, ...] = field(default=())  # passed to ``retinanet train`` unchanged


def recipe_data(recipe: str | None = None) -> dict:
    """The ``data:`` section of a recipe or config file (default ``RECIPE``; empty when it has none)."""
    import yaml

    from retinanet.config import find_config

    path = find_config(recipe or RECIPE)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RetinaNetError(f"{path}: cannot read config ({err})") from None
    return dict(loaded.get("data") or {})


def synthetic_options(data: dict, opts: DemoOptions) -> dict[str, int]:
    """``default_synthetic_root`` keywords: demo options, else the recipe's, else ``DataConfig``'s."""
    from retinanet.config import DataConfig

    defaults = {f.name: f.default for f in fields(DataConfig)}
    pick = {k: next(v for v in (getattr(opts, k), data.get(k), defaults[k]) if v is not None)
            for k in ("synthetic_train", "synthetic_val", "synthetic_size")}
    return {"num_train": int(pick["synthetic_train"]), "num_val": int(pick["synthetic_val"]),
            "image_size": int(pick["synthetic_size"])}


def val_images(root: Path, n: int) -> list[Path]:
    """The first ``n`` images of the synthetic set's val split (``ImageSets/Main/val.txt``)."""
    year = Path(root) / "VOCdevkit" / "VOC2012"
    listing = year / "ImageSets" / "Main" / "val.txt"
    if not listing.is_file():
        raise RetinaNetError(f"{listing}: split file missing (delete {root} to regenerate the synthetic dataset)")
    stems = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()][:n]
    return [year / "JPEGImages" / f"{s}.jpg" for s in stems]


def _common(opts: DemoOptions) -> list[str]:
    return [a for k in ("device", "workers") if getattr(opts, k) is not None for a in (f"--{k}", str(getattr(opts, k)))]


def demo_commands(opts: DemoOptions, root: Path, images: list[Path]) -> list[tuple[str, list[str]]]:
    """``[(step name, argv of retinanet.cli.main)]``: train, eval, predict."""
    out = Path(opts.out)
    best = str(out / "train" / "best.pt")
    bad = [a for a in opts.train_options if a.split("=", 1)[0] in RESERVED]
    if bad:
        raise RetinaNetError(f"{', '.join(bad)}: set by the demo itself, not allowed after '--' "
                             "(use the demo's --out and --synthetic-* options)")
    train = ["train", "--config", RECIPE, "--out", str(out / "train"), *_common(opts)]
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
        return json.loads(path.read_text()).get("metrics", {})
    except (OSError, ValueError):
        return {}


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def summary_text(out: Path, root: Path, seconds: dict[str, float]) -> str:
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
        "  retinanet check-data --data PATH/TO/VOCdevkit          # your own data (VOC, flat VOC export or COCO JSON)",
        "  retinanet train --data PATH/TO/VOCdevkit --out runs/mine",
        f"  retinanet eval --weights {best} --data {root} --voc",
        f"  retinanet predict IMAGES_OR_FOLDER --weights {best}",
        f"  retinanet export --weights {best} --out {out / 'model.onnx'}",
    ])


def run_demo(opts: DemoOptions) -> int:
    """Generate the data, run train, eval and predict; the first non-zero exit status stops it."""
    from retinanet.cli import main
    from retinanet.data import ensure_synthetic

    out = Path(opts.out)
    seconds: dict[str, float] = {}
    t0 = time.time()
    data = recipe_data()
    if data.get("root") is not None:
        raise RetinaNetError(f"recipe {RECIPE} sets data.root ({data['root']}); the demo runs on the embedded synthetic dataset")
    syn = synthetic_options(data, opts)
    print(f"[1/4] synthetic dataset: {syn['num_train']} train + {syn['num_val']} val images of {syn['image_size']} px "
          "(written on first use, then reused)", flush=True)
    root = ensure_synthetic(**syn)
    seconds["data"] = time.time() - t0
    commands = demo_commands(opts, root, val_images(root, opts.num_images))
    for k, (name, argv) in enumerate(commands, start=2):
        print(f"\n[{k}/4] retinanet {shlex.join(argv)}", flush=True)
        t0 = time.time()
        try:
            code = main(argv)
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
    print(summary_text(out, root, seconds))
    return 0


def _check_training(run: Path, started: float) -> int:
    """0 when this run wrote ``run/best.pt`` and was not interrupted (Ctrl-C); else a message and non-zero."""
    def fresh(path: Path) -> bool:  # written by this run, not left by an earlier demo
        return path.is_file() and path.stat().st_mtime >= started

    interrupted = run / "interrupted.pt"
    if fresh(interrupted):
        print(f"retinanet demo: training was interrupted; resume it with: retinanet train --resume {interrupted}", file=sys.stderr)
        return 130
    if not fresh(run / "best.pt"):
        print(f"retinanet demo: error: training wrote no {run / 'best.pt'}; stopped", file=sys.stderr)
        return 2
    return 0
