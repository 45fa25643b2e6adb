"""Training options: --weights from a torchvision file, --ema, --amp (bf16 on CPU)."""

import math

import pytest
import torch

import retinanet.engine.train.loop as T
from retinanet.cli import main
from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.runtime.checkpoint import load_model
from retinanet.engine.runtime.precision import resolve_precision
from retinanet.engine.train.loop import train, train_step
from retinanet.model import build_model

TINY = dict(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=4, num_val=2, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def test_torchvision_weights_reinit_only_the_classifier(data_root, tmp_path, capsys):
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path / "tv.pth"
    torch.save(tv, path)
    run = tmp_path / "run"
    code = main(["train", "--data", data_root, "--weights", str(path), "--min-size", "64", "--max-size", "64", "--epochs", "1",
                 "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(run), "--warmup-iters", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    cls = "head.classification_head.cls_logits"
    assert f"re-initialised 2 tensor(s) for 5 outputs: {cls}.weight, {cls}.bias" in printed
    assert "training finished: 1 epoch(s)" in printed and str(run / "best.pt") in printed
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["iteration"] == 1 and ck["config"]["model"]["arch"] == "resnet50_fpn"
    w = ck["model"]
    assert w[f"{cls}.weight"].shape == (5 * 9, 256, 3, 3) and tv[f"{cls}.weight"].shape == (91 * 9, 256, 3, 3)
    assert torch.equal(w["backbone.body.conv1.weight"], tv["backbone.body.conv1.weight"])  # frozen stage: as loaded
    assert torch.equal(w["backbone.body.bn1.running_mean"], tv["backbone.body.bn1.running_mean"])
    assert not torch.equal(w["backbone.body.layer4.0.conv1.weight"], tv["backbone.body.layer4.0.conv1.weight"])  # trained


def test_ema_is_saved_and_evaluated(data_root, tmp_path, monkeypatch):
    seen = []
    real = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda model, *a, **k: seen.append({k: v.clone() for k, v in model.state_dict().items()})
                        or real(model, *a, **k))
    s = train(ModelConfig(**TINY), DataConfig(root=data_root, workers=0),
              TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", ema=True,
                          weights="none"),
              progress=False)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["ema_module"]["n_averaged"] == 2 and s["history"][0]["AP"] is not None
    key = "head.regression_head.bbox_reg.weight"
    assert not torch.equal(ck["ema"][key], ck["model"][key])  # 2 steps: the average differs from the weights
    assert len(seen) == 1 and all(torch.equal(seen[0][k], ck["ema"][k]) for k in ck["ema"])  # the EMA was evaluated
    model, _ = load_model(tmp_path / "run" / "last.pt")
    assert torch.equal(model.state_dict()[key], ck["ema"][key])  # and is what eval/predict/export load


def test_amp_on_cpu_runs_a_bf16_step_with_finite_fp32_losses():
    torch.manual_seed(0)
    # 96 px, not 64: at <= 64 px oneDNN's bf16 weight gradient of the P7 conv (1x1 input) is garbage
    # and the step is (rightly) skipped (BENCHMARKS.md, "Mixed precision")
    model = build_model(num_classes=5, **(TINY | {"min_size": 96, "max_size": 96})).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 40, 50]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
        losses = model(images, targets)
    assert next(iter(feats.values())).dtype == torch.bfloat16  # autocast is really on
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    before = model.head.regression_head.bbox_reg.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = train_step(model, opt, images, targets, TrainConfig(amp="bf16"), torch.device("cpu"),
                     torch.amp.GradScaler("cpu", enabled=False), resolve_precision("bf16", "cpu"))
    assert set(out) == {"classification", "bbox_regression", "loss", "finite"} and bool(out["finite"])
    assert all(math.isfinite(float(v)) for v in out.values())
    assert not torch.equal(before, model.head.regression_head.bbox_reg.weight)


def test_words_a_config_mistypes_are_refused_and_the_coco_backend_reaches_each_evaluation(data_root, tmp_path, monkeypatch):
    """``scheduler: cosinus`` in a config file was refused only after the data was read and the
    model built; training had no ``--coco-backend`` (eval had), so crowded val images were scored
    by the slower one every epoch."""
    from retinanet.cli import build_parser
    from retinanet.cli.train import train_configs
    from retinanet.engine.train.setup import check_train_config
    from retinanet.errors import RetinaNetError

    for field, word, allowed in (("scheduler", "cosinus", "multistep, cosine"), ("optimizer", "adam", "sgd, adamw"),
                                 ("coco_backend", "fast", "pycocotools, faster_coco_eval")):
        with pytest.raises(RetinaNetError, match=f"{field} '{word}' is not one of {allowed}"):
            check_train_config(TrainConfig(**{field: word}))
    parsed = train_configs(build_parser().parse_args(["train", "--coco-backend", "faster_coco_eval"]))[2]
    assert parsed.coco_backend == "faster_coco_eval" and TrainConfig().coco_backend == "pycocotools"
    backends, real = [], T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: backends.append(k["backend"]) or real(*a, **k))
    train(ModelConfig(**TINY), DataConfig(root=data_root, workers=0),
          TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=2, lr=0.01, warmup_iters=1, device="cpu",
                      weights="none", coco_backend="faster_coco_eval"), progress=False)
    assert backends == ["faster_coco_eval"]
