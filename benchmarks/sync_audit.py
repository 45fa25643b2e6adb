"""CPU audit of host-device synchronisations: which ops of a training step (or an inference pass)
would make the host wait for a GPU, and the line of ours that runs each.

    python benchmarks/sync_audit.py                       # the train step as `retinanet train` runs it on a GPU (bf16)
    python benchmarks/sync_audit.py --amp fp16 --clip 10  # older GPUs: GradScaler, unscale + clip (slow: fp16 on a CPU)
    python benchmarks/sync_audit.py --amp off --optimizer adamw --ema --arch resnet18_fpn_v2   # the recipes' arch (GIoU)
    python benchmarks/sync_audit.py --run                 # the whole `train()` loop on a synthetic set
    python benchmarks/sync_audit.py --infer               # model.eval() forward + post-processing

No GPU needed: a ``TorchDispatchMode`` (``SyncAudit``) sees every aten op the step runs on the CPU
and records those that synchronise a CUDA device with the host (``SYNC_OPS``, ``sync_cause``):
a value read on the host (``_local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``, ``if t:``),
an output whose size depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``,
``unique``, ``bincount``, ``repeat_interleave`` without ``output_size``, torchvision's ``nms``), and
``equal``/``multinomial``. Copies between host and device cannot be told apart on a CPU by the
tensors' devices, so they are caught in Python (``patch_transfers``): ``.tolist()``, ``.numpy()``,
``.cpu()``, ``.to("cpu")`` of a device tensor (device to host); ``torch.tensor``/``torch.as_tensor``
with a ``device`` (a blocking host-to-device copy on a GPU), and a blocking ``.to(device)`` of a
host tensor (the batch as the loader yields it, or one made by ``torch.tensor`` without a device).
A ``.to(device, non_blocking=True)`` is not a sync (pinned batches: ``build_loader``).

The package runs its accelerators' code paths under the audit: the loss, which on a CPU picks
the foreground anchors with a ``nonzero`` (free there), computes every anchor's terms as on a GPU
(``retinanet.model.loss.COMPACT_DEVICES``).

Each sync is attributed to a site, ``retinanet/PATH:FUNCTION`` (the innermost frame in the
package; ``via torch/...`` names the torch function below it when the op is inside torch), as
``bench_gpu.py --sync-debug`` names the lines ``torch.cuda.set_sync_debug_mode("warn")`` reports
on a GPU. ``audit_train_step`` runs the loop's step (``set_lr``, ``train_step``, ``StepMeter.add``,
the EMA update: ``train_one_epoch``'s body) on a tiny model after warm-up steps;
``tests/engine/train/test_syncs.py`` asserts the exact set of sites it finds. ``audit_train_run``
audits the real ``train()`` loop instead (the loader's fetches and the logging points apart).

DDP (``--ddp``; ``ddp_audit``): the same audits in 2 processes of a gloo group on the CPU, as
``torchrun --nproc_per_node=2`` runs them, the model wrapped as ``setup`` wraps it
(``distributed.wrap_ddp``). The audit also records every collective (``c10d`` ops: ``all_reduce``,
``broadcast``, the ones ``all_gather_object`` runs, and DDP's own), a wait for the other ranks
even where it is not a host-device sync, named as the syncs are; DDP's gradient all-reduce is
``c10d.allreduce_ @ retinanet/engine/train/loop.py:train_step via torch/autograd/graph.py:_engine_run_backward``.
``tests/engine/train/test_ddp_syncs.py`` asserts the exact set per step.

What it cannot see: syncs made by CUDA-only code paths (none in the step) and waits that are not
syncs of the stream (e.g. the caching allocator); the GPU row (``bench_gpu.py --sync-debug``) counts
what the driver sees.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import traceback
from pathlib import Path

import torch
import torch.utils._python_dispatch
from torch.utils.weak import WeakIdKeyDictionary

import retinanet

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(retinanet.__file__).resolve().parent
TORCH_DIR = Path(torch.__file__).resolve().parent
HERE = Path(__file__).resolve()

# aten (and torchvision) ops that synchronise a CUDA device with the host, and why
SYNC_OPS = {
    "_local_scalar_dense": "value read on the host (.item(), float(t), int(t), bool(t), `if t:`)",
    "nonzero": "output size depends on the data (nonzero, x[mask], torch.where(cond), as_tuple)",
    "nonzero_numpy": "output size depends on the data (nonzero(as_tuple=True), torch.where(cond))",
    "argwhere": "output size depends on the data",
    "masked_select": "output size depends on the data",
    "_unique": "output size depends on the data", "_unique2": "output size depends on the data",
    "unique_dim": "output size depends on the data", "unique_consecutive": "output size depends on the data",
    "bincount": "output size (max + 1) read on the host",
    "masked_scatter": "mask counted on the host", "masked_scatter_": "mask counted on the host",
    "equal": "bool result on the host", "is_nonzero": "bool result on the host",
    "multinomial": "sampling checks read on the host",
    "nms": "output size (boxes kept) depends on the data (torchvision's kernel copies its mask to the host)",
}
_HOOKS = ("__torch_dispatch__", "wrapped", "to")  # this module's functions that record an op
COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional")  # torch.distributed's ops
COLLECTIVE = "collective: every rank waits for the others (on a GPU, queued on the stream: not a host sync)"
BOOL_INDEX_OPS = ("index", "index_put", "index_put_", "_index_put_impl_")


def sync_cause(func, args, kwargs) -> str:
    """Why the op ``func`` (an ``OpOverload``) called with ``args``/``kwargs`` would sync a CUDA
    device with the host; "" when it would not."""
    name = func._schema.name.split("::")[-1]
    if name in SYNC_OPS:
        return SYNC_OPS[name]
    if name in BOOL_INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
            return "boolean-mask indexing (a nonzero inside)"
    if name == "repeat_interleave" and func._overloadname.startswith("Tensor") and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size: the output size is read on the host"
    if name == "histc" and (args[2:4] == (0, 0) or len(args) < 3):
        return "histc without a range reads min/max on the host"
    return ""


@dataclasses.dataclass(frozen=True)
class SyncEvent:
    """One would-be sync: the op, why it syncs, and where (``site``: ``PATH:FUNCTION``)."""

    op: str
    cause: str
    site: str  # retinanet/model/loss.py:focal_loss (innermost package frame), else the innermost outside torch
    line: str  # path:line: code
    via: str  # the innermost torch/torchvision function below the site, "" if none
    step: int  # the audited step (-1: outside the steps)

    @property
    def key(self) -> str:
        """``op @ site`` (+ `` via ...``): what the test compares, stable across line edits."""
        return f"{self.op} @ {self.site}" + (f" via {self.via}" if self.via else "")


def _under(filename: str, folder: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def _rel(filename: str) -> str:
    """A path relative to the repository, else to site-packages (``torch/...``, ``torchvision/...``)."""
    path = Path(filename).resolve()
    for base in (TORCH_DIR.parent, REPO):  # site-packages first: a virtual environment may sit inside the repository
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return path.name


def site_of(stack: list[traceback.FrameSummary]) -> tuple[str, str, str]:
    """``(site, line, via)`` of a sync from the Python stack at the op (``SyncEvent``)."""
    cut = next((i for i, f in enumerate(stack) if f.filename == str(HERE) and f.name in _HOOKS), len(stack))
    frames = stack[:cut]
    while frames and any(w in frames[-1].filename for w in ("_dynamo", "_python_dispatch", "torch/_compile.py")):
        frames = frames[:-1]  # the dispatch mode's own wrappers
    in_package = [f for f in frames if _under(f.filename, PACKAGE)]
    outside = [f for f in frames if not _under(f.filename, TORCH_DIR) and "torchvision" not in f.filename]
    f = (in_package or outside or frames or stack)[-1]
    below = frames[frames.index(f) + 1:] if f in frames else []
    libs = [b for b in below if (_under(b.filename, TORCH_DIR) and not b.filename.endswith("_ops.py"))
            or "torchvision" in b.filename]
    libs = [b for b in libs if "torchvision" in b.filename] or libs  # torchvision's function over the torch op's
    via = f"{_rel(libs[-1].filename)}:{libs[-1].name}" if libs else ""
    return f"{_rel(f.filename)}:{f.name}", f"{_rel(f.filename)}:{f.lineno}: {(f.line or '').strip()}", via


class SyncAudit(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the would-be syncs of the ops run inside ``with audit:`` while ``audit.step >= 0``
    (``events``); ``host(*tensors)`` marks tensors as on the host (the loader's batch).

    Use ``recording(audit)`` (it also patches the Python-level transfers) rather than the mode alone.
    """

    def __init__(self):
        super().__init__()
        self.events: list[SyncEvent] = []
        self.step = -1  # < 0: not recording
        self.steps = 0  # audited steps begun
        self.hosts = WeakIdKeyDictionary()
        self.logging_points: set[int] = set()  # audited steps at which the loop reads its meter (audit_train_run)

    def begin(self, step: int) -> None:
        """Record what follows as step ``step`` (< 0: not at all)."""
        self.step = step
        self.steps += step >= 0

    def host(self, *objs) -> None:
        """Mark every tensor in ``objs`` (nested lists, tuples, dicts) as a host tensor."""
        for obj in objs:
            if isinstance(obj, torch.Tensor):
                self.hosts[obj] = True
            elif isinstance(obj, dict):
                self.host(*obj.values())
            elif isinstance(obj, (list, tuple)):
                self.host(*obj)

    def is_host(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.hosts

    def record(self, op: str, cause: str) -> None:
        if self.step < 0:
            return
        site, line, via = site_of(traceback.extract_stack()[:-1])
        self.events.append(SyncEvent(op, cause, site, line, via, self.step))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple)) else (a,))
                   if isinstance(t, torch.Tensor)]
        on_host = bool(tensors) and all(t in self.hosts for t in tensors)  # e.g. AveragedModel's n_averaged
        if self.step >= 0 and func.namespace in COLLECTIVE_NAMESPACES:  # wherever its tensors are
            self.record(f"{func.namespace}.{func._schema.name.split('::')[-1]}", COLLECTIVE)
        elif self.step >= 0 and not on_host:
            cause = sync_cause(func, args, kwargs)
            if cause:
                self.record(f"aten.{func._schema.name.split('::')[-1]}", cause)
        out = func(*args, **kwargs)
        if on_host:  # computed from host tensors alone: on the host too
            self.host(out)
        return out

    def syncs(self) -> set[str]:
        """The keys of the host-device syncs recorded (collectives apart)."""
        return {e.key for e in self.events if e.cause != COLLECTIVE}

    def collectives(self, steps=None) -> collections.Counter:
        """Collective keys, with their count per audited step, over ``steps`` (default: all)."""
        chosen = [e for e in self.events if e.cause == COLLECTIVE and (steps is None or e.step in steps)]
        n = len(set(steps)) if steps is not None else max(self.steps, 1)
        return collections.Counter({k: c / n for k, c in collections.Counter(e.key for e in chosen).items()})

    def by_step(self) -> dict[int, collections.Counter]:
        """Per audited step: ``Counter`` of event keys."""
        steps: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for e in self.events:
            steps[e.step][e.key] += 1
        return dict(steps)


