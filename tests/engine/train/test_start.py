"""The start of a training run (retinanet.engine.train.start): defaults, refusals, what the log and
config.yaml say, and `retinanet eval` of best.pt reproducing the run's own validation metrics
(frozen BN from a served "ImageNet" file, and BN from scratch). No network: TORCH_HOME is tmp_path
and named files are served with file:// URLs."""

import hashlib
import json

import pytest
import torch
import yaml
import torchvision
from torchvision.models import resnet

import retinanet.model.weights as W
from retinanet.cli import build_parser, main
from retinanet.cli.train import train_configs
from retinanet.config import ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.evaluate.coco import METRIC_NAMES
from retinanet.engine.train.start import load_start, resolve_start
from retinanet.errors import RetinaNetError


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_a_torchvision_reference_script_checkpoint_as_weights_loads_its_model_entry_and_the_log_says_so(tmp_path):
    """``train --weights model_7.pth`` of torchvision's detection reference scripts (``{"model", "optimizer",
    "lr_scheduler", "args": argparse.Namespace, "epoch"}``) was refused ("no '...cls_logits.weight'")."""
    import argparse

    from retinanet import build_model

    tiny = dict(min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    src = build_model("resnet18_fpn", num_classes=4, **tiny)
    path = tmp_path / "model_7.pth"
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}}, "lr_scheduler": {"last_epoch": 8},
                "args": argparse.Namespace(lr=0.01, weights=None), "epoch": 7}, path)
    model = build_model("resnet18_fpn", num_classes=3, **tiny)
    cfg, reinit, line = load_start(model, TrainConfig(weights=str(path), backbone_weights="none"), progress=False)
    assert reinit == list(W.CLS_KEYS) and cfg.start_sha256
    assert line.startswith(f"weights: loaded {path}, sha256 {cfg.start_sha256}; {path}: a checkpoint of torchvision's "
                           "detection reference scripts, saved after epoch 7: its 'model' entry loaded; optimizer, "
                           "lr_scheduler, args, epoch not used")
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"], src.state_dict()["backbone.body.conv1.weight"])


@pytest.mark.parametrize("arch, weights, backbone", [("resnet50_fpn", "coco", "none"), ("resnet50_fpn_v2", "coco-v2", "none"),
                                                     ("resnet18_fpn", "none", "imagenet")])
def test_default_start_by_arch_is_pretrained_and_said(arch, weights, backbone):
    m, t, notes = resolve_start(ModelConfig(arch=arch), TrainConfig())
    assert (t.weights, t.backbone_weights, m.norm, m.trainable_backbone_layers) == (weights, backbone, "frozen_bn", 3)
    assert notes[0].startswith("start: no weights given:") and "--from-scratch" in notes[0]


def test_a_model_the_coco_file_does_not_fit_defaults_to_imagenet():
    _, t, _ = resolve_start(ModelConfig(fpn_channels=64), TrainConfig())
    assert (t.weights, t.backbone_weights) == ("none", "imagenet")


def test_from_scratch_trains_everything_and_says_so():
    m, t, notes = resolve_start(ModelConfig(), TrainConfig(weights="None"))
    assert (m.norm, m.trainable_backbone_layers, t.weights, t.backbone_weights) == ("bn", 5, "none", "none")
    assert "start: from scratch" in notes[0] and "norm bn, trainable_backbone_layers 5" in notes[1]


@pytest.mark.parametrize("model, train, why", [
    ({"norm": "frozen_bn"}, {"weights": "none"}, "norm frozen_bn freezes BatchNorm at its initial values"),
    ({"trainable_backbone_layers": 3}, {"weights": "none"}, "trainable_backbone_layers 3 freezes 2 backbone stage"),
    ({}, {"weights": "coco", "backbone_weights": "imagenet"}, "the detector file already holds a backbone"),
    ({"arch": "resnet18_fpn"}, {"weights": "coco"}, "weights 'coco' are torchvision's resnet50_fpn"),
    ({"arch": "resnet50_fpn", "head_convs": 2}, {"weights": "coco"}, "head_convs 2"),
    ({"arch": "resnet7_fpn"}, {}, "unknown arch 'resnet7_fpn'; choose one of"),  # a KeyError traceback before
])
def test_combinations_that_make_no_sense_are_refused(model, train, why):
    with pytest.raises(RetinaNetError, match=why):
        resolve_start(ModelConfig(**model), TrainConfig(**train))


