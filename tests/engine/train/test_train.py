"""Training engine: outputs, weights_only checkpoints, exact resume (tiny resnet18, 64 px, CPU)."""

import csv
import dataclasses
import json

import pytest
import torch

import retinanet.engine.train.loop as T
from retinanet.cli import build_parser
from retinanet.cli.train import train_configs
from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.evaluate.coco import METRIC_NAMES
from retinanet.engine.runtime.precision import resolve_precision
from retinanet.engine.train.report import format_run_summary
from retinanet.engine.train.loop import train
from retinanet.errors import RetinaNetError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=4, num_val=2, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _cfgs(root, out, **train):
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    data = DataConfig(root=root, workers=0)
    return model, data, TrainConfig(out=str(out), device="cpu", weights="none",
                                    **{"batch_size": 4, "warmup_iters": 2, "lr": 0.01, "print_every": 100, **train})


def test_outputs_eval_every_summary_and_config_round_trip(data_root, tmp_path, capsys, monkeypatch):
    saved = []
    real_save = T.save_checkpoint
    monkeypatch.setattr(T, "save_checkpoint", lambda state, path: saved.append((state["epoch"], path.name)) or real_save(state, path))
    real_link = T.link_atomic
    monkeypatch.setattr(T, "link_atomic", lambda src, dst: saved.append((T.read_checkpoint(src)["epoch"], dst.name))
                        or real_link(src, dst))
    model_cfg, data_cfg, train_cfg = _cfgs(data_root, tmp_path / "run", epochs=2, eval_every=2, print_every=1)
    s = train(model_cfg, data_cfg, train_cfg, progress=True)  # stdout is not a terminal: one line per step
    run = tmp_path / "run"
    for name in ("results.csv", "metrics.json", "results.png", "classes.json", "config.yaml", "train.log", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert saved == [(0, "last.pt"), (1, "last.pt"), (1, "best.pt")]  # best.pt only on evaluated epochs
    assert (run / "best.pt").samefile(run / "last.pt")  # written once (files.link_atomic)
    rows = list(csv.DictReader((run / "results.csv").open()))
    metrics = list(METRIC_NAMES)
    assert set(metrics + ["lr", "loss", "time_s", "images_per_s", "peak_mem_mb", "skipped_steps"]) <= set(rows[0])
    assert all(rows[0][k] == "" for k in metrics) and all(rows[1][k] != "" for k in metrics)  # epoch 1 not evaluated
    assert rows[1]["val_images"] == "2" and float(rows[1]["images_per_s"]) > 0 and float(rows[1]["peak_mem_mb"]) > 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and "optimizer" in ck and ck["config"]["model"]["arch"] == "resnet18_fpn"
    assert s["best_epoch"] == 2 and json.loads((run / "metrics.json").read_text())["best_epoch"] == 2

    printed = capsys.readouterr().out
    assert "epoch 1/2 step 1/1 loss" in printed and "epoch 1/2: loss" in printed and "not evaluated" in printed
    assert "epoch 2/2: loss" in printed and "AP50" in printed
    text = format_run_summary(s)
    for name in ("best.pt", "last.pt", "results.csv", "metrics.json", "results.png", "config.yaml", "classes.json", "train.log"):
        assert str(run / name) in text, name
    assert "(epoch 2)" in text and f"retinanet eval --weights {run / 'best.pt'} --data {data_root}" in text
    log = (run / "train.log").read_text()
    assert "epoch 1/2 step 1/1 loss" in log and "epoch 2/2: loss" in log and text in log

    # the written config gives back the same configs (num_classes: the dataset's; the start resolved;
    # amp: the precision that ran)
    args = build_parser().parse_args(["train", "--config", str(run / "config.yaml")])
    m, d, t = train_configs(args)
    ran = resolve_precision(train_cfg.amp, "cpu")
    assert f"precision: {ran.describe()}" in log
    assert (m, d, t) == (dataclasses.replace(model_cfg, num_classes=5, trainable_backbone_layers=5), data_cfg,
                         dataclasses.replace(train_cfg, backbone_weights="none", amp=ran.mode))


def test_resume_is_exact(data_root, tmp_path, capsys):
    # fp32: bf16 training on CPU (oneDNN) is not bitwise reproducible from run to run (BENCHMARKS.md)
    full = train(*_cfgs(data_root, tmp_path / "a", epochs=2, amp="off"), progress=False)
    assert capsys.readouterr().out == ""  # progress=False: silent
    train(*_cfgs(data_root, tmp_path / "b", epochs=1, amp="off"), progress=False)
    resumed = train(*_cfgs(data_root, tmp_path / "b", epochs=2, amp="off", resume=str(tmp_path / "b")), progress=False)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["history"][-1]["loss"] == resumed["history"][-1]["loss"]


def test_every_evaluation_of_a_run_reuses_the_val_workers_and_the_run_ends_them(data_root, tmp_path, monkeypatch):
    """The val loader's workers start once and serve every epoch's evaluation (with spawn, as on
    macOS and Windows, each evaluation paid seconds to start them); the numbers are those of a run
    without workers, and the run ends its loaders' workers (val and training) when it ends."""
    seen, real = [], T.evaluate_epoch

    def spy(run, **kwargs):
        result = real(run, **kwargs)
        seen.append([list(loader._iterator._workers) if loader._iterator is not None else []
                     for loader in (run.val_loader, run.train_loader)])
        return result

    monkeypatch.setattr(T, "evaluate_epoch", spy)
    model_cfg, data_cfg, train_cfg = _cfgs(data_root, tmp_path / "none", epochs=2, amp="off")
    alone = train(model_cfg, data_cfg, train_cfg, progress=False)  # fp32: bitwise the same with any workers
    seen.clear()
    kept = train(model_cfg, dataclasses.replace(data_cfg, workers=1), dataclasses.replace(train_cfg, out=str(tmp_path / "w")),
                 progress=False)
    assert len(seen) == 2 and len(seen[0][0]) == 1 and all(evaluation == seen[0] for evaluation in seen)
    assert not any(w.is_alive() for w in seen[0][0] + seen[0][1])  # ended with the run
    numbers = lambda s: [(r["loss"], *(r[k] for k in METRIC_NAMES), r["val_images"]) for r in s["history"]]  # noqa: E731
    assert numbers(kept) == numbers(alone) and kept["history"][-1]["val_images"] == 2


def test_sigterm_writes_checkpoint_and_resume_command(data_root, tmp_path, monkeypatch):
    import os
    import signal

    real = T.train_step

    def step_then_signal(*a, **k):
        out = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(T, "train_step", step_then_signal)
    s = train(*_cfgs(data_root, tmp_path / "run", epochs=2), progress=False)
    assert s["stopped"] == "SIGTERM" and s["resume"] == f"retinanet train --resume {tmp_path / 'run'}"
    assert (tmp_path / "run" / "interrupted.pt").is_file()  # what --resume RUN takes: newer than any last.pt
    assert s["files"]["interrupted.pt"] == str(tmp_path / "run" / "interrupted.pt")  # in the summary's file list


def test_non_finite_losses_stop_with_clear_error(data_root, tmp_path):
    # lr 1e30: the first step (warmup factor 0.001 -> lr 1e27) sends the weights to inf, so every
    # later forward pass gives a real non-finite loss; 4 steps an epoch: the stop comes at step 3
    with pytest.raises(RetinaNetError, match=r"2 consecutive non-finite losses \(last at epoch 1, step 3\)"):
        train(*_cfgs(data_root, tmp_path / "run", epochs=3, max_bad_steps=2, lr=1e30, batch_size=1), progress=False)
    assert "error: 2 consecutive non-finite losses" in (tmp_path / "run" / "train.log").read_text()  # in the log too


def test_a_diverged_epoch_is_not_saved_and_stops_the_run(data_root, tmp_path, monkeypatch):
    """A diverged run ended as "training finished" (exit 0) with inf in best.pt and last.pt: the
    skipped steps' forward passes still moved the BatchNorm statistics, and epochs that trained
    nothing went on. Now the epoch that leaves non-finite weights, or trains nothing, stops the run
    before its checkpoint; the earlier ones are kept."""
    out = tmp_path / "run"
    with pytest.raises(RetinaNetError, match=r"after epoch 1 \d+ weight tensor\(s\) hold non-finite values .*the run "
                                             r"diverged; no checkpoint was written; lower --lr"):
        # 2 steps an epoch: the first finite (its lr of 1e27 sends the weights far), the second not: skipped,
        # but its forward pass took the BatchNorm statistics to inf
        train(*_cfgs(data_root, out, epochs=3, lr=1e30, batch_size=2), progress=False)
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    real, calls = T.train_step, []

    def skipped_from_epoch_2(*args, **kwargs):  # as a step with a non-finite loss: nothing changes, finite False
        calls.append(1)
        step = real(*args, **kwargs) if len(calls) == 1 else {k: torch.tensor(float("nan")) for k in template}
        template.update(step)
        return step if len(calls) == 1 else {**step, "finite": torch.tensor(False)}

    template = {}
    monkeypatch.setattr(T, "train_step", skipped_from_epoch_2)
    out = tmp_path / "run2"
    with pytest.raises(RetinaNetError, match=r"epoch 2 trained nothing: all its 1 step\(s\) had a non-finite loss \(the "
                                             rf"run diverged\); {out / 'last.pt'} still holds epoch 1"):
        train(*_cfgs(data_root, out, epochs=3), progress=False)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0  # epoch 1's, not overwritten


def test_tensorboard_scalars_per_step_and_epoch(data_root, tmp_path, monkeypatch):
    """What goes to TensorBoard, with a stand-in writer (the package is optional)."""
    scalars, closed = [], []

    class Writer:
        def __init__(self, path):
            assert path == str(tmp_path / "run" / "tensorboard")

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

        def close(self):
            closed.append(True)

    monkeypatch.setattr(T, "tensorboard_writer_class", lambda: Writer)
    s = train(*_cfgs(data_root, tmp_path / "run", epochs=1, tensorboard=True), progress=False)
    assert {("train/loss", 1), ("train/lr", 1), ("val/AP", 1), ("epoch/loss", 1), ("epoch/images_per_s", 1)} <= set(scalars)
    assert closed == [True] and s["files"]["tensorboard"] == str(tmp_path / "run" / "tensorboard")


def test_images_skipped_while_loading_are_in_train_log_the_summary_and_eval_json(tmp_path, capsys):
    """--skip-bad: an image that cannot be decoded was replaced in the loader workers, its warning
    only on the terminal (once per worker process); train.log, the summary and eval now name it."""
    from retinanet.cli import main
    root = tmp_path / "syn"
    make_synthetic(root, num_train=4, num_val=2, image_size=64, seed=0)
    voc = root / "VOCdevkit" / "VOC2012"
    train_ids = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()
    val_ids = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    for name in (train_ids[1], val_ids[0]):
        (voc / "JPEGImages" / f"{name}.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "run"
    model, data, cfg = _cfgs(str(root / "VOCdevkit"), out, epochs=2)
    summary = train(model, dataclasses.replace(data, skip_bad=True, workers=2), cfg, progress=False)
    bad_train, bad_val = (str(voc / "JPEGImages" / f"{n}.jpg") for n in (train_ids[1], val_ids[0]))
    assert [m.split(":")[0] for m in summary["decode_skipped"]] == sorted([bad_train, bad_val])
    log = (out / "train.log").read_text()
    assert log.count(f"data: skipped while loading: {bad_train}: cannot decode image") == 1  # once, whatever the epochs
    assert log.count(f"data: skipped while loading: {bad_val}: cannot decode image") == 1
    assert "skipped 2 image(s) that could not be decoded (--skip-bad; train.log names them)" in format_run_summary(summary)
    capsys.readouterr()
    assert main(["eval", "--weights", str(out / "last.pt"), "--data", str(root / "VOCdevkit"), "--skip-bad",
                 "--out", str(tmp_path / "ev"), "--workers", "0", "--quiet"]) == 0
    assert f"warning: 1 image(s) could not be decoded and are not in these numbers (--skip-bad): {bad_val}" in capsys.readouterr().out
    info = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert len(info["skipped_images"]) == 1 and info["skipped_images"][0].startswith(bad_val)
