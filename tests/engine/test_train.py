"""Training engine: outputs, weights_only checkpoints, exact resume (tiny resnet18, 64 px, CPU)."""

import csv
import json

import pytest
import torch

from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.train import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=4, num_val=2, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _cfgs(root, out, **train):
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64)
    data = DataConfig(root=root, workers=0)
    return model, data, TrainConfig(out=str(out), batch_size=4, lr=0.01, warmup_iters=2, device="cpu", print_every=100, **train)


def test_outputs_and_weights_only_checkpoint(data_root, tmp_path):
    s = train(*_cfgs(data_root, tmp_path / "run", epochs=1), progress=False)
    run = tmp_path / "run"
    for name in ("results.csv", "metrics.json", "results.png", "classes.json", "config.yaml", "train.log", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    row = next(csv.DictReader((run / "results.csv").open()))
    assert {"AP", "AP50", "ARl", "lr", "loss", "images_per_s", "peak_mem_mb"} <= set(row)
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] == 0 and "optimizer" in ck and ck["config"]["model"]["arch"] == "resnet18_fpn"
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == s["best_epoch"]


def test_resume_is_exact(data_root, tmp_path):
    full = train(*_cfgs(data_root, tmp_path / "a", epochs=2), progress=False)
    train(*_cfgs(data_root, tmp_path / "b", epochs=1), progress=False)
    resumed = train(*_cfgs(data_root, tmp_path / "b", epochs=2, resume=str(tmp_path / "b")), progress=False)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["history"][-1]["loss"] == resumed["history"][-1]["loss"]


def test_sigterm_writes_checkpoint_and_resume_command(data_root, tmp_path, monkeypatch):
    import os
    import signal

    import retinanet.engine.train as T

    real = T.train_step

    def step_then_signal(*a, **k):
        out = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(T, "train_step", step_then_signal)
    s = train(*_cfgs(data_root, tmp_path / "run", epochs=2), progress=False)
    assert s["stopped"] == "SIGTERM" and s["resume"].endswith("interrupted.pt")
    assert (tmp_path / "run" / "interrupted.pt").is_file()


def test_non_finite_losses_stop_with_clear_error(data_root, tmp_path, monkeypatch):
    import retinanet.engine.train as T
    from retinanet.errors import RetinaNetError

    monkeypatch.setattr(T.D, "all_reduce_mean", lambda v: v * float("nan"))
    with pytest.raises(RetinaNetError, match="consecutive non-finite"):
        train(*_cfgs(data_root, tmp_path / "run", epochs=3, max_bad_steps=2), progress=False)
