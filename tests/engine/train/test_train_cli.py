"""``retinanet train`` options: defaults < config file < command line; config errors; TensorBoard."""

import sys

import pytest
import torch
import yaml

from retinanet.cli import build_parser, main
from retinanet.cli.train import train_configs
from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.train.loop import train
from retinanet.errors import RetinaNetError


def _configs(*argv):
    return train_configs(build_parser().parse_args(["train", *argv]))


def test_command_line_beats_config_file_beats_defaults(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"arch": "resnet18_fpn", "min_size": 96, "max_size": 128},
        "data": {"root": "from_file", "train_split": "trainval", "years": ["2012"], "hflip_prob": 0.2, "photometric": True},
        "train": {"lr": 0.5, "epochs": 3, "lr_steps": [2], "amp": True, "momentum": 0.8},
    }))
    m, d, t = _configs("--config", str(cfg), "--data", "cli_root", "--min-size", "64", "--hflip-prob", "0.7",
                       "--no-photometric", "--lr", "0.1", "--lr-steps", "1", "2", "--no-amp", "--weight-decay", "0.001",
                       "--eval-every", "2", "--synthetic-val", "7", "--workers", "0", "--ema-decay", "0.99",
                       "--anchor-sizes", "16", "32", "64", "128", "256", "--box-loss", "giou")
    assert m == ModelConfig(arch="resnet18_fpn", min_size=64, max_size=128, anchor_sizes=(16, 32, 64, 128, 256), box_loss="giou")
    # --data replaces the root only: the file's other data options stay
    assert d == DataConfig(root="cli_root", train_split="trainval", years=("2012",), hflip_prob=0.7, photometric=False,
                           synthetic_val=7, workers=0)
    assert t == TrainConfig(lr=0.1, epochs=3, lr_steps=(1, 2), amp=False, momentum=0.8, weight_decay=0.001,
                            eval_every=2, ema_decay=0.99)
    # nothing given on the command line: the file's values, and defaults for the rest
    m, d, t = _configs("--config", str(cfg))
    assert (m.min_size, d.root, d.hflip_prob, d.photometric, d.val_split, t.lr, t.amp, t.warmup_iters) == (
        96, "from_file", 0.2, True, "val", 0.5, "on", TrainConfig().warmup_iters)  # a config's amp: true = "on"
    # the memory layout: on by default, off from the command line
    assert t.channels_last and not _configs("--config", str(cfg), "--no-channels-last")[2].channels_last


def test_default_recipe_and_defaults_with_data():
    recipe = _configs("--config", "quick_synthetic")
    assert _configs() == recipe  # no --config and no --data: the quick_synthetic recipe
    assert recipe[0].arch == "resnet18_fpn_v2" and recipe[1].root is None and recipe[2].out == "runs/quick_synthetic"
    m, d, t = _configs("--synthetic-train", "16", "--synthetic-size", "64")
    assert (m, t) == recipe[::2] and (d.synthetic_train, d.synthetic_size, d.synthetic_val) == (16, 64, 100)
    m, d, t = _configs("--data", "voc")  # --data and no --config: the dataclass defaults
    assert (m, d, t) == (ModelConfig(), DataConfig(root="voc"), TrainConfig())


def test_resume_without_config_uses_the_checkpoint_config(tmp_path):
    (tmp_path / "data").mkdir()
    stored = {"model": {"arch": "resnet18_fpn", "num_classes": 5}, "data": {"root": str(tmp_path / "data"), "workers": 0},
              "train": {"out": str(tmp_path), "epochs": 2, "lr": 0.02}}
    torch.save({"config": stored, "model": {}}, tmp_path / "last.pt")
    m, d, t = _configs("--resume", str(tmp_path), "--epochs", "4")
    assert m == ModelConfig(arch="resnet18_fpn", num_classes=5) and d == DataConfig(root=str(tmp_path / "data"), workers=0)
    assert t == TrainConfig(out=str(tmp_path), epochs=4, lr=0.02, resume=str(tmp_path))


def test_removed_extra_field_of_old_checkpoints_and_config_files_is_ignored(tmp_path):
    stored = {"model": {"arch": "resnet18_fpn"}, "data": {}, "train": {"epochs": 2, "extra": {"note": "old"}}}
    torch.save({"config": stored, "model": {}}, tmp_path / "last.pt")
    assert _configs("--resume", str(tmp_path))[2] == TrainConfig(out=str(tmp_path), epochs=2, resume=str(tmp_path))
    cfg = tmp_path / "old.yaml"
    cfg.write_text(yaml.safe_dump(stored))
    assert _configs("--config", str(cfg))[2] == TrainConfig(epochs=2)