def test_cli_from_scratch_conflicts_and_command_line_start_replaces_the_files(tmp_path, capsys):
    assert main(["train", "--from-scratch", "--weights", "coco", "--data", str(tmp_path)]) == 2
    assert "--from-scratch and --weights coco: a start from scratch has no weights" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"backbone_weights": "imagenet", "start_sha256": "ab" * 32}}))
    t = train_configs(build_parser().parse_args(["train", "--config", str(cfg), "--weights", "x.pth"]))[2]
    assert (t.weights, t.backbone_weights, t.start_sha256) == ("x.pth", None, None)
    t = train_configs(build_parser().parse_args(["train", "--config", str(cfg), "--from-scratch"]))[2]
    assert (t.weights, t.backbone_weights) == ("none", "none")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=4, num_val=3, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _imagenet_like_resnet50(folder, body="resnet50"):
    """A ResNet-50 (or ``body``: a torchvision classification model) file whose BatchNorm
    variances are 1e-5, so the eps (1e-5 vs 0) changes every activation: an eval with the wrong
    eps gives other detections."""
    torch.manual_seed(0)
    state = (resnet.resnet50() if body == "resnet50" else getattr(torchvision.models, body)()).state_dict()
    for k in [k for k in state if k.endswith("running_var")]:
        state[k].fill_(1e-5)
        state[k.replace("running_var", "weight")].fill_(2e-5 ** 0.5)  # scale 1 with eps 1e-5
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{body}-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest


TINY = ["--min-size", "64", "--max-size", "64", "--fpn-channels", "32", "--head-convs", "1", "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--device", "cpu", "--warmup-iters", "1", "--lr", "0.01", "--quiet"]


@pytest.mark.parametrize("start", ["imagenet_frozen_bn", "imagenet_regnet_frozen_bn", "scratch_bn"])
def test_eval_of_best_pt_reproduces_the_runs_validation_metrics(start, data_root, tmp_path, monkeypatch):
    run, cfg = tmp_path / "run", tmp_path / "all_detections.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"score_thresh": 0.0}}))  # many detections: metrics far from 0
    if start == "imagenet_frozen_bn":
        path, digest = _imagenet_like_resnet50(tmp_path)
        monkeypatch.setitem(W.IMAGENET_URLS, "resnet50", path.as_uri())
        argv = ["--arch", "resnet50_fpn"]  # no weights given: coco does not fit these widths, so imagenet
    elif start == "imagenet_regnet_frozen_bn":  # RegNetX body: torchvision's file, frozen BN folded, 3 stages trained
        path, digest = _imagenet_like_resnet50(tmp_path, "regnet_x_400mf")
        monkeypatch.setitem(W.IMAGENET_URLS, "regnet_x_400mf", path.as_uri())
        argv = ["--arch", "regnet_x_400mf_fpn"]
    else:
        argv = ["--arch", "resnet18_fpn", "--from-scratch"]
    assert main(["train", "--config", str(cfg), "--data", data_root, *argv, *TINY, "--out", str(run)]) == 0
    log = (run / "train.log").read_text()
    config = yaml.safe_load((run / "config.yaml").read_text())
    if start.startswith("imagenet"):
        assert "backbone_weights: loaded imagenet" in log and f"sha256 {digest}" in log
        assert config["train"]["backbone_weights"] == "imagenet" and config["train"]["start_sha256"] == digest
        assert config["model"]["norm"] == "frozen_bn" and config["model"]["frozen_bn_eps"] == 1e-5
    else:
        assert "start: from scratch" in log and "weights: none, from scratch" in log
        assert config["train"]["weights"] == "none" and config["train"]["start_sha256"] is None
        assert (config["model"]["norm"], config["model"]["trainable_backbone_layers"]) == ("bn", 5)
    row = json.loads((run / "metrics.json").read_text())["epochs"][-1]
    assert main(["eval", "--weights", str(run / "best.pt"), "--data", data_root, "--out", str(tmp_path / "ev"),
                 "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]
    assert row["AR100"] > 0 and {k: metrics[k] for k in METRIC_NAMES} == {k: row[k] for k in METRIC_NAMES}
