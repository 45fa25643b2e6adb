"""Mixed precision (``--amp``) resolution, and a training step that does not wait for the device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import retinanet.engine.runtime.precision as P
from retinanet.cli import build_parser
from retinanet.cli.train import train_configs
from retinanet.config import TrainConfig
from retinanet.engine.evaluate.loop import detections_to_host
from retinanet.engine.train.optim import build_optimizer
from retinanet.engine.runtime.precision import resolve_precision
from retinanet.engine.train.loop import LOSSES, StepMeter, train_step
from retinanet.errors import RetinaNetError
from retinanet.model import build_model
from retinanet.model.transform import normalize

TINY = dict(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)


# --- resolving --amp ----------------------------------------------------------------------------


@pytest.mark.parametrize("native,mode,expected", [
    (True, "auto", None), (False, "auto", None), (False, "on", torch.bfloat16), (False, "bf16", torch.bfloat16),
    (True, "bf16", torch.bfloat16), (True, "off", None), (True, True, torch.bfloat16), (True, False, None),
])
def test_cpu_resolution(monkeypatch, native, mode, expected):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    p = resolve_precision(mode, "cpu")
    assert p.dtype == expected and not p.grad_scaling
    assert p.mode == ("off" if expected is None else "bf16")
    if mode == "auto":  # the log says why
        assert ("no native bf16" in p.reason) == (not native) and ("1.6x faster" in p.reason) == native
    if mode in ("on", "bf16"):
        assert ("slower than fp32" in p.reason) == (not native)


def test_fp16_on_cpu_and_unknown_modes_are_refused():
    with pytest.raises(RetinaNetError, match="fp16 is for CUDA GPUs"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(RetinaNetError, match="unknown amp mode 'half'"):
        resolve_precision("half", "cpu")


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_resolution_without_a_gpu(monkeypatch, bf16):
    """The CUDA branch only asks torch whether the card has bf16 (tests/cuda checks a real card)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    auto = resolve_precision("auto", "cuda")
    assert auto.dtype == (torch.bfloat16 if bf16 else torch.float16) and auto.grad_scaling == (not bf16)
    assert resolve_precision("on", "cuda").dtype == auto.dtype
    assert resolve_precision("fp16", "cuda").grad_scaling
    if not bf16:
        with pytest.raises(RetinaNetError, match="Old GPU has no bf16"):
            resolve_precision("bf16", "cuda")


def test_cli_amp_options():
    parse = build_parser().parse_args
    assert [train_configs(parse(["train", *a]))[2].amp for a in ([], ["--amp"], ["--no-amp"], ["--amp", "bf16"])] == [
        "auto", "on", "off", "bf16"]
    assert parse(["eval", "--weights", "w.pt", "--data", "d"]).amp == "auto"
    assert parse(["eval", "--weights", "w.pt", "--data", "d", "--amp"]).amp == "on"
    assert parse(["predict", "x.jpg", "--weights", "w.pt", "--no-amp"]).amp == "off"
    assert TrainConfig(amp=True).amp == "on" and TrainConfig(amp=False).amp == "off"  # old configs and checkpoints


# --- no per-step reads of device values ---------------------------------------------------------


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 40, 50]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[10.0, 10, 60, 30]]), "labels": torch.tensor([1])}]
    return images, targets


