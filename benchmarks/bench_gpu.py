"""GPU benchmark: our RetinaNet against torchvision's at a fixed input size, plus the data loader.

    python benchmarks/bench_gpu.py --json bench_gpu.json --compile --cuda-graphs --sync-debug 20
    python benchmarks/bench_gpu.py --device cpu --tiny          # CPU smoke run (tests/test_benchmarks.py)

Models: ``retinanet.build_model(ARCH, num_classes=91)`` (by default ``resnet50_fpn``, FrozenBatchNorm,
3 trainable ResNet stages, as ``retinanet train`` builds it) and torchvision's ``RetinaNet`` built
by ``bench_model.build_torchvision`` with the same settings (``retinanet_resnet50_fpn``'s parts;
with ``--norm bn --trainable-layers 5`` exactly ``retinanet_resnet50_fpn(weights=None,
weights_backbone=None)``). torchvision loads our ``state_dict`` (same keys): same weights. Both
run in channels_last on the same random float images of ``--height x --width`` (800x1216 by
default: a multiple of 32, and the models' ``min_size``/``max_size`` are set so that neither
resizes it), so every step has the same shapes.

Rows (each prints when done; a row that fails prints its error and the others go on; the JSON
file is rewritten after every row, so a run cut short keeps what it measured):

- ``train fp32`` / ``train bf16``: forward + backward + SGD step at ``--batch-size``, images/s,
  ours and torchvision's alternating (``bench_model.time_mode``: the order flips every round),
  and the peak CUDA memory of one step above what was allocated before it;
- ``infer fp32`` / ``infer bf16``: the whole detector (pre-processing, network, decoding, NMS)
  under ``torch.inference_mode``;
- ``loader W workers``: ``retinanet.data.build_loader`` on ``--loader-images`` synthetic JPEGs
  (``make_synthetic``, ``--loader-size`` square: 1000 px has the pixel count of 800x1216)
  resized to the model input, to compare with the training rate;
- ``--sync-debug N``: N steady-state training steps of ours (AMP; the training loop's own
  ``train_step`` with the fused SGD it uses, and ``StepMeter.add``) under
  ``torch.cuda.set_sync_debug_mode("warn")``; counts the host-device synchronisations and
  reports where in the code each one happens (CUDA only; ``benchmarks/sync_audit.py`` finds
  them on a CPU);
- ``--cuda-graphs``: the network alone (backbone -> FPN -> heads: ``RetinaNet.forward_raw`` and
  torchvision's ``head(backbone(x))``) eager and replayed from a CUDA graph, AMP;
  post-processing (data-dependent shapes) stays outside the graph (CUDA only);
- ``--compile``: ``torch.compile`` on the backbone and the head subnets of both models, then
  training and inference with AMP (last, because it changes the models; warm-up includes the
  compilation, which is not timed).

``--time-budget S`` skips the rows that would start more than S seconds after the script's
imports, and the compiled rows when less than their compilation time (90 and 45 s, guessed for a
cold cache) is left (the GPU check gives every stage a deadline).
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

START = time.perf_counter()  # --time-budget counts from here (after the imports of torch)

import retinanet  # noqa: E402
from bench_model import Runner, build_torchvision, load_average, machine, setup, time_mode  # noqa: E402
from retinanet import build_model  # noqa: E402
from retinanet.engine.runtime.precision import Precision, resolve_precision  # noqa: E402
from retinanet.engine.train.loop import LOSSES, StepMeter, train_step  # noqa: E402
from retinanet.engine.train.optim import build_optimizer, set_lr  # noqa: E402
from retinanet.config import DataConfig, TrainConfig  # noqa: E402
from retinanet.data import build_datasets, build_loader, make_synthetic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(retinanet.__file__).resolve().parent
TORCH_DIR = Path(torch.__file__).resolve().parent

# Sizes of a real run and of the CPU smoke run (--tiny); any option given on the command line wins.
FULL = dict(arch="resnet50_fpn", num_classes=91, fpn_channels=256, head_convs=4, batch_size=8, height=800,
            width=1216, iters=10, warmup=3, loader_images=256, loader_size=1000, workers=[0, 4, 8],
            loader_batch_size=8)
TINY = dict(arch="resnet18_fpn", num_classes=5, fpn_channels=32, head_convs=1, batch_size=2, height=64, width=96,
            iters=1, warmup=0, loader_images=4, loader_size=96, workers=[0, 1], loader_batch_size=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--tiny", action="store_true", help="toy sizes and 1 iteration (CPU smoke test)")
    p.add_argument("--arch", help="model (default resnet50_fpn; --tiny: resnet18_fpn)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--norm", default="frozen_bn", choices=["frozen_bn", "bn"])
    p.add_argument("--trainable-layers", type=int, default=3, help="trainable ResNet stages (0..5)")
    p.add_argument("--fpn-channels", type=int)
    p.add_argument("--head-convs", type=int)
    p.add_argument("--batch-size", type=int, help="images per step [8]")
    p.add_argument("--height", type=int, help="input height, pixels [800]")
    p.add_argument("--width", type=int, help="input width, pixels [1216]")
    p.add_argument("--boxes", type=int, default=5, help="ground-truth boxes per training image")
    p.add_argument("--score-thresh", type=float, default=0.05, help="inference score threshold (both)")
    p.add_argument("--iters", type=int, help="timed rounds per row (each times both models) [10]")
    p.add_argument("--warmup", type=int, help="untimed rounds per row [3]")
    p.add_argument("--amp-dtype", default="auto", choices=["auto", "bf16", "fp16"],
                   help="autocast dtype of the AMP rows; auto: what `retinanet train` picks on a GPU (bf16 where "
                   "the card has it, else fp16 with gradient scaling) and bf16 on CPU [auto]")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True "
                   "(off by default, as in retinanet train)")
    p.add_argument("--loader-images", type=int, help="synthetic JPEGs for the loader rows (0: no loader rows) [256]")
    p.add_argument("--loader-size", type=int, help="side of the synthetic JPEGs, pixels [1000]")
    p.add_argument("--loader-batch-size", type=int, help="loader batch size [8]")
    p.add_argument("--workers", type=int, nargs="+", help="loader worker counts, one row each [0 4 8]")
    p.add_argument("--sync-debug", type=int, default=0, metavar="N", help="count syncs over N training steps [off]")
    p.add_argument("--cuda-graphs", action="store_true", help="add the network-only eager vs CUDA-graph rows")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (train and infer, AMP)")
    p.add_argument("--time-budget", type=float, help="skip rows that would start after this many seconds")
    p.add_argument("--json", metavar="FILE", help="write the results here (rewritten after every row)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# --- models and inputs ----------------------------------------------------------------------------


def build_models(args: argparse.Namespace, device: torch.device) -> dict[str, torch.nn.Module]:
    """Ours and torchvision's, same config and weights, in channels_last on ``device``.

    Both get ``min_size = min(H, W)`` and ``max_size = max(H, W)``, so an ``H x W`` image is
    not resized (torchvision's transform still interpolates at scale 1, as it always does).
    """
    lo, hi = min(args.height, args.width), max(args.height, args.width)
    tv_args = argparse.Namespace(arch=args.arch, norm=args.norm, trainable_layers=args.trainable_layers,
                                 fpn_channels=args.fpn_channels, head_convs=args.head_convs,
                                 num_classes=args.num_classes, image_size=lo, score_thresh=args.score_thresh)
    torch.manual_seed(0)
    tv = build_torchvision(tv_args)
    tv.transform.min_size, tv.transform.max_size = (lo,), hi
    ours = build_model(args.arch, num_classes=args.num_classes, min_size=lo, max_size=hi, norm=args.norm,
                       trainable_backbone_layers=args.trainable_layers, score_thresh=args.score_thresh,
                       fpn_channels=args.fpn_channels, head_convs=args.head_convs)
    tv.load_state_dict(ours.state_dict())  # same keys, same weights
    return {name: m.to(device).to(memory_format=torch.channels_last) for name, m in
            (("ours", ours), ("torchvision", tv))}


def make_inputs(args: argparse.Namespace, device: torch.device):
    """``--batch-size`` random images ``[3, H, W]`` in 0..1 and ``--boxes`` random boxes each."""
    g = torch.Generator().manual_seed(0)
    h, w, n = args.height, args.width, args.boxes
    images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(args.batch_size)]
    targets = []
    size = torch.tensor([w, h], dtype=torch.float32)
    for _ in range(args.batch_size):
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(n, 2, generator=g) * (size * 0.3 - 16).clamp(min=1)
        boxes = torch.cat([xy, torch.minimum(xy + wh, size)], 1)
        labels = torch.randint(1, max(args.num_classes, 2), (n,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def amp_dtype_of(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    """The AMP rows' dtype; ``args.amp_dtype`` becomes its name ("auto" resolved as ``retinanet`` does)."""
    if args.amp_dtype == "auto":
        args.amp_dtype = resolve_precision("on", device).name  # on: bf16 also on CPUs without native bf16
    return torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MemRunner(Runner):
    """``bench_model.Runner`` that also records the peak CUDA memory of a call above what was
    allocated before it (activations, gradients, workspaces: not the resident weights of the
    other model), in bytes, in ``self.peak``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peak = 0

    def _measured(self, fn, *inputs) -> float:
        if self.device.type != "cuda":
            return fn(*inputs)
        sync(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        dt = fn(*inputs)
        self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - base)
        return dt

    def train_step(self, images, targets) -> float:
        return self._measured(super().train_step, images, targets)

    def infer(self, images) -> float:
        return self._measured(super().infer, images)


class CallRunner:
    """Times ``fn(batch)`` under ``torch.inference_mode`` and autocast (``infer``, as
    ``bench_model.time_mode`` calls it)."""

    def __init__(self, fn, device: torch.device, amp_dtype: torch.dtype | None):
        self.fn, self.device, self.amp_dtype = fn, device, amp_dtype

    def _autocast(self):
        # no weight-cast cache: a CUDA graph must not capture casts cached outside it
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None, cache_enabled=False)

    def infer(self, batch) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            self.fn(batch)
        sync(self.device)
        return time.perf_counter() - t0


class GraphRunner(CallRunner):
    """``fn`` captured once into a CUDA graph for a static input; ``infer`` copies the batch into
    that input and replays the graph."""

    def __init__(self, fn, example, device: torch.device, amp_dtype: torch.dtype | None):
        super().__init__(fn, device, amp_dtype)
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, not {device}")
        self.static_in = example.clone()
        side = torch.cuda.Stream(device)  # warm-up on a side stream, as torch.cuda.graph's docs do
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode(), self._autocast():
            for _ in range(3):
                fn(self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), self._autocast(), torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def infer(self, batch) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self.static_in.copy_(batch)
        self.graph.replay()
        sync(self.device)
        return time.perf_counter() - t0


def network_fns(models: dict[str, torch.nn.Module]) -> dict:
    """The network alone, ``[B, 3, H, W]`` normalised batch -> raw head outputs, for each model."""
    ours, tv = models["ours"], models["torchvision"]
    return {"ours": ours.forward_raw, "torchvision": lambda x: tv.head(list(tv.backbone(x).values()))}


def compile_parts(model: torch.nn.Module) -> None:
    """``torch.compile`` the backbone (ResNet + FPN) and the conv tower of each head subnet, in place.

    Both models call ``backbone`` and the subnets' ``conv`` as modules (ours does not call
    ``head`` itself), so compiling these parts treats both alike.
    """
    model.backbone = torch.compile(model.backbone)
    for subnet in (model.head.classification_head, model.head.regression_head):
        subnet.conv = torch.compile(subnet.conv)


# --- host-device synchronisations -----------------------------------------------------------------


def sync_site(stack: list[traceback.FrameSummary]) -> str:
    """Where a sync warning came from, as ``path:line in function: code``: the innermost frame in
    the ``retinanet`` package, else the innermost one outside torch (e.g. the ``backward()`` call
    for a sync inside autograd), then ``(via ...)`` the innermost torch frame when there is one.

    Args:
        stack: ``traceback.extract_stack()`` inside the warning hook, the hook's frame removed.
    """
    frames = [f for f in stack if Path(f.filename).name != "warnings.py"] or stack
    in_torch = [f for f in frames if _is_under(f.filename, TORCH_DIR)]
    in_package = [f for f in frames if _is_under(f.filename, PACKAGE)]
    outside_torch = [f for f in frames if not _is_under(f.filename, TORCH_DIR)]
    f = (in_package or outside_torch or frames)[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    site = f"{_short(f.filename)}:{f.lineno} in {f.name}: {code}"
    if in_torch and in_torch[-1] is not f and frames.index(in_torch[-1]) > frames.index(f):
        t = in_torch[-1]
        site += f" (via torch/{Path(t.filename).resolve().relative_to(TORCH_DIR)}:{t.lineno} in {t.name})"
    return site


def _is_under(filename: str, folder: Path) -> bool:
    return Path(filename).resolve().is_relative_to(folder)


def _short(filename: str) -> str:
    """A path relative to the repository when it is inside it."""
    path = Path(filename).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else filename


def count_sync_warnings(step, steps: int, device: torch.device) -> collections.Counter:
    """Runs ``step()`` ``steps`` times and counts the synchronising CUDA operations by site.

    On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes every implicit host-device sync
    (``.item()``, ``nonzero``, a device-to-host copy, ...) issue a warning; each warning is
    attributed to the Python line that caused it (``sync_site``). Any other device: only what
    ``step`` itself warns about is counted.
    """
    sites: collections.Counter = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        sites[sync_site(traceback.extract_stack()[:-1])] += 1

    previous = torch.cuda.get_sync_debug_mode() if device.type == "cuda" else None
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        try:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            for _ in range(steps):
                step()
        finally:
            if previous is not None:
                torch.cuda.set_sync_debug_mode(previous)
    return sites


# --- rows -----------------------------------------------------------------------------------------


def model_row(models, mode: str, amp_dtype, images, targets, args, device, warmup=None) -> dict:
    """Images/s (median round) and step peak memory of ours and torchvision's, alternating."""
    runners = {k: MemRunner(m, device, amp_dtype) for k, m in models.items()}
    times = time_mode(runners, mode, images, targets, args.iters, args.warmup if warmup is None else warmup)
    row = {"ours": args.batch_size / statistics.median(times["ours"]),
           "torchvision": args.batch_size / statistics.median(times["torchvision"])}
    row["ratio"] = row["ours"] / row["torchvision"]
    if device.type == "cuda":
        row.update({f"{k}_peak_gib": r.peak / 2**30 for k, r in runners.items()})
    return row