def _device_arg(args, kwargs):
    """The device a ``Tensor.to(...)`` call names (None: none), and its ``non_blocking``."""
    device = kwargs.get("device")
    non_blocking = kwargs.get("non_blocking", False)
    for a in args:
        if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool) and device is None:
            device = a
        elif isinstance(a, torch.Tensor) and device is None:
            device = a.device
        elif isinstance(a, bool):
            non_blocking = a
            break
    return device, non_blocking


@contextlib.contextmanager
def patch_transfers(audit: SyncAudit):
    """Python-level hooks for the copies between host and device (the module docstring)."""
    T = torch.Tensor
    saved = {name: getattr(T, name) for name in ("tolist", "numpy", "cpu", "__array__", "to")}
    saved_fns = {name: getattr(torch, name) for name in ("tensor", "as_tensor", "from_numpy")}

    def d2h(name):
        real = saved[name]

        @functools.wraps(real)
        def wrapped(t, *a, **k):
            if not audit.is_host(t):
                audit.record(f"Tensor.{name}", "device-to-host copy")
            out = real(t, *a, **k)
            if isinstance(out, torch.Tensor):
                audit.host(out)
            return out
        return wrapped

    def to(t, *a, **k):
        device, non_blocking = _device_arg(a, k)
        if device is not None:
            if audit.is_host(t) and not non_blocking:
                audit.record("Tensor.to", "blocking host-to-device copy (non_blocking=False)")
            elif isinstance(device, str) and device.startswith("cpu") and not audit.is_host(t):
                audit.record("Tensor.to", "device-to-host copy")
        out = saved["to"](t, *a, **k)
        if device is not None and audit.is_host(t):  # moved to the device
            out = out.view_as(out) if out is t else out  # on the CPU: the same tensor, which stays on the host
            audit.hosts.pop(out, None)
        return out

    def maker(name):
        real = saved_fns[name]

        @functools.wraps(real)
        def wrapped(*a, **k):
            out = real(*a, **k)
            on_device = a and isinstance(a[0], torch.Tensor) and not audit.is_host(a[0])  # no copy
            if k.get("device") is None:
                audit.host(out)
            else:
                audit.hosts.pop(out, None)
                if not on_device:
                    audit.record(f"torch.{name}", "tensor from host data made on the device: a blocking host-to-device copy")
            return out
        return wrapped

    try:
        for name in ("tolist", "numpy", "cpu", "__array__"):
            setattr(T, name, d2h(name))
        T.to = functools.wraps(saved["to"])(to)
        for name in saved_fns:
            setattr(torch, name, maker(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(T, name, fn)
        for name, fn in saved_fns.items():
            setattr(torch, name, fn)


@contextlib.contextmanager
def recording(audit: SyncAudit):
    """``audit`` active: the dispatch mode and the transfer hooks (``audit.begin(step)`` to record),
    on one thread (toy sizes: more only wait for each other; the previous count is restored), and
    the package on the code paths of accelerators: ``retinanet.model.loss.COMPACT_DEVICES`` empty
    (on a CPU the loss picks the foreground anchors with a ``nonzero``, free there)."""
    import retinanet.model.loss as loss

    threads, compact = torch.get_num_threads(), loss.COMPACT_DEVICES
    torch.set_num_threads(1)
    loss.COMPACT_DEVICES = ()
    try:
        with patch_transfers(audit), audit:
            yield audit
    finally:
        torch.set_num_threads(threads)
        loss.COMPACT_DEVICES = compact


# --- the training step ----------------------------------------------------------------------------

TINY = dict(arch="resnet18_fpn", norm="bn", min_size=64, max_size=128, fpn_channels=32, head_convs=1,
            trainable_backbone_layers=5)


def tiny_batch(batch_size: int = 2, size: int = 64, width: int | None = None, seed: int = 0):
    """Random uint8 ``size x width`` images (already at the model's input size, as the loader's
    workers resize them) and one or two boxes each."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, size, width or size), dtype=torch.uint8, generator=g) for _ in range(batch_size)]
    targets = []
    for i in range(batch_size):
        n = 1 + i % 2
        xy = torch.rand(n, 2, generator=g) * size / 2
        wh = 8 + torch.rand(n, 2, generator=g) * size / 2
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(1, 5, (n,), generator=g)})
    return images, targets


def build_step(amp: str = "off", optimizer: str = "sgd", clip: float | None = None, ema: bool = False,
               grad_scaling: bool | None = None, fused: bool = True, channels_last: bool = True,
               model_options: dict | None = None, seed: int = 0):
    """What ``setup`` builds for a run on the CPU, at toy size: ``(model, optimizer, scaler,
    precision, ema, cfg)``. ``amp="fp16"`` (refused on CPUs by ``resolve_precision``) gives the
    fp16 + ``GradScaler`` path of GPUs without bf16 (fp16 convolutions are slow on CPUs:
    ``grad_scaling=True`` runs the ``GradScaler`` path with fp32 compute). ``fused=False``: the
    optimizer of devices other than CPU and CUDA (MPS)."""
    from retinanet.config import TrainConfig
    from retinanet.engine.runtime.precision import Precision, resolve_precision
    from retinanet.engine.train.optim import build_ema, build_optimizer
    from retinanet.model import build_model

    torch.manual_seed(seed)
    model = build_model(num_classes=5, **(model_options or TINY)).to("cpu")  # as train() moves it to its device
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(optimizer=optimizer, amp="off" if amp == "fp16" else amp, clip_grad_norm=clip, lr=0.01,
                      ema=ema, ema_ramp_iters=100)
    precision = Precision(torch.float16, "fp16 on the CPU (audit)") if amp == "fp16" else resolve_precision(amp, "cpu")
    opt = build_optimizer(model, cfg, fused=fused)  # setup: fused on CPU and CUDA devices
    scaler = torch.amp.GradScaler("cpu", enabled=precision.grad_scaling if grad_scaling is None else grad_scaling)
    return model.train(), opt, scaler, precision, build_ema(model, cfg), cfg


def _rank() -> int:
    from retinanet.engine.runtime.distributed import get_rank
    return get_rank()


def audit_train_step(steps: int = 2, warmup: int = 1, amp: str = "off", optimizer: str = "sgd",
                     clip: float | None = None, ema: bool = False, batches=None, **build) -> SyncAudit:
    """``train_one_epoch``'s body (lr, ``train_step``, ``StepMeter.add``, EMA) for ``warmup`` then
    ``steps`` audited steps; returns the ``SyncAudit`` (``by_step()``: the sites of each).

    ``batches``: ``(images, targets)`` of each step (warm-up included), cycled; by default
    ``tiny_batch()``. ``build``: more options of ``build_step``."""
    from retinanet.engine.runtime import distributed as D
    from retinanet.engine.train.loop import LOSSES, StepMeter, train_step
    from retinanet.engine.train.optim import lr_factor, set_lr

    batches = batches or [tiny_batch(seed=_rank())]  # under DDP: each rank its own batch
    device = torch.device("cpu")
    audit = SyncAudit()
    with recording(audit):  # built under the hooks: what torch.tensor makes without a device is on the host
        model, opt, scaler, precision, ema_model, cfg = build_step(amp, optimizer, clip, ema, **build)
        net = D.wrap_ddp(model, device) if D.is_dist() else model  # in a process group: as setup wraps it
        meter = StepMeter(device, LOSSES, streak=0, limit=cfg.max_bad_steps)
        for i in range(warmup + steps):
            images, targets = batches[i % len(batches)]
            audit.host(images, targets)  # the loader's batch, as train_one_epoch gets it
            audit.begin(i - warmup)  # < 0 during the warm-up: not recorded
            set_lr(opt, cfg.lr * lr_factor(i, i / 100, cfg, 1.0, 10))
            step = train_step(net, opt, images, targets, cfg, device, scaler, precision)
            meter.add(step, len(images), i)
            if ema_model is not None:
                ema_model.update_parameters(model)
            audit.step = -1
    return audit


def audit_train_run(root: Path, steps: int = 4, amp: str = "off", arch: str = TINY["arch"], made: bool = False,
                    **train_options) -> SyncAudit:
    """The real ``train()`` (``retinanet.engine.train.loop``) for one epoch of ``steps`` batches of 2
    synthetic 64 px images (per process: in a process group of W, the data holds W times as many):
    every step after the first, from the loader's batch to the next fetch; the loader's fetches and
    ``report_steps`` (``StepMeter.read``) are not recorded; the steps at which a progress line was
    due are in ``audit.logging_points`` (what the loop runs there besides ``report_steps``: the stop
    check, under DDP a collective). ``root``: an empty folder for the data and the run; ``made``:
    the data is already in ``root / "syn"``."""
    import retinanet.engine.train.loop as T
    from retinanet.config import DataConfig, ModelConfig, TrainConfig
    from retinanet.data import make_synthetic
    from retinanet.engine.runtime.distributed import get_world_size

    if not made:
        make_synthetic(root / "syn", num_train=2 * steps * get_world_size(), num_val=1, image_size=64, seed=0)
    audit = SyncAudit()
    count = {"i": -1}
    real_setup, real_report, real_epoch, real_progress = T.setup, T.report_steps, T.train_one_epoch, T.StepProgress

    class StepProgress(real_progress):  # notes the logging points
        def due(self, i):
            due = super().due(i)
            if due and audit.step >= 0:
                audit.logging_points.add(audit.step)
            return due

    class Loader:  # the train loader, its fetches not recorded, its batches marked as host tensors
        def __init__(self, loader):
            self._loader = loader

        def __getattr__(self, name):
            return getattr(self._loader, name)

        def __len__(self):
            return len(self._loader)

        def __iter__(self):
            it = iter(self._loader)
            while True:
                audit.step = -1
                try:
                    batch = next(it)
                except StopIteration:
                    return
                audit.host(batch)
                count["i"] += 1
                audit.begin(count["i"] - 1)  # the first step is the warm-up
                yield batch

    def setup(*a, **k):
        run = real_setup(*a, **k)
        run.train_loader = Loader(run.train_loader)
        return run

    def train_one_epoch(*a, **k):
        try:
            return real_epoch(*a, **k)
        finally:
            audit.step = -1  # the end of the epoch (evaluation, checkpoint) is not a step

    def report_steps(*a, **k):
        step, audit.step = audit.step, -1
        try:
            return real_report(*a, **k)
        finally:
            audit.step = step

    model = ModelConfig(**{k: v for k, v in TINY.items() if k != "trainable_backbone_layers"} | {"arch": arch})
    data = DataConfig(root=str(root / "syn" / "VOCdevkit"), workers=0)
    cfg = TrainConfig(out=str(root / "run"), epochs=1, batch_size=2, print_every=10**6, device="cpu", amp=amp,
                      weights="none", **train_options)
    T.setup, T.report_steps, T.train_one_epoch, T.StepProgress = setup, report_steps, train_one_epoch, StepProgress
    try:
        with recording(audit):
            T.train(model, data, cfg, progress=False)
    finally:
        T.setup, T.report_steps, T.train_one_epoch, T.StepProgress = real_setup, real_report, real_epoch, real_progress
    return audit


# --- DDP: the same audits in a process group ------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, out: str, jobs: list, then=None) -> None:
    """One rank of ``ddp_audit``: joins a gloo group as torchrun's environment describes it, runs
    each job (``(name, "step" | "run", options)``) and ``then()``, and writes its events (and what
    ``then`` returned) to ``out/RANK.json``."""
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        for name, kind, options in jobs:
            if kind == "step":
                audit = audit_train_step(**options)
            else:
                audit = audit_train_run(Path(out) / name, made=True, **options)
            dist.barrier()
            results[name] = {"steps": audit.steps, "logging_points": sorted(audit.logging_points),
                             "events": [dataclasses.asdict(e) for e in audit.events]}
        if then is not None:
            results["then"] = then()
    finally:
        (Path(out) / f"{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def ddp_audit(jobs: list, world: int = 2, root: Path | None = None, then=None) -> list[dict]:
    """Each job (``(name, "step", options of audit_train_step)`` or ``(name, "run", options of
    audit_train_run)``) in ``world`` processes of a gloo group (``torch.multiprocessing.spawn``);
    returns, per rank, ``{name: SyncAudit}`` (its events and steps), and under ``"then"`` what
    ``then()`` (a picklable function, run last in the group) returned. ``root``: a folder for the
    runs' data and outputs (default: a temporary one)."""
    import json
    import socket
    import sys
    import tempfile

    import torch.multiprocessing as mp
    from retinanet.data import make_synthetic

    with contextlib.ExitStack() as stack:
        root = root or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name, kind, options in jobs:
            if kind == "run":  # made once, before the processes read it
                make_synthetic(root / name / "syn", num_train=2 * options.get("steps", 4) * world, num_val=1,
                               image_size=64, seed=0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sys.path.insert(0, str(HERE.parent))  # the spawned processes import this module as sync_audit
        try:
            mp.spawn(_ddp_worker, args=(world, port, str(root), jobs, then), nprocs=world, join=True)
        finally:
            sys.path.remove(str(HERE.parent))
        ranks = []
        for rank in range(world):
            done = {}
            for name, r in json.loads((root / f"{rank}.json").read_text()).items():
                if name == "then":
                    done[name] = r
                    continue
                audit = SyncAudit()
                audit.steps, audit.logging_points = r["steps"], set(r["logging_points"])
                audit.events = [SyncEvent(**e) for e in r["events"]]
                done[name] = audit
            ranks.append(done)
        return ranks


# --- inference ------------------------------------------------------------------------------------


def audit_inference(passes: int = 2, warmup: int = 1, amp: str = "off", sizes=((64, 64), (64, 64)),
                    score_thresh: float | None = None, arch: str = TINY["arch"]) -> SyncAudit:
    """``model.eval()`` forward (pre-processing, network, ``decode_batch``, unpadding) and the
    evaluation's ``detections_to_host``, on an untrained tiny model. ``score_thresh`` None: the
    model's (0.05; the untrained model's scores are about 0.01: no candidate passes); 0: every
    candidate passes (the top-k branch, NMS over every candidate)."""
    from retinanet.engine.evaluate.loop import detections_to_host
    from retinanet.engine.runtime.precision import resolve_precision
    from retinanet.model import build_model

    torch.manual_seed(0)
    model = build_model(num_classes=5, **(TINY | {"arch": arch})).to(memory_format=torch.channels_last).eval()
    precision = resolve_precision(amp, "cpu")
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    audit = SyncAudit()
    with recording(audit), torch.inference_mode():
        for i in range(warmup + passes):
            audit.host(images)
            audit.begin(i - warmup)
            x = [im.to("cpu", non_blocking=True) for im in images]
            with precision.autocast("cpu"):
                out = model(x, score_thresh=score_thresh)
            detections_to_host(out)
            audit.step = -1
    return audit


# --- report ---------------------------------------------------------------------------------------


def table(audit: SyncAudit, n: int) -> str:
    """One line per site: count per audited step (``n`` steps), op, site (via), cause, and the first
    line seen."""
    first: dict[str, SyncEvent] = {}
    for e in audit.events:
        first.setdefault(e.key, e)
    total = collections.Counter(e.key for e in audit.events)
    rows = [f"{total[k] / n:6.1f}  {k}\n        {e.cause}; {e.line}" for k, e in first.items()]
    return "\n".join(rows) or "  none"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amp", default="bf16", choices=["off", "bf16", "fp16"],
                   help="autocast of the step: bf16 (GPUs with bf16: --amp auto), fp16 (+ GradScaler), off [bf16]")
    p.add_argument("--arch", default=TINY["arch"], help=f"tiny model of this arch [{TINY['arch']}]")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--clip", type=float, default=None, help="--clip-grad [off]")
    p.add_argument("--ema", action="store_true")
    p.add_argument("--steps", type=int, default=3, help="audited steps, after one warm-up step [3]")
    p.add_argument("--run", action="store_true", help="the whole train() loop (synthetic data) instead of the step")
    p.add_argument("--infer", action="store_true", help="model.eval() forward + post-processing instead")
    p.add_argument("--ddp", action="store_true", help="the step (--run: the train() loop) in 2 processes of a gloo "
                   "group, collectives included; rank 0's table (the step: after 2 warm-up steps, DDP's second "
                   "rebuilds its buckets; --run: its first audited step does)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="--infer: score threshold (0: every candidate reaches NMS) [the model's, 0.05]")
    args = p.parse_args(argv)
    if args.infer:
        audit = audit_inference(passes=args.steps, amp="off" if args.amp == "fp16" else args.amp,
                                score_thresh=args.score_thresh, arch=args.arch)
        what = f"inference ({args.arch}, {args.amp}, score_thresh {args.score_thresh}), per pass of 2 images"
    elif args.ddp:
        amp = "off" if args.amp == "fp16" else args.amp
        job = (("run", "run", dict(steps=args.steps + 1, amp=amp, arch=args.arch, optimizer=args.optimizer,
                                   clip_grad_norm=args.clip, ema=args.ema)) if args.run else
               ("step", "step", dict(steps=args.steps, warmup=2, amp=args.amp, optimizer=args.optimizer, clip=args.clip,
                                     ema=args.ema, model_options=dict(TINY, arch=args.arch))))
        audit = ddp_audit([job])[0][job[0]]
        what = (f"DDP (2 gloo processes, rank 0) {'train() loop' if args.run else 'train step'} ({args.arch}, {args.amp}, "
                f"{args.optimizer}, clip {args.clip}, ema {args.ema}), per step; logging points: {sorted(audit.logging_points)}")
    elif args.run:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            audit = audit_train_run(Path(tmp), steps=args.steps + 1, amp="off" if args.amp == "fp16" else args.amp,
                                    arch=args.arch, optimizer=args.optimizer, clip_grad_norm=args.clip, ema=args.ema)
        what = f"train() loop ({args.arch}, {args.amp}, {args.optimizer}, clip {args.clip}, ema {args.ema}), per step"
    else:
        audit = audit_train_step(steps=args.steps, amp=args.amp, optimizer=args.optimizer, clip=args.clip, ema=args.ema,
                                 model_options=dict(TINY, arch=args.arch))
        what = f"train step ({args.arch}, {args.amp}, {args.optimizer}, clip {args.clip}, ema {args.ema}), per step"
    print(f"{what}: {len(audit.events)} syncs in {audit.steps} audited step(s)")
    print(table(audit, audit.steps))


if __name__ == "__main__":
    main()