class ReadCounter:
    """Counts the ways a tensor's value reaches Python (each is a host-device sync on a GPU)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(real))

    def _wrap(self, real):
        def wrapped(t, *a, **k):
            self.count += 1
            return real(t, *a, **k)
        return wrapped


@pytest.mark.parametrize("optimizer,amp,clip", [("sgd", "off", None), ("adamw", "bf16", 10.0)])
def test_train_step_reads_nothing_from_the_device(monkeypatch, optimizer, amp, clip):
    torch.manual_seed(0)
    model = build_model(num_classes=5, **TINY).train()
    cfg = TrainConfig(optimizer=optimizer, amp=amp, clip_grad_norm=clip, lr=0.01)
    opt = build_optimizer(model, cfg, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    images, targets = _batch()
    meter = StepMeter(torch.device("cpu"), LOSSES, streak=0, limit=5)
    monkeypatch.setattr(torch.Tensor, "__repr__", lambda t: "tensor")  # no reads from a debugger/pytest repr
    reads = ReadCounter(monkeypatch)
    for i in range(2):
        step = train_step(model, opt, images, targets, cfg, torch.device("cpu"), scaler, resolve_precision(amp, "cpu"))
        meter.add(step, len(images), i)
    assert reads.count == 0
    r = meter.read()
    # (bf16 at 64 px: oneDNN's bf16 weight gradient of the stride-2 P7 conv on a 1x1 channels_last input is
    # garbage, so the clipped gradient norm is not finite and the step is skipped: BENCHMARKS.md)
    assert r.steps + r.skipped == 2 and r.images == 2 * r.steps and all(math.isfinite(v) for v in r.sums.values())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_non_finite_step_is_skipped_on_the_device(optimizer, nan_loss):
    torch.manual_seed(0)
    net = nan_loss(build_model(num_classes=5, **TINY).train())
    cfg = TrainConfig(optimizer=optimizer, amp="off", lr=0.01)
    opt = build_optimizer(net.model, cfg, fused=True)
    scaler, precision = torch.amp.GradScaler("cpu", enabled=False), resolve_precision("off", "cpu")
    images, targets = _batch()
    meter = StepMeter(torch.device("cpu"), LOSSES, streak=0, limit=2)
    meter.add(train_step(net, opt, images, targets, cfg, torch.device("cpu"), scaler, precision), 2, 0)
    weights = {k: v.clone() for k, v in net.model.state_dict().items()}
    state = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in opt.state.values()]
    net.poison = True
    for i in (1, 2):
        step = train_step(net, opt, images, targets, cfg, torch.device("cpu"), scaler, precision)
        assert not bool(step["finite"])
        meter.add(step, 2, i)
    params = dict(net.model.named_parameters())
    assert all(torch.equal(weights[k], p) for k, p in params.items())  # weights and optimizer state unchanged
    assert all(torch.equal(a[k], b[k]) for a, b in zip(state, opt.state.values()) for k in a)
    r = meter.read()
    assert (r.steps, r.images, r.skipped, r.streak, r.limit_step) == (1, 2, 2, 2, 2)  # the limit was reached at step 2
    assert math.isnan(r.last["loss"]) and math.isfinite(r.sums["loss"])
    net.poison = False
    meter.add(train_step(net, opt, images, targets, cfg, torch.device("cpu"), scaler, precision), 2, 3)
    assert meter.read().streak == 0 and not all(torch.equal(weights[k], p) for k, p in params.items())


def test_training_reads_the_device_every_print_every_steps(tmp_path, monkeypatch):
    import retinanet.engine.train.loop as T
    from retinanet.config import DataConfig, ModelConfig
    from retinanet.data import make_synthetic

    make_synthetic(tmp_path / "syn", num_train=5, num_val=1, image_size=64, seed=0)
    reads = []
    real = T.StepMeter.read
    monkeypatch.setattr(T.StepMeter, "read", lambda self: reads.append(1) or real(self))
    model = ModelConfig(**TINY)
    data = DataConfig(root=str(tmp_path / "syn" / "VOCdevkit"), workers=0)
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=1, print_every=2, device="cpu", amp="off", weights="none")
    T.train(model, data, cfg, progress=False)
    assert len(reads) == 3  # after steps 2, 4 and 5 (the last) of 5
    log = (tmp_path / "run" / "train.log").read_text()
    assert "precision: fp32 (amp off)" in log and "step 4/5 loss " in log and "step 3/5" not in log


# --- constants and copies -----------------------------------------------------------------------


def test_normalize_builds_its_constants_once():
    x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    from retinanet.model import transform

    transform._STATS.clear()
    out = normalize(x)
    cached = transform._STATS[(x.device, torch.float32)]
    assert transform._mean_std(x.device, torch.float32, cache=True) is cached  # no new tensors per call
    expected = (x.float() / 255 - torch.tensor(transform.IMAGE_MEAN)[:, None, None]) / torch.tensor(transform.IMAGE_STD)[:, None, None]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_detections_to_host_is_one_copy_per_batch_and_keeps_values():
    outs = [{"boxes": torch.rand(k, 4) * 100, "scores": torch.rand(k).to(torch.bfloat16), "labels": torch.randint(1, 90, (k,))}
            for k in (3, 0, 5)]
    host = detections_to_host(outs)
    assert [len(h["scores"]) for h in host] == [3, 0, 5] and detections_to_host([]) == []
    for h, o in zip(host, outs):
        np.testing.assert_array_equal(h["boxes"], o["boxes"].double().numpy())
        np.testing.assert_array_equal(h["scores"], o["scores"].double().numpy())
        np.testing.assert_array_equal(h["labels"], o["labels"].numpy())
        assert h["labels"].dtype == np.int64


def test_step_meter_continues_the_sums_of_a_resumed_epoch():
    from retinanet.engine.train.loop import EpochStats

    start = EpochStats(sums={"loss": 3.0, "classification": 2.0, "bbox_regression": 1.0}, steps=2, images=4, skipped=1)
    meter = StepMeter(torch.device("cpu"), LOSSES, streak=1, limit=3, start=start)
    step = {"loss": torch.tensor(1.5), "classification": torch.tensor(1.0), "bbox_regression": torch.tensor(0.5),
            "finite": torch.tensor(True)}
    meter.add(step, 2, 3)
    r = meter.read()
    assert (r.steps, r.images, r.skipped, r.streak, r.limit_step) == (3, 6, 1, 0, -1)
    assert r.sums == {"loss": 4.5, "classification": 3.0, "bbox_regression": 1.5} and r.last["loss"] == 1.5