def network_row(runners: dict, batch, args) -> dict:
    times = time_mode(runners, "infer", batch, None, args.iters, args.warmup)
    row = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    row["ratio"] = row["ours"] / row["torchvision"]
    return row


def loader_row(root: str, workers: int, args) -> dict:
    """Training batches/s of ``build_loader`` (decode, flip, resize to the model input, collate)
    over the whole set after one warm-up batch, in images/s."""
    lo, hi = min(args.height, args.width), max(args.height, args.width)
    ds = build_datasets(DataConfig(root=root), min_size=lo, max_size=hi, splits=("train",))
    loader = build_loader(ds.train, batch_size=args.loader_batch_size, workers=workers, train=True, seed=0)
    it = iter(loader)
    next(it)  # worker start-up and the first batch
    t0, n = time.perf_counter(), 0
    for images, _ in it:
        n += len(images)
    dt = time.perf_counter() - t0
    return {"images": n, "images_per_s": n / dt if n else None}


def sync_row(model, images, targets, amp_dtype, steps: int, device) -> dict:
    """Host-device syncs of ``steps`` steady-state training steps of ``model``: the training loop's
    own step (``retinanet.engine.train.loop.train_step``: fused SGD told to skip a non-finite step on
    the device, the gradient norm; fp16 with the GradScaler) and ``StepMeter.add``, at ``amp_dtype``.
    ``benchmarks/sync_audit.py`` finds the same syncs on a CPU."""
    if device.type != "cuda":
        raise RuntimeError(f"sync debug mode needs a CUDA device, not {device}")
    model.train()
    cfg = TrainConfig(lr=1e-4, momentum=0.9)
    opt = build_optimizer(model, cfg, fused=True)  # as setup builds it for CUDA devices
    precision = Precision(amp_dtype, "bench_gpu")
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaling)
    meter = StepMeter(device, LOSSES, streak=0, limit=cfg.max_bad_steps)
    done = [0]

    def step():
        set_lr(opt, cfg.lr)
        meter.add(train_step(model, opt, images, targets, cfg, device, scaler, precision), len(images), done[0])
        done[0] += 1

    for _ in range(2):  # steady state: caches, allocator, momentum buffers
        step()
    sync(device)
    sites = count_sync_warnings(step, steps, device)
    meter.read()  # the logging point's one copy, outside the counted steps
    total = sum(sites.values())
    return {"steps": steps, "syncs": total, "syncs_per_step": total / steps,
            "sites": [{"site": s, "count": c} for s, c in sites.most_common()]}