@pytest.mark.parametrize("content,message", [
    ("model: {arch: resnet18_fpn, colour: red}\n", "unknown option(s) in model: colour"),
    ("model: {lr: 0.1}\n", "unknown option(s) in model: lr (it belongs in train:)"),
    ("model: {}\noptimiser: {lr: 1}\n", "unknown section(s) optimiser"),
    ("- just\n- a list\n", "a config file is a mapping"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("model: {arch: [unclosed\n", "cannot read config"),
])
def test_bad_config_file_is_one_clear_line(tmp_path, capsys, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    with pytest.raises(RetinaNetError, match=f"{cfg}: .*{message}".replace("(", r"\(").replace(")", r"\)")):
        _configs("--config", str(cfg))
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retinanet train: error: ") and str(cfg) in err and "\n" not in err


def test_missing_config_names_recipes(capsys):
    assert main(["train", "--config", "no_such_recipe"]) == 2
    assert "no_such_recipe: no such config file, nor a shipped recipe (coco, demo_synthetic, quick_synthetic" in capsys.readouterr().err


def test_tensorboard_missing_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "no_dataset"), "--tensorboard", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--tensorboard needs the tensorboard package: pip install 'retinanet[tensorboard]'" in err
    assert not out.exists()  # failed before reading the dataset or creating the run dir


def test_tensorboard_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    make_synthetic(tmp_path / "syn", num_train=2, num_val=1, image_size=64)
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    s = train(model, DataConfig(root=str(tmp_path / "syn"), workers=0),
              TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=2, device="cpu", tensorboard=True, weights="none"),
              progress=False)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0 and s["files"]["tensorboard"] == str(tmp_path / "run" / "tensorboard")


def test_what_the_data_left_out_is_in_train_log_and_said_plainly_even_quiet(tmp_path, capsys):
    """--skip-bad: the items left out and boxes dropped are the run's record, not a terminal's
    ``file:line: UserWarning`` lines."""
    make_synthetic(tmp_path / "syn", num_train=3, num_val=1, image_size=64)
    xml = tmp_path / "syn" / "VOCdevkit" / "VOC2012" / "Annotations"
    (xml / "train_00001.xml").write_text("<annotation><object>")
    run = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "syn"), "--arch", "resnet18_fpn", "--from-scratch", "--min-size", "64",
            "--max-size", "64", "--fpn-channels", "32", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
            "--workers", "0", "--skip-bad", "--sync-bn", "--quiet", "--out", str(run)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    line = f"data: skipped: {xml / 'train_00001.xml'}: malformed XML"
    log = (run / "train.log").read_text()
    assert line in log and "data: 1 item(s) left out, 0 warning(s)" in log
    assert line in err and "UserWarning" not in err
    said = "warning: sync_bn has no effect: one process, so no batch statistics to synchronise"  # not silently recorded
    assert said in log and said in err


def test_settings_a_run_cannot_use_and_shared_images_are_named():
    from types import SimpleNamespace

    from retinanet.engine.train.setup import settings_without_effect, shared_images

    model = ModelConfig(norm="bn")
    said = settings_without_effect(model, DataConfig(val_fraction=0.5), TrainConfig(scheduler="cosine", lr_steps=(1,)), "voc", 1)
    assert said == ["lr_steps [1] has no effect: settings of the multistep schedule, and this run's is cosine",
                    "val_fraction 0.5 has no effect: settings of a flat VOC folder's validation draw, and this dataset (voc) "
                    "names its splits (--train-split/--val-split)"]
    assert settings_without_effect(model, DataConfig(val_fraction=0.5), TrainConfig(lr_steps=(1,)), "voc-flat", 1) == []
    assert settings_without_effect(model, DataConfig(), TrainConfig(sync_bn=True), "voc", 2) == []
    assert "frozen" in settings_without_effect(ModelConfig(norm="frozen_bn"), DataConfig(), TrainConfig(sync_bn=True), "voc", 2)[0]
    assert settings_without_effect(ModelConfig(norm="bn", min_size=96, max_size=96), DataConfig(train_sizes=(64, 128, 160)),
                                   TrainConfig(), "voc", 1) == [
        "train_sizes 128, 160 are above max_size 96: the long side's cap makes them smaller (raise --max-size, or give "
        "smaller --train-sizes)"]
    assert settings_without_effect(model, DataConfig(), TrainConfig(sync_bn=True), "voc", 2, "cpu") == [
        "sync_bn has no effect on cpu: PyTorch's SyncBatchNorm runs on GPUs only, so each process keeps its own batch statistics"]
    split = lambda *files: SimpleNamespace(records=[SimpleNamespace(file=f) for f in files])  # noqa: E731
    assert shared_images(SimpleNamespace(train=split("a", "b"), val=split("c"))) == ""
    assert shared_images(SimpleNamespace(train=split("/d/a.jpg", "/d/b.jpg"), val=split("/d/b.jpg", "/d/c.jpg"))).startswith(
        "the training and validation splits share 1 of the 2 validation image(s) (b.jpg): the AP is measured on")


