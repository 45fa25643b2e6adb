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
        if self.step >= 0 and not on_host:
            cause = sync_cause(func, args, kwargs)
            if cause:
                self.record(f"aten.{func._schema.name.split('::')[-1]}", cause)
        out = func(*args, **kwargs)
        if on_host:  # computed from host tensors alone: on the host too
            self.host(out)
        return out

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


def audit_train_step(steps: int = 2, warmup: int = 1, amp: str = "off", optimizer: str = "sgd",
                     clip: float | None = None, ema: bool = False, batches=None, **build) -> SyncAudit:
    """``train_one_epoch``'s body (lr, ``train_step``, ``StepMeter.add``, EMA) for ``warmup`` then
    ``steps`` audited steps; returns the ``SyncAudit`` (``by_step()``: the sites of each).

    ``batches``: ``(images, targets)`` of each step (warm-up included), cycled; by default
    ``tiny_batch()``. ``build``: more options of ``build_step``."""
    from retinanet.engine.train.loop import LOSSES, StepMeter, train_step
    from retinanet.engine.train.optim import lr_factor, set_lr

    batches = batches or [tiny_batch()]
    device = torch.device("cpu")
    audit = SyncAudit()
    with recording(audit):  # built under the hooks: what torch.tensor makes without a device is on the host
        model, opt, scaler, precision, ema_model, cfg = build_step(amp, optimizer, clip, ema, **build)
        meter = StepMeter(device, LOSSES, streak=0, limit=cfg.max_bad_steps)
        for i in range(warmup + steps):
            images, targets = batches[i % len(batches)]
            audit.host(images, targets)  # the loader's batch, as train_one_epoch gets it
            audit.begin(i - warmup)  # < 0 during the warm-up: not recorded
            set_lr(opt, cfg.lr * lr_factor(i, i / 100, cfg, 1.0, 10))
            step = train_step(model, opt, images, targets, cfg, device, scaler, precision)
            meter.add(step, len(images), i)
            if ema_model is not None:
                ema_model.update_parameters(model)
            audit.step = -1
    return audit


def audit_train_run(root: Path, steps: int = 4, amp: str = "off", arch: str = TINY["arch"],
                    **train_options) -> SyncAudit:
    """The real ``train()`` (``retinanet.engine.train.loop``) for one epoch of ``steps`` batches of 2
    synthetic 64 px images: every step after the first, from the loader's batch to the next fetch;
    the loader's fetches and the logging points (``report_steps``: ``StepMeter.read``) are not
    recorded. ``root``: an empty folder for the data and the run."""
    import retinanet.engine.train.loop as T
    from retinanet.config import DataConfig, ModelConfig, TrainConfig
    from retinanet.data import make_synthetic

    make_synthetic(root / "syn", num_train=2 * steps, num_val=1, image_size=64, seed=0)
    audit = SyncAudit()
    count = {"i": -1}
    real_setup, real_report, real_epoch = T.setup, T.report_steps, T.train_one_epoch

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
    T.setup, T.report_steps, T.train_one_epoch = setup, report_steps, train_one_epoch
    try:
        with recording(audit):
            T.train(model, data, cfg, progress=False)
    finally:
        T.setup, T.report_steps, T.train_one_epoch = real_setup, real_report, real_epoch
    return audit


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
    p.add_argument("--score-thresh", type=float, default=None,
                   help="--infer: score threshold (0: every candidate reaches NMS) [the model's, 0.05]")
    args = p.parse_args(argv)
    if args.infer:
        audit = audit_inference(passes=args.steps, amp="off" if args.amp == "fp16" else args.amp,
                                score_thresh=args.score_thresh, arch=args.arch)
        what = f"inference ({args.arch}, {args.amp}, score_thresh {args.score_thresh}), per pass of 2 images"
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
