"""Model speed: our RetinaNet against torchvision's on the same inputs, weights and machine.

    python benchmarks/bench_model.py --batch-size 4 --image-size 512 --arch resnet50_fpn --iters 5

Times a training step (forward + backward + SGD step) and inference (``torch.inference_mode``)
for both models, alternating ours / torchvision's within one run (the order flips every round,
so load changes on a shared machine hit both alike), and prints the median images/s of each
and the ratio ours / torchvision's.

The torchvision model is ``torchvision.models.detection.RetinaNet`` built from torchvision's own
parts for the same arch (``resnet_fpn_backbone``-style ResNet + ``BackboneWithFPN`` +
``LastLevelP6P7`` + ``RetinaNetHead``; for ``resnet50_fpn`` with ``--norm bn --trainable-layers 5``
that is exactly ``retinanet_resnet50_fpn(weights=None)``); ours loads its state_dict, so both
hold the same weights. Images are random, already at ``--image-size`` (``min_size = max_size =
image size``), so neither model has to resize (torchvision's transform still interpolates at
scale 1). ``--fpn-channels`` / ``--head-convs`` build both with the same slimmer FPN/heads.

``--avx2`` runs it again under ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: the AVX2 kernels
(no AVX-512, no AMX) on any x86 CPU, as most laptops, notebook runtimes and CI runners have them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial

import torch
from torch import nn

from bench_cpu import isa_line, reexec_avx2
from retinanet.model import build_model
from retinanet.model.retinanet import ARCHS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50_fpn", choices=list(ARCHS))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=512, help="square input side, pixels")
    p.add_argument("--num-classes", type=int, default=91)
    p.add_argument("--norm", default="frozen_bn", choices=["frozen_bn", "bn"])
    p.add_argument("--trainable-layers", type=int, default=3, help="trainable ResNet stages (0..5)")
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--head-convs", type=int, default=4)
    p.add_argument("--boxes", type=int, default=5, help="ground-truth boxes per training image")
    p.add_argument("--score-thresh", type=float, default=0.05, help="inference score threshold (both)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--iters", type=int, default=5, help="timed rounds per mode (each times both models)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per mode")
    p.add_argument("--mode", default="both", choices=["both", "train", "infer"])
    p.add_argument("--channels-last", action="store_true", help="both models and inputs in channels_last")
    p.add_argument("--ours-channels-last", action="store_true",
                   help="only our model in channels_last (torchvision's as it comes: NCHW)")
    p.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU, fp16 on CUDA (--amp-dtype)")
    p.add_argument("--amp-dtype", choices=["bf16", "fp16"], help="autocast dtype (default bf16 CPU, fp16 CUDA)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--ours-only", action="store_true", help="do not build or time torchvision's model")
    p.add_argument("--avx2", action="store_true",
                   help="re-run with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (the AVX2 kernels of most laptops "
                   "and CI runners, on any x86 CPU); fp32 unless --amp")
    return p.parse_args(argv)


def machine(device: torch.device) -> str:
    """One line: CPU model, cores, threads, torch version (and the GPU)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"python {platform.python_version()}, {isa_line()}")
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def setup(args: argparse.Namespace) -> torch.device:
    """Applies ``--threads`` and returns the device of ``--device`` (auto: CUDA when present)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build_torchvision(args: argparse.Namespace) -> nn.Module:
    """torchvision's RetinaNet from its own parts, configured like ``build_model`` with ``args``."""
    from torchvision.models import resnet
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    depth, v2 = ARCHS[args.arch]
    norm = FrozenBatchNorm2d if args.norm == "frozen_bn" else nn.BatchNorm2d
    body = getattr(resnet, depth)(weights=None, norm_layer=norm)
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][: args.trainable_layers]
    if args.trainable_layers == 5:
        stages.append("bn1")
    for name, p in body.named_parameters():
        if all(not name.startswith(s) for s in stages):
            p.requires_grad_(False)
    c5, ch = body.fc.in_features, args.fpn_channels
    extra = LastLevelP6P7(c5, ch) if v2 else LastLevelP6P7(ch, ch)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c5 // 4, c5 // 2, c5], ch,
                               extra_blocks=extra)
    head = RetinaNetHead(ch, 9, args.num_classes, norm_layer=partial(nn.GroupNorm, 32) if v2 else None)
    for subnet in (head.classification_head, head.regression_head):
        subnet.conv = subnet.conv[: args.head_convs]
    if v2:
        head.regression_head._loss_type = "giou"
    return RetinaNet(backbone, args.num_classes, min_size=args.image_size, max_size=args.image_size, head=head,
                     score_thresh=args.score_thresh)