class Results:
    """Rows in run order; ``run`` times one row, catches its failure and rewrites the JSON file."""

    def __init__(self, args, header: dict):
        self.args, self.header, self.rows = args, header, []

    def run(self, name: str, kind: str, fn, needs: float = 0.0) -> dict:
        """``needs``: seconds the row takes at least (a compilation): skipped when the budget has
        less left, so that a stage deadline does not kill the script in the middle of it."""
        row = {"name": name, "kind": kind}
        elapsed = time.perf_counter() - START
        if self.args.time_budget is not None and elapsed + needs > self.args.time_budget:
            row["error"] = (f"skipped: time budget of {self.args.time_budget:.0f} s spent ({elapsed:.0f} s"
                            + (f", this row needs about {needs:.0f} s)" if needs else ")"))
        else:
            t0 = time.perf_counter()
            try:
                row.update(fn())
            except Exception as err:  # one failing row (compile, graphs, OOM) must not stop the others
                first = (str(err).strip().splitlines() or [""])[0]
                row["error"] = f"{type(err).__name__}: {first}"[:500]
                traceback.print_exc(limit=-3, file=sys.stderr)
            row["seconds"] = time.perf_counter() - t0
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.save()
        return row

    def save(self) -> None:
        if self.args.json:
            Path(self.args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.json).write_text(json.dumps({**self.header, "rows": self.rows}, indent=1))


