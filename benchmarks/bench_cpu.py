"""CPU speed of our model against the CPU's fp32 peak: FLOPs, GFLOP/s, where the time goes, A/B variants.

    python benchmarks/bench_cpu.py --model demo --avx2 --iters 6
    python benchmarks/bench_cpu.py --model quick --avx2 --variants base,nchw,threads1 --iters 6
    python benchmarks/bench_cpu.py --model r50 --avx2 --mode infer --profile 15
    python benchmarks/bench_cpu.py --model demo --avx2 --archs resnet18_fpn_v2,regnet_x_400mf_fpn_v2

``--model`` picks one of three shapes: ``demo`` (the demo recipe's ResNet-18 FPN v2, 32 channels,
2-conv heads, batch 16 at 160 px, trained from scratch; ``--archs resnet18_fpn_v2,regnet_x_400mf_fpn_v2``
adds the RegNetX-400MF body a time-budgeted fp32 demo trains), ``quick`` (the quick recipe's: 64 channels,
4-conv heads, batch 8 at 160 px) and ``r50`` (ResNet-50 FPN, 256 channels, frozen BN and 3 trained
stages as when fine-tuning, batch 4 at 512 px, 91 classes). A training step is what ``retinanet
train`` runs (forward with the loss, backward, fused AdamW step); inference is ``model.eval()``
under ``torch.inference_mode`` with the post-processing.

FLOPs are counted once per mode with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
and matrix products, forward and backward; elementwise ops are not counted, as usual), and the
achieved rate is FLOPs / median time. The peak is computed from the clock: cores x 2 FMA units x
lanes x 2 flops per FMA x GHz, with 8 fp32 lanes for AVX2 (16 with AVX-512 when the CPU has it
and ``--avx2`` is not given) and the GHz of ``/proc/cpuinfo``'s "cpu MHz" (``--ghz`` overrides);
2 FMA units per core fits AMD Zen 2-4 and Intel Skylake-SP and later server cores.

``--avx2`` re-runs the script with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` (and fp32),
so any x86 machine computes with the AVX2 kernels a laptop or CI runner has.

``--variants`` times several settings of the same model A/B in one run, interleaved (round r
runs them in order, round r+1 reversed), and prints each one's median images/s and its ratio to
the first:

- ``base``: channels_last (``retinanet train``'s default), torch's thread count
- ``nchw``: contiguous (NCHW) layout
- ``threads1``: ``torch.set_num_threads(1)`` while it runs
- ``compile``: ``torch.compile`` (inductor) of the network (backbone, FPN and heads; the loss
  and post-processing stay eager); its compile time is printed apart
- ``bn_unfolded``: inference only: the body's ``BatchNorm2d`` run as separate ops after each conv
  (what the model did before it folded them into the conv in eval mode)
- ``gn_fp32``: heads' GroupNorm replaced by ``F.group_norm`` on channels_last input made
  contiguous first (to see what GroupNorm costs in each layout)

``--archs A,B,...`` compares backbones instead: the preset with each arch (``base`` setting),
interleaved the same way, each with its own FLOPs and GFLOP/s; the ratio is in images/s.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

PRESETS = {
    "demo": dict(arch="resnet18_fpn_v2", norm="bn", trainable_backbone_layers=5, fpn_channels=32, head_convs=2,
                 image_size=160, batch_size=16, num_classes=5, anchor_sizes=(24, 48, 96, 192, 384)),
    "quick": dict(arch="resnet18_fpn_v2", norm="bn", trainable_backbone_layers=5, fpn_channels=64, head_convs=4,
                  image_size=160, batch_size=8, num_classes=5, anchor_sizes=(24, 48, 96, 192, 384)),
    "r50": dict(arch="resnet50_fpn", norm="frozen_bn", trainable_backbone_layers=3, fpn_channels=256, head_convs=4,
                image_size=512, batch_size=4, num_classes=91, anchor_sizes=(32, 64, 128, 256, 512)),
}
VARIANTS = ("base", "nchw", "threads1", "compile", "bn_unfolded", "gn_fp32")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", choices=list(PRESETS))
    p.add_argument("--mode", default="both", choices=["both", "train", "infer"])
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--image-size", type=int, help="default: the preset's")
    p.add_argument("--iters", type=int, default=5, help="timed rounds per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per mode")
    p.add_argument("--variants", default="base", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--archs", help="comma-separated archs to compare, interleaved, in the base setting "
                   "(instead of --variants), e.g. resnet18_fpn_v2,regnet_x_400mf_fpn_v2")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for every variant (default: torch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, torch.profiler of 2 steps of the first variant: the top N ops by self CPU time")
    p.add_argument("--avx2", action="store_true", help="re-run with " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
    p.add_argument("--ghz", type=float, help="clock for the peak (default: /proc/cpuinfo cpu MHz)")
    return p.parse_args(argv)


def reexec_avx2(script: str, argv: list[str]) -> None:
    """Runs ``script`` again under the AVX2 environment and exits with its status; returns at once
    when the environment is already set (in the child). The variables are read when torch loads,
    hence a new process."""
    if all(os.environ.get(k) == v for k, v in AVX2_ENV.items()):
        return
    env = dict(os.environ, **AVX2_ENV)
    sys.exit(subprocess.call([sys.executable, os.path.abspath(script), *argv], env=env))


def isa_line() -> str:
    """The kernel-selecting environment and what torch uses, e.g. ``ONEDNN_MAX_CPU_ISA=AVX2 ... (torch: AVX2)``."""
    import torch

    env = " ".join(f"{k}={os.environ.get(k, '-')}" for k in AVX2_ENV)
    return f"{env} (torch: {torch.backends.cpu.get_cpu_capability()})"


def cpu_info() -> tuple[str, float | None, set[str]]:
    """(model name, MHz of the first core, flags) from /proc/cpuinfo ("unknown", None, {} elsewhere)."""
    name, mhz, flags = "unknown CPU", None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, mhz, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, mhz, flags


def fp32_peak_gflops(cores: int, ghz: float, avx512: bool) -> float:
    """cores x 2 FMA units x lanes (8 AVX2, 16 AVX-512) x 2 flops per FMA x GHz."""
    return cores * 2 * (16 if avx512 else 8) * 2 * ghz


def build(preset: dict):
    from retinanet.model import build_model

    keys = ("norm", "trainable_backbone_layers", "fpn_channels", "head_convs", "anchor_sizes")
    return build_model(preset["arch"], num_classes=preset["num_classes"], min_size=preset["image_size"],
                       max_size=preset["image_size"], **{k: preset[k] for k in keys})


def make_inputs(batch: int, size: int, num_classes: int, boxes: int = 5):
    import torch

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * size * 0.7
        wh = 12 + torch.rand(boxes, 2, generator=g) * (size * 0.3 - 12)
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(1, num_classes, (boxes,), generator=g)})
    return images, targets


class Variant:
    """One setting of the model: builds it, runs a training step or inference."""

    def __init__(self, name: str, base_model, args, mode: str, label: str | None = None):
        import torch

        self.name, self.label = name, label or name
        self.threads = 1 if name == "threads1" else (args.threads or torch.get_num_threads())
        model = copy.deepcopy(base_model)
        if name != "nchw":
            model.to(memory_format=torch.channels_last)
        if name == "bn_unfolded":
            unfold_bn(model)
        if name == "gn_fp32":
            patch_group_norm(model)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None
        self.compile_s = 0.0
        if name == "compile":
            t0 = time.perf_counter()
            model.backbone = torch.compile(model.backbone)
            model.head.classification_head.conv = torch.compile(model.head.classification_head.conv)
            model.head.regression_head.conv = torch.compile(model.head.regression_head.conv)
            self.compile_s = time.perf_counter() - t0  # lazy: the first calls compile (measured below)

    def run(self, mode: str, images, targets) -> float:
        import torch

        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            t0 = time.perf_counter()
            if mode == "train":
                self.model.train()
                losses = self.model(images, targets)
                loss = sum(losses.values())
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            else:
                self.model.eval()
                with torch.inference_mode():
                    self.model(images)
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(prev)


def unfold_bn(model) -> None:
    """Wraps each ``BatchNorm2d`` of the body in a module that ``conv_norm`` does not fold (a timed copy only)."""
    from torch import nn

    class Unfolded(nn.Module):
        def __init__(self, bn):
            super().__init__()
            self.bn = bn

        def forward(self, x):
            return self.bn(x)

    for parent in list(model.backbone.body.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, child_name, Unfolded(child))


def patch_group_norm(model) -> None:
    """Heads' GroupNorm run on a contiguous (NCHW) copy of their input, output back in channels_last."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ContiguousGroupNorm(nn.GroupNorm):
        def forward(self, x):
            y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)

    for module in model.head.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = ContiguousGroupNorm


