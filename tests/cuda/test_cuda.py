"""The GPU path: AMP training, equality with torchvision on CUDA, the CLI with ``--device cuda``,
CUDA RNG state in checkpoints. Every test needs a CUDA GPU and is skipped without one.

    pytest -m cuda tests/cuda          # or: bash benchmarks/gpu_check.sh (make gpu-check)

CPU-sized models (resnet18 at 128 px) except the torchvision comparison (resnet50, as on CPU in
tests/model/test_compat.py, whose inputs and matching helpers are reused here).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retinanet import build_model
from retinanet.data import make_synthetic

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[2]


def _load_compat():
    """tests/model/test_compat.py as a module (test folders are not packages)."""
    spec = importlib.util.spec_from_file_location("_compat_cpu", REPO / "tests" / "model" / "test_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compat = _load_compat()


# --- AMP training -------------------------------------------------------------------------------


def _tiny_batch(device):
    """Two random 128x160 images with two boxes each (labels 1..3), on ``device``."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 160, generator=g).to(device) for _ in range(2)]
    boxes = [torch.tensor([[10.0, 12, 70, 90], [80, 30, 150, 110]]),
             torch.tensor([[5.0, 5, 60, 60], [60, 40, 140, 120]])]
    labels = [torch.tensor([1, 2]), torch.tensor([3, 1])]
    targets = [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels)]
    return images, targets


def overfit_losses(device, amp_dtype: torch.dtype | None, steps: int = 30) -> list[float]:
    """Total loss of each of ``steps`` training steps on one fixed batch (autocast ``amp_dtype``;
    fp16 with a GradScaler, as ``retinanet train --amp`` does on GPUs)."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=4, min_size=128, max_size=160, norm="bn",
                        trainable_backbone_layers=5, fpn_channels=64, head_convs=2).to(device)
    model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images, targets = _tiny_batch(device)
    history = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = model(images, targets)
        assert all(v.dtype == torch.float32 for v in losses.values())  # the loss runs in fp32 under autocast
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        history.append(loss.item())
    return history


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=["fp16_gradscaler", "bf16"])
def test_amp_training_overfits_one_batch(amp_dtype):
    if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    losses = overfit_losses("cuda", amp_dtype)
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


def test_amp_auto_resolves_on_cuda():
    """``--amp auto`` (the default) on this card: bf16 where it has it, else fp16 with gradient scaling."""
    from retinanet.engine.runtime.precision import resolve_precision

    bf16 = torch.cuda.is_bf16_supported()
    p = resolve_precision("auto", "cuda")
    assert p.dtype == (torch.bfloat16 if bf16 else torch.float16) and p.grad_scaling == (not bf16), p


def test_train_step_skips_a_non_finite_step_on_cuda(nan_loss):
    """The auto precision's step (fused optimizer; fp16: GradScaler): a NaN loss changes no weight.
    Host-device syncs of the whole step are counted by ``bench_gpu.py --sync-debug``."""
    from retinanet.config import TrainConfig
    from retinanet.engine.train.optim import build_optimizer
    from retinanet.engine.runtime.precision import resolve_precision
    from retinanet.engine.train.loop import train_step

    torch.manual_seed(0)
    net = nan_loss(build_model("resnet18_fpn", num_classes=4, min_size=128, max_size=160, norm="bn",
                              trainable_backbone_layers=5, fpn_channels=64, head_convs=2).cuda().train())
    precision = resolve_precision("auto", "cuda")
    cfg = TrainConfig(optimizer="adamw", lr=0.01)
    opt = build_optimizer(net.model, cfg, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.grad_scaling)
    images, targets = _tiny_batch("cuda")
    device = torch.device("cuda")
    assert bool(train_step(net, opt, images, targets, cfg, device, scaler, precision)["finite"])
    params = {k: p.detach().clone() for k, p in net.model.named_parameters()}
    net.poison = True
    assert not bool(train_step(net, opt, images, targets, cfg, device, scaler, precision)["finite"])
    assert all(torch.equal(params[k], p) for k, p in net.model.named_parameters())
    net.poison = False
    assert bool(train_step(net, opt, images, targets, cfg, device, scaler, precision)["finite"])
    assert not all(torch.equal(params[k], p) for k, p in net.model.named_parameters())


def test_train_log_and_config_say_the_precision(gpu_run):
    import yaml

    _, run = gpu_run
    name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert f"precision: {name} autocast (amp on: CUDA" in (run / "train.log").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["amp"] == name


# --- equality with torchvision on CUDA ----------------------------------------------------------


@pytest.fixture
def strict_fp32():
    """No TF32 in convolutions and matmuls: the comparison is in real fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def compare_with_torchvision(arch: str, tv_builder, device) -> None:
    """Same weights, same inputs: the same detections and losses as torchvision's RetinaNet.

    On the GPU, kernels may sum in another order than on the CPU, so scores are compared up to
    float rounding and detections are matched by (label, score, box) instead of position (a score
    near the 0.01 threshold may fall on either side).
    """
    torch.manual_seed(0)
    tv = tv_builder(weights=None, weights_backbone=None, num_classes=5, **compat.SMALL)
    ours = build_model(arch, num_classes=5, norm="bn", trainable_backbone_layers=5, **compat.SMALL)
    ours.load_state_dict(tv.state_dict())
    ours.to(device).eval(), tv.to(device).eval()
    imgs, targets = compat._inputs()
    imgs = [im.to(device) for im in imgs]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    a, b, nhwc = compat._detect_both_layouts(ours, tv, imgs)
    for x, y, z in zip(a, b, nhwc):
        assert x["boxes"].device.type == torch.device(device).type
        assert len(x["boxes"]) > 0 and abs(len(x["boxes"]) - len(y["boxes"])) <= max(2, len(y["boxes"]) // 100)
        for p, q in ((x, y), (y, x), (z, y), (y, z)):
            assert compat._found_in(p, q, 100, score_tol=1e-4, box_tol=2e-2)
        torch.testing.assert_close(x["scores"][:100], y["scores"][:100], rtol=1e-4, atol=1e-5)
    ours.train(), tv.train()
    la, lb = ours(imgs, targets), tv(imgs, targets)
    for k in ("classification", "bbox_regression"):
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5)
        assert la[k].dtype == torch.float32