def format_row(row: dict) -> str:
    name = f"{row['name']:<34}"
    if "error" in row:
        return f"{name} ERROR {row['error']}"
    if row["kind"] == "loader":
        return f"{name} {row['images_per_s']:9.1f} images/s ({row['images']} images)"
    if row["kind"] == "sync":
        text = f"{name} {row['syncs']} syncs in {row['steps']} steps ({row['syncs_per_step']:.1f} per step)"
        return "\n".join([text] + [f"    {s['count']:5d} x {s['site']}" for s in row["sites"]])
    mem = ""
    if "ours_peak_gib" in row:
        mem = f"  {row['ours_peak_gib']:8.2f} {row['torchvision_peak_gib']:8.2f}"
    return f"{name} {row['ours']:9.2f} {row['torchvision']:9.2f} {row['ratio']:6.2f}x{mem}"


def summary_lines(rows: list[dict]) -> list[str]:
    """The table header, every row, and whether the loader keeps up with the fastest training row."""
    lines = [f"{'row':<34} {'ours':>9} {'tv':>9} {'ratio':>7}  {'ours GiB':>8} {'tv GiB':>8}   (images/s; "
             "GiB: step peak above resident)"]
    lines += [format_row(r) for r in rows]
    train = [r["ours"] for r in rows if r["kind"] == "train" and "error" not in r]
    loaders = [r for r in rows if r["kind"] == "loader" and "error" not in r and r["images_per_s"]]
    if train and loaders:
        best = max(loaders, key=lambda r: r["images_per_s"])
        verdict = "keeps up" if best["images_per_s"] >= max(train) else "too slow"
        lines.append(f"data loading: best {best['name']} {best['images_per_s']:.1f} images/s vs fastest training row "
                     f"(ours) {max(train):.1f} images/s: {verdict}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    device = setup(args)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    amp = amp_dtype_of(args, device)
    models = build_models(args, device)
    images, targets = make_inputs(args, device)
    header = {
        "machine": machine(device), "device": str(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "load_average_before": load_average(),
    }
    print(f"machine: {header['machine']}")
    print(f"device {device}; {args.arch}, norm {args.norm}, {args.trainable_layers} trainable stages, "
          f"{args.num_classes} classes; batch {args.batch_size} x {args.height}x{args.width}, channels_last; "
          f"AMP {args.amp_dtype}; {args.iters} timed rounds after {args.warmup} warm-up; "
          f"cudnn.benchmark {args.cudnn_benchmark}")
    print(f"load average before: {header['load_average_before']}", flush=True)
    res = Results(args, header)

    def same_weights():
        models["torchvision"].load_state_dict(models["ours"].state_dict())

    res.run("train fp32", "train", lambda: model_row(models, "train", None, images, targets, args, device))
    res.run(f"train {args.amp_dtype}", "train", lambda: model_row(models, "train", amp, images, targets, args, device))
    same_weights()  # training moved both a little, differently
    res.run("infer fp32", "infer", lambda: model_row(models, "infer", None, images, targets, args, device))
    res.run(f"infer {args.amp_dtype}", "infer", lambda: model_row(models, "infer", amp, images, targets, args, device))

    if args.loader_images > 0:
        with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
            t0 = time.perf_counter()
            make_synthetic(tmp, num_train=args.loader_images, num_val=1, image_size=args.loader_size, seed=0)
            print(f"wrote {args.loader_images} synthetic {args.loader_size}x{args.loader_size} JPEGs in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            for w in args.workers:
                res.run(f"loader {w} workers", "loader", lambda w=w: loader_row(tmp, w, args))

    if args.sync_debug > 0:
        res.run(f"sync debug, ours train {args.amp_dtype}", "sync",
                lambda: sync_row(models["ours"], images, targets, amp, args.sync_debug, device))

    if args.cuda_graphs:
        batch = torch.rand(args.batch_size, 3, args.height, args.width, device=device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        same_weights()
        for m in models.values():
            m.eval()
        fns = network_fns(models)
        res.run(f"network eager {args.amp_dtype}", "network",
                lambda: network_row({k: CallRunner(f, device, amp) for k, f in fns.items()}, batch, args))
        res.run(f"network CUDA graph {args.amp_dtype}", "network",
                lambda: network_row({k: GraphRunner(f, batch, device, amp) for k, f in fns.items()}, batch, args))

    if args.compile:
        def compiled(mode):
            if not getattr(models["ours"], "_bench_compiled", False):
                for m in models.values():
                    compile_parts(m)
                    m._bench_compiled = True
            return model_row(models, mode, amp, images, targets, args, device, warmup=max(args.warmup, 2))

        # compiling ResNet-50 + FPN and the heads of both models, forward and backward: a minute or
        # more on a cold cache (not yet measured on the GPU machine); inference compiles again
        slow = 0.0 if args.tiny else 1.0
        res.run(f"train {args.amp_dtype} compiled", "train", lambda: compiled("train"), needs=90 * slow)
        res.run(f"infer {args.amp_dtype} compiled", "infer", lambda: compiled("infer"), needs=45 * slow)

    header["load_average_after"] = load_average()
    res.save()
    print("\n" + "\n".join(summary_lines(res.rows)))
    print(f"load average after: {header['load_average_after']}")
    if args.json:
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
