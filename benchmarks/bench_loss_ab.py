"""CPU time of the training loss, and of the whole training step, with this checkout's loss against
another checkout's, alternating in one process (fair on a loaded machine: both see the same load).

    git worktree add /tmp/base BASE_COMMIT
    python benchmarks/bench_loss_ab.py --base /tmp/base                          # the quick recipe's step
    python benchmarks/bench_loss_ab.py --base /tmp/base --loss-only --size 512 --classes 91 --batch-size 4

``--base`` names a checkout whose ``retinanet/model/loss.py`` is loaded beside this one's (it must
import only modules this checkout shares with it). Each step (or loss forward + backward) runs
with one of the two losses, in the order base, this, this, base, ...; the first 4 are warm-up.
Whole steps (``retinanet.engine.train.loop.train_step``, fused SGD, fp32, one thread) measure what
a loss change costs a training run; ``--loss-only`` times the loss alone on random head outputs.
Times are CPU seconds of this process (``time.process_time``), medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

import retinanet.model.loss as this_loss
import retinanet.model.retinanet as R
from retinanet.config import TrainConfig
from retinanet.engine.runtime.precision import resolve_precision
from retinanet.engine.train.loop import LOSSES, StepMeter, train_step
from retinanet.engine.train.optim import build_optimizer
from retinanet.model import build_model
from retinanet.model.anchors import AnchorCache


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the other checkout (its retinanet/model/loss.py)")
    p.add_argument("--loss-only", action="store_true", help="the loss alone, on random head outputs")
    p.add_argument("--arch", default="resnet18_fpn_v2", help="[resnet18_fpn_v2: the quick recipe's]")
    p.add_argument("--fpn-channels", type=int, default=64)
    p.add_argument("--head-convs", type=int, default=4)
    p.add_argument("--size", type=int, default=160, help="square input side [160]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=5, help="classification outputs [5]")
    p.add_argument("--box-loss", choices=["l1", "giou"], help="--loss-only: [giou for a v2 arch, else l1]")
    p.add_argument("--steps", type=int, default=40, help="timed steps, half with each loss [40]")
    return p.parse_args(argv)


def load_base_loss(base: Path):
    spec = importlib.util.spec_from_file_location("base_loss", base / "retinanet" / "model" / "loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_targets(args, g: torch.Generator) -> list[dict]:
    targets = []
    for _ in range(args.batch_size):
        xy = torch.rand(5, 2, generator=g) * args.size * 0.6
        boxes = torch.cat([xy, xy + 16 + torch.rand(5, 2, generator=g) * args.size * 0.3], 1).clamp(max=args.size)
        targets.append({"boxes": boxes, "labels": torch.randint(1, args.classes, (5,), generator=g)})
    return targets


def step_runner(args, g):
    """One training step per call, with the loss ``R.retinanet_loss`` holds at the time."""
    model = build_model(args.arch, num_classes=args.classes, norm="bn", trainable_backbone_layers=5,
                        fpn_channels=args.fpn_channels, head_convs=args.head_convs, min_size=args.size,
                        max_size=args.size).to(memory_format=torch.channels_last).train()
    cfg = TrainConfig(lr=0.001, amp="off")
    opt = build_optimizer(model, cfg, fused=True)
    scaler, precision, device = torch.amp.GradScaler("cpu", enabled=False), resolve_precision("off", "cpu"), torch.device("cpu")
    images = [torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8, generator=g) for _ in range(args.batch_size)]
    targets = make_targets(args, g)
    meter = StepMeter(device, LOSSES, 0, 5)
    count = [0]

    def run(loss_fn):
        R.retinanet_loss = loss_fn
        meter.add(train_step(model, opt, images, targets, cfg, device, scaler, precision), len(images), count[0])
        count[0] += 1
    return run


def loss_runner(args, g):
    """The loss forward + backward per call, on fixed random head outputs."""
    size = args.size
    hws = [((size + s - 1) // s, (size + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    anchors = torch.cat(AnchorCache()(hws, (size, size), "cpu"))
    n = anchors.shape[0]
    cls = (torch.randn(args.batch_size, n, args.classes, generator=g) - 4).requires_grad_()
    reg = (torch.randn(args.batch_size, n, 4, generator=g) * 0.1).requires_grad_()
    targets = make_targets(args, g)
    box_loss = args.box_loss or ("giou" if args.arch.endswith("_v2") else "l1")

    def run(loss_fn):
        out = loss_fn(cls, reg, anchors, targets, box_loss)
        (out["classification"] + out["bbox_regression"]).backward()
        cls.grad = reg.grad = None
    return run


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    losses = {"base": load_base_loss(Path(args.base)).retinanet_loss, "this": this_loss.retinanet_loss}
    g = torch.Generator().manual_seed(0)
    run = (loss_runner if args.loss_only else step_runner)(args, g)
    times: dict[str, list[float]] = {"base": [], "this": []}
    for i in range(4 + args.steps):
        which = ("base", "this", "this", "base")[i % 4]
        t = time.process_time()
        run(losses[which])
        if i >= 4:
            times[which].append(time.process_time() - t)
    R.retinanet_loss = this_loss.retinanet_loss
    what = "loss fwd+bwd" if args.loss_only else "train step"
    print(f"{what}: {args.arch}, {args.batch_size} x {args.size} px, {args.classes} classes, one thread, "
          f"{args.steps // 2} timed of each (CPU time, median / min)")
    for k, v in times.items():
        print(f"  {k:5s} {statistics.median(v) * 1e3:9.2f} ms / {min(v) * 1e3:9.2f} ms")
    print(f"  this/base: {statistics.median(times['this']) / statistics.median(times['base']):.3f} (medians), "
          f"{min(times['this']) / min(times['base']):.3f} (minima)")


if __name__ == "__main__":
    main()