def build_ours(args: argparse.Namespace) -> nn.Module:
    return build_model(args.arch, num_classes=args.num_classes, min_size=args.image_size, max_size=args.image_size,
                       norm=args.norm, trainable_backbone_layers=args.trainable_layers, score_thresh=args.score_thresh,
                       fpn_channels=args.fpn_channels, head_convs=args.head_convs)


def make_inputs(args: argparse.Namespace, device: torch.device):
    """Random images ``[3, S, S]`` in 0..1 and ``--boxes`` random boxes per image (labels 1..C-1)."""
    g = torch.Generator().manual_seed(0)
    s, n = args.image_size, args.boxes
    images = [torch.rand(3, s, s, generator=g).to(device) for _ in range(args.batch_size)]
    targets = []
    for _ in range(args.batch_size):
        xy = torch.rand(n, 2, generator=g) * s * 0.7
        wh = 16 + torch.rand(n, 2, generator=g) * (s * 0.3 - 16)
        boxes = torch.cat([xy, (xy + wh).clamp(max=s)], 1)
        labels = torch.randint(1, max(args.num_classes, 2), (n,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    if args.channels_last:
        images = [im[None].contiguous(memory_format=torch.channels_last)[0] for im in images]
    return images, targets


class Runner:
    """One model with its optimizer and grad scaler; ``train_step`` / ``infer`` time one call."""

    def __init__(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None):
        self.model = model
        self.device = device
        self.amp_dtype = amp_dtype
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, images, targets) -> float:
        self.model.train()
        self._sync()
        t0 = time.perf_counter()
        with self._autocast():
            losses = self.model(images, targets)
        loss = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self._sync()
        return time.perf_counter() - t0

    def infer(self, images) -> float:
        self.model.eval()
        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            self.model(images)
        self._sync()
        return time.perf_counter() - t0


def time_mode(runners: dict[str, Runner], mode: str, images, targets, iters: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, alternating; the order flips every round."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + iters):
        for name in names if r % 2 == 0 else names[::-1]:
            run = runners[name]
            dt = run.train_step(images, targets) if mode == "train" else run.infer(images)
            if r >= warmup:
                times[name].append(dt)
    return times


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.avx2:
        reexec_avx2(__file__, argv)
    device = setup(args)
    amp_dtype = None
    if args.amp:
        name = args.amp_dtype or ("fp16" if device.type == "cuda" else "bf16")
        amp_dtype = torch.float16 if name == "fp16" else torch.bfloat16
    torch.manual_seed(0)
    models = {}
    if not args.ours_only:
        tv = build_torchvision(args)
        ours = build_ours(args)
        ours.load_state_dict(tv.state_dict())  # same keys, same weights
        models = {"ours": ours, "torchvision": tv}
    else:
        models = {"ours": build_ours(args)}
    for name, m in models.items():
        m.to(device)
        if args.channels_last or (args.ours_channels_last and name == "ours"):
            m.to(memory_format=torch.channels_last)
    runners = {k: Runner(m, device, amp_dtype) for k, m in models.items()}
    images, targets = make_inputs(args, device)

    print(f"machine: {machine(device)}")
    print(f"device {device}; arch {args.arch}, norm {args.norm}, trainable layers {args.trainable_layers}, "
          f"fpn {args.fpn_channels}x{args.head_convs} convs, {args.num_classes} classes; batch {args.batch_size} x "
          f"{args.image_size}px; channels_last {'ours only' if args.ours_channels_last else args.channels_last}; amp {amp_dtype}; "
          f"{args.iters} timed rounds after {args.warmup} warm-up")
    print(f"load average before: {load_average()}")
    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    for mode in modes:
        times = time_mode(runners, mode, images, targets, args.iters, args.warmup)
        ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
        line = "  ".join(f"{k} {v:7.2f} images/s" for k, v in ips.items())
        if "torchvision" in ips:
            line += f"  ratio ours/torchvision {ips['ours'] / ips['torchvision']:.2f}x"
        label = "train step" if mode == "train" else "inference "
        print(f"{label}: {line}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