@pytest.mark.parametrize("arch,builder", [("resnet50_fpn", "retinanet_resnet50_fpn"),
                                          ("resnet50_fpn_v2", "retinanet_resnet50_fpn_v2")])
def test_same_detections_and_losses_as_torchvision(arch, builder, strict_fp32):
    from torchvision.models import detection

    compare_with_torchvision(arch, getattr(detection, builder), "cuda")


# --- the CLI with --device cuda -----------------------------------------------------------------


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m retinanet ARGV`` on this checkout; fails the test with its output on error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "retinanet", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"retinanet {' '.join(argv)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


TINY_MODEL = ["--arch", "resnet18_fpn", "--norm", "bn", "--trainable-backbone-layers", "5", "--min-size", "128",
              "--max-size", "128", "--fpn-channels", "32", "--head-convs", "1"]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """(data root, run dir): the synthetic set, one epoch of ``retinanet train --device cuda --amp``."""
    tmp = tmp_path_factory.mktemp("gpu")
    make_synthetic(tmp / "syn", num_train=16, num_val=8, image_size=128, seed=0)
    data, run = tmp / "syn" / "VOCdevkit", tmp / "run"
    cli("train", "--data", str(data), *TINY_MODEL, "--epochs", "1", "--batch-size", "4", "--workers", "2",
        "--amp", "--device", "cuda", "--out", str(run), "--quiet", cwd=tmp)
    return data, run


def test_train_one_epoch_on_cuda(gpu_run):
    _, run = gpu_run
    for name in ("last.pt", "best.pt", "results.csv", "metrics.json", "train.log"):
        assert (run / name).is_file(), name
    ck = torch.load(run / "last.pt", weights_only=True, map_location="cpu")
    assert ck["epoch"] == 0 and ck["config"]["train"]["device"] == "cuda"
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_checkpoint_carries_cuda_rng_and_resume_runs_on_cuda(gpu_run, tmp_path):
    data, run = gpu_run
    ck = torch.load(run / "last.pt", weights_only=True, map_location="cpu")
    assert len(ck["rng"]["cuda"]) == torch.cuda.device_count()
    assert all(s.dtype == torch.uint8 and s.numel() > 0 for s in ck["rng"]["cuda"])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("last.pt", "config.yaml", "classes.json"):
        if (run / name).exists():
            (resumed / name).write_bytes((run / name).read_bytes())
    cli("train", "--resume", str(resumed), "--epochs", "2", "--out", str(resumed), "--quiet", cwd=tmp_path)
    ck2 = torch.load(resumed / "last.pt", weights_only=True, map_location="cpu")
    assert ck2["epoch"] == 1
    assert not all(torch.equal(ck["model"][k], ck2["model"][k]) for k in ck["model"])  # it trained on


def test_rng_state_round_trip_includes_cuda(tmp_path):
    from retinanet.engine.train.optim import rng_state, set_rng_state

    state = rng_state()
    assert "cuda" in state
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    a = torch.rand(8, device="cuda")
    set_rng_state(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(8, device="cuda"), a)


@pytest.mark.parametrize("amp", [[], ["--amp"]], ids=["fp32", "amp"])
def test_eval_on_cuda(gpu_run, tmp_path, amp):
    data, run = gpu_run
    out = tmp_path / "eval"
    proc = cli("eval", "--weights", str(run / "best.pt"), "--data", str(data), "--device", "cuda", *amp,
               "--batch-size", "4", "--workers", "2", "--out", str(out), "--quiet", cwd=tmp_path)
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    assert 0 <= metrics["AP"] <= 1 and "AP50" in proc.stdout and (out / "detections.json").is_file()


def test_predict_on_cuda(gpu_run, tmp_path):
    data, run = gpu_run
    images = data / "VOC2012" / "JPEGImages"
    out = tmp_path / "pred"
    cli("predict", str(images), "--weights", str(run / "best.pt"), "--device", "cuda", "--score-thresh", "0",
        "--out", str(out), "--quiet", cwd=tmp_path)
    predictions = json.loads((out / "predictions.json").read_text())["images"]
    assert len(predictions) == len(list(images.glob("*.jpg")))
    assert any(p["detections"] for p in predictions)  # --score-thresh 0: detections kept


def test_export_of_a_cuda_checkpoint(gpu_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, run = gpu_run
    proc = cli("export", "--weights", str(run / "best.pt"), "--out", str(tmp_path / "m.onnx"), cwd=tmp_path)
    assert (tmp_path / "m.onnx").is_file() and "exported" in proc.stdout