def test_the_package_s_warnings_print_as_one_plain_line_and_others_as_python_shows_them(capsys):
    import warnings

    import retinanet.data.build
    from retinanet.cli import plain_warnings

    with pytest.warns(UserWarning, match="from elsewhere") as seen:  # Python's way: to whoever records
        python_show = warnings.showwarning
        with plain_warnings("x"):
            warnings.warn_explicit("from the package", UserWarning, retinanet.data.build.__file__, 1)
            warnings.warn_explicit("from elsewhere", UserWarning, __file__, 1)
        assert warnings.showwarning is python_show  # given back
    assert [str(w.message) for w in seen] == ["from elsewhere"]
    err = capsys.readouterr().err
    assert err == "retinanet x: warning: from the package\n"


def test_the_log_says_how_the_run_trains():
    from retinanet.engine.train.setup import training_line

    line = training_line(DataConfig(train_sizes=(96, 128), photometric=True), TrainConfig(ema=True, batch_size=8), 2)
    assert line == ("training: batch 8 x 2 process(es), sgd lr 0.01, augmentation: hflip 0.5, short sides 96, 128, photometric; "
                    "EMA of the weights (decay 0.9998, ramped up over 2000 steps), evaluated and saved")
    assert "augmentation: none; no EMA" in training_line(DataConfig(hflip_prob=0.0), TrainConfig(), 1)


def test_resuming_a_run_whose_dataset_moved_names_both_options_at_once(tmp_path, capsys):
    from dataclasses import asdict

    from retinanet.cli import main
    from retinanet.config import DataConfig
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    ckpt = tmp_path / "run" / "last.pt"
    ckpt.parent.mkdir()
    save_checkpoint({"model": {}, "config": {"data": asdict(DataConfig(root=str(tmp_path / "gone")))}}, ckpt)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt} was trained on {tmp_path / 'gone'}, which is not there now" in err
    assert "give --data NEW_ROOT --resume-allow root" in err


def test_reading_the_data_shows_progress_on_stderr_not_in_the_log_and_not_quiet(tmp_path, capsys, monkeypatch):
    """80k YOLO images: `train` printed nothing for 53 s while it read the annotations."""
    from retinanet.data import progress

    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # as if reading had lasted 2 s
    make_synthetic(tmp_path / "syn", num_train=3, num_val=1, image_size=64)
    argv = ["train", "--data", str(tmp_path / "syn"), "--arch", "resnet18_fpn", "--from-scratch", "--min-size", "64",
            "--max-size", "64", "--fpn-channels", "32", "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "reading annotations: train 3/3 images (100%)" in capsys.readouterr().err
    assert "reading annotations" not in (tmp_path / "run" / "train.log").read_text()
    assert main([*argv, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert "reading annotations" not in capsys.readouterr().err


def test_train_takes_the_detection_caps_on_the_command_line():
    """The cap warning told a training run to edit the config's model section: the only way to set
    detections_per_img. train takes --max-dets and --topk-candidates as eval and predict do."""
    m, _, _ = _configs("--data", "voc", "--max-dets", "1000", "--topk-candidates", "3000")
    assert (m.detections_per_img, m.topk_candidates) == (1000, 3000)
    assert _configs("--data", "voc")[0] == ModelConfig()


def test_train_from_weights_and_resume_read_the_checkpoint_once(tmp_path, monkeypatch):
    """``--resume`` read its checkpoint twice (its configs, then its training state): with optimizer
    and EMA three times the model's size."""
    make_synthetic(tmp_path / "syn", num_train=2, num_val=1, image_size=64)
    argv = ["train", "--data", str(tmp_path / "syn"), "--arch", "resnet18_fpn", "--min-size", "64", "--max-size", "64",
            "--norm", "bn", "--trainable-backbone-layers", "5", "--fpn-channels", "32", "--epochs", "1", "--batch-size",
            "2", "--device", "cpu", "--workers", "0", "--quiet"]
    assert main([*argv, "--from-scratch", "--out", str(tmp_path / "a")]) == 0
    loads, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(str(f)) or real(f, *a, **k))
    assert main([*argv, "--weights", str(tmp_path / "a" / "last.pt"), "--out", str(tmp_path / "b")]) == 0
    assert loads == [str(tmp_path / "a" / "last.pt")]
    loads.clear()
    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "2", "--quiet"]) == 0
    assert loads == [str(tmp_path / "b" / "last.pt")]
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1  # the resumed run trained on