def count_flops(variant: Variant, mode: str, images, targets) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        variant.run(mode, images, targets)
    return counter.get_total_flops()


def profile(variant: Variant, mode: str, images, targets, top: int) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            variant.run(mode, images, targets)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.avx2:
        reexec_avx2(__file__, argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    preset = dict(PRESETS[args.model])
    preset["batch_size"] = args.batch_size or preset["batch_size"]
    preset["image_size"] = args.image_size or preset["image_size"]
    archs = [a.strip() for a in (args.archs or "").split(",") if a.strip()]
    if archs and names != ["base"]:
        sys.exit(f"--archs compares the archs in the base setting: --variants {args.variants} with it would be ignored")
    torch.manual_seed(0)
    base_model = None if archs else build(preset)
    arch_models = {a: build(preset | {"arch": a}) for a in archs}
    images, targets = make_inputs(preset["batch_size"], preset["image_size"], preset["num_classes"])

    cpu, mhz, flags = cpu_info()
    ghz = args.ghz or (mhz or 0) / 1000
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    avx512 = "avx512f" in flags and isa.upper() != "AVX2"
    threads = args.threads or torch.get_num_threads()
    peak = fp32_peak_gflops(threads, ghz, avx512)
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads; {isa_line()}")
    print(f"fp32 peak: {threads} cores x 2 FMA units x {16 if avx512 else 8} lanes x 2 flops x {ghz:.3f} GHz "
          f"= {peak:.1f} GFLOP/s")
    print(f"model {args.model}: {' | '.join(archs) if archs else preset['arch']}, norm {preset['norm']}, {preset['trainable_backbone_layers']} trained "
          f"stages, fpn {preset['fpn_channels']}x{preset['head_convs']} convs, {preset['num_classes']} classes; batch "
          f"{preset['batch_size']} x {preset['image_size']} px; fp32; {args.iters} timed rounds after {args.warmup}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    for mode in modes:
        names_m = [n for n in names if not (mode == "train" and n == "bn_unfolded")]
        if archs:
            variants = [Variant("base", arch_models[a], args, mode, label=a) for a in archs]
        else:
            variants = [Variant(n, base_model, args, mode) for n in names_m]
        flops_of = {v.label: count_flops(v, mode, images, targets) for v in (variants if archs else variants[:1])}
        flops = next(iter(flops_of.values()))
        first: dict[str, float] = {}
        for v in variants:  # first call: compile (if any) and warm caches
            first[v.label] = v.run(mode, images, targets)
        times: dict[str, list[float]] = {v.label: [] for v in variants}
        for r in range(args.warmup - 1 + args.iters):
            for v in variants if r % 2 == 0 else variants[::-1]:
                dt = v.run(mode, images, targets)
                if r >= args.warmup - 1:
                    times[v.label].append(dt)
        label = "train step" if mode == "train" else "inference"
        for name, f in flops_of.items():
            print(f"{label}{' ' + name if archs else ''}: {f / 1e9:.2f} GFLOP per batch ({f / 1e9 / preset['batch_size']:.2f} per image)")
        ref, width = None, max(9, *(len(v.label) for v in variants))
        for v in variants:
            med = statistics.median(times[v.label])
            ips = preset["batch_size"] / med
            rate = flops_of.get(v.label, flops) / med / 1e9
            ref = ref or ips
            extra = f", first call {first[v.label]:.1f} s" if v.name == "compile" else ""
            print(f"  {v.label:{width}s} {ips:8.2f} images/s  {med * 1000:8.1f} ms/batch  {rate:6.1f} GFLOP/s "
                  f"= {100 * rate / peak:4.1f}% of peak  ratio {ips / ref:.2f}x{extra}")
        if args.profile:
            print(profile(variants[0], mode, images, targets, args.profile))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
