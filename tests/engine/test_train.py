"""Training engine: outputs, weights_only checkpoints, exact resume (tiny resnet18, 64 px, CPU)."""

import csv
import dataclasses
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
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    data = DataConfig(root=root, workers=0)
    return model, data, TrainConfig(out=str(out), batch_size=4, lr=0.01, warmup_iters=2, device="cpu", **{"print_every": 100, **train})


def test_outputs_eval_every_summary_and_config_round_trip(data_root, tmp_path, capsys, monkeypatch):
    import retinanet.engine.train as T
    from retinanet.cli import build_parser, data_config_from_args

    saved = []
    real_save = T.save_checkpoint
    monkeypatch.setattr(T, "save_checkpoint", lambda state, path: saved.append((state["epoch"], path.name)) or real_save(state, path))
    model_cfg, data_cfg, train_cfg = _cfgs(data_root, tmp_path / "run", epochs=2, eval_every=2, print_every=1)
    s = train(model_cfg, data_cfg, train_cfg, progress=True)  # stdout is not a terminal: one line per step
    run = tmp_path / "run"
    for name in ("results.csv", "metrics.json", "results.png", "classes.json", "config.yaml", "train.log", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert saved == [(0, "last.pt"), (1, "last.pt"), (1, "best.pt")]  # best.pt only on evaluated epochs
    rows = list(csv.DictReader((run / "results.csv").open()))
    metrics = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert set(metrics + ["lr", "loss", "time_s", "images_per_s", "peak_mem_mb", "skipped_steps"]) <= set(rows[0])
    assert all(rows[0][k] == "" for k in metrics) and all(rows[1][k] != "" for k in metrics)  # epoch 1 not evaluated
    assert rows[1]["val_images"] == "2" and float(rows[1]["images_per_s"]) > 0 and float(rows[1]["peak_mem_mb"]) > 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and "optimizer" in ck and ck["config"]["model"]["arch"] == "resnet18_fpn"
    assert s["best_epoch"] == 2 and json.loads((run / "metrics.json").read_text())["best_epoch"] == 2

    printed = capsys.readouterr().out
    assert "epoch 1/2 step 1/1 loss" in printed and "epoch 1/2: loss" in printed and "not evaluated" in printed
    assert "epoch 2/2: loss" in printed and "AP50" in printed
    text = T.summary_text(s)
    for name in ("best.pt", "last.pt", "results.csv", "metrics.json", "results.png", "config.yaml", "classes.json", "train.log"):
        assert str(run / name) in text, name
    assert "(epoch 2)" in text and f"retinanet eval --weights {run / 'best.pt'} --data {data_root}" in text
    log = (run / "train.log").read_text()
    assert "epoch 1/2 step 1/1 loss" in log and "epoch 2/2: loss" in log and text in log

    # the written config gives back the same configs (num_classes: the dataset's)
    args = build_parser().parse_args(["train", "--config", str(run / "config.yaml")])
    m, d, t = T.configs_from(args, data_config_from_args)
    assert (m, d, t) == (dataclasses.replace(model_cfg, num_classes=5), data_cfg, train_cfg)


def test_resume_is_exact(data_root, tmp_path, capsys):
    full = train(*_cfgs(data_root, tmp_path / "a", epochs=2), progress=False)
    assert capsys.readouterr().out == ""  # progress=False: silent
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
