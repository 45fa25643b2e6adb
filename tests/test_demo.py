"""``retinanet demo``: the real train -> eval -> predict commands on a tiny synthetic set (CPU)."""

from __future__ import annotations

import json

import pytest

from retinanet.cli import main
from retinanet.cli.demo import RECIPE, DemoOptions, demo_commands, demo_data_config, run_demo
from retinanet.data.synthetic import default_synthetic_root
from retinanet.errors import RetinaNetError

TINY = ["--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-size", "64", "--epochs", "1", "--workers", "0",
        "--device", "cpu", "--num-images", "2",
        "--", "--min-size", "64", "--max-size", "64", "--fpn-channels", "32", "--head-convs", "1", "--batch-size", "4",
        "--no-amp"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETINANET_CACHE", str(tmp_path / "cache"))  # a fresh machine: the data is generated
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    for name in ("train/best.pt", "train/last.pt", "train/results.csv", "train/config.yaml", "eval/eval.json",
                 "eval/detections.json", "eval/pr_curves.png", "predict/predictions.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "predict" / "images").iterdir())) == 2
    root = default_synthetic_root(num_train=4, num_val=2, image_size=64)
    assert root.parent == tmp_path / "cache" / "synthetic"
    assert (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "val.txt").is_file()
    assert json.loads((out / "eval" / "eval.json").read_text())["num_images"] == 2
    printed = capsys.readouterr().out
    assert "demo finished in" in printed and "COCO AP" in printed
    for path in (out / "train", out / "eval" / "eval.json", out / "eval" / "pr_curves.png", out / "predict" / "images", root):
        assert str(path) in printed
    assert "retinanet export --weights" in printed


def test_synthetic_sizes_come_from_the_recipe_at_run_time(tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {synthetic_train: 7, synthetic_size: 96}\n")
    monkeypatch.setattr("retinanet.cli.demo.RECIPE", str(recipe))
    d = demo_data_config(DemoOptions())
    assert (d.synthetic_train, d.synthetic_val, d.synthetic_size) == (7, 100, 96)
    assert demo_data_config(DemoOptions(synthetic_val=3)).synthetic_val == 3
    recipe.write_text("data: {synthetic_train: 7, colour: red}\n")  # read as `retinanet train` reads it
    with pytest.raises(RetinaNetError, match="r.yaml: unknown option.* colour"):
        demo_data_config(DemoOptions())


def test_commands_and_reserved_options(tmp_path):
    cmds = demo_commands(DemoOptions(out="d", epochs=2, train_options=("--lr", "0.1")), tmp_path, [tmp_path / "a.jpg"])
    assert [c for c, _ in cmds] == ["train", "eval", "predict"]
    assert cmds[0][1][:5] == ["train", "--config", RECIPE, "--out", "d/train"] and cmds[0][1][-2:] == ["--lr", "0.1"]
    assert cmds[1][1][:3] == ["eval", "--weights", "d/train/best.pt"] and str(tmp_path) in cmds[1][1]
    assert "--exist-ok" not in cmds[0][1]
    with pytest.raises(RetinaNetError, match="--data"):
        demo_commands(DemoOptions(train_options=("--data", "x")), tmp_path, [])


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_cpus_that_have_it_said_aloud(tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr("retinanet.cli.demo.cpu_has_native_bf16", lambda: native)
    train = demo_commands(DemoOptions(out="d", device="cpu"), tmp_path, [])[0][1]
    assert (train[-2:] == ["--amp", "bf16"]) == native and ("native bf16" in capsys.readouterr().out) == native
    train = demo_commands(DemoOptions(out="d", device="cpu", train_options=("--no-amp",)), tmp_path, [])[0][1]
    assert "bf16" not in train  # the user's choice stands


@pytest.mark.parametrize("native", [True, False])
def test_a_time_budgeted_fp32_cpu_demo_trains_the_regnet_body_and_says_so(tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr("retinanet.cli.demo.cpu_has_native_bf16", lambda: native)
    train = demo_commands(DemoOptions(out="d", device="cpu"), tmp_path, [], train_minutes=4.0)[0][1]
    said = capsys.readouterr().out
    assert ("--arch" in train) == (not native) and ("RegNetX-400MF body" in said) == (not native)
    if not native:
        assert train[train.index("--arch") + 1] == "regnet_x_400mf_fpn_v2" and "--amp" not in train
    # a fixed number of epochs, the user's --arch, or a GPU: the recipe's body
    assert "--arch" not in demo_commands(DemoOptions(out="d", device="cpu", epochs=14), tmp_path, [])[0][1]
    mine = demo_commands(DemoOptions(out="d", device="cpu", train_options=("--arch", "resnet18_fpn_v2")), tmp_path, [],
                         train_minutes=4.0)[0][1]
    assert mine.count("--arch") == 1 and mine[-2:] == ["--arch", "resnet18_fpn_v2"]
    assert "--arch" not in demo_commands(DemoOptions(out="d", device="cuda"), tmp_path, [], train_minutes=4.0)[0][1]


def test_a_second_demo_replaces_the_first_and_says_so_but_never_a_run_no_demo_wrote(tmp_path, capsys):
    from retinanet.cli.demo import DEMO_MARKER

    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "best.pt").write_bytes(b"a run of the user's own")
    with pytest.raises(RetinaNetError, match="holds a training run that no demo wrote: the demo would replace it"):
        demo_commands(DemoOptions(out=str(tmp_path / "d")), tmp_path, [])  # `retinanet train --out d/train`: kept
    (tmp_path / "d" / DEMO_MARKER).write_text("")  # what a demo writes into its --out
    train = demo_commands(DemoOptions(out=str(tmp_path / "d")), tmp_path, [])[0][1]
    assert train[-1] == "--exist-ok" and "replaces it" in capsys.readouterr().out


def test_first_failing_step_stops_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETINANET_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--out", str(tmp_path / "d"), "--synthetic-train", "2", "--synthetic-val", "1", "--synthetic-size", "32",
            "--", "--lr", "not-a-number"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "step train exited with status 2" in err and "not-a-number" in err
    assert not (tmp_path / "d" / "eval").exists()


def test_run_demo_runs_the_commands_through_the_runner_it_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETINANET_CACHE", str(tmp_path / "cache"))
    ran = []
    opts = DemoOptions(out=str(tmp_path / "d"), synthetic_train=2, synthetic_val=1, synthetic_size=32, num_images=1)
    assert run_demo(opts, run_command=lambda argv: ran.append(argv[0]) or 3) == 3  # train fails: stop there
    assert ran == ["train"] and "step train exited with status 3" in capsys.readouterr().err


def test_the_demo_trains_for_what_is_left_of_its_time_budget(tmp_path, capsys):
    from retinanet.cli.demo import DEFAULT_MINUTES, demo_budget, training_minutes

    assert demo_budget(DemoOptions()) == DEFAULT_MINUTES == 5.0  # the default demo: 5 minutes in all
    assert demo_budget(DemoOptions(epochs=3)) is None and demo_budget(DemoOptions(time=2.0)) == 2.0
    assert training_minutes(5.0, spent_s=6.0) == pytest.approx((300 - 6 - 18) / 60)  # 6% (18 s) kept for eval + predict
    assert training_minutes(1.0, spent_s=0.0) == pytest.approx((60 - 15) / 60)  # at least 15 s kept
    assert training_minutes(0.2, spent_s=30.0) == 0.1  # never nothing
    train = demo_commands(DemoOptions(out="d"), tmp_path, [], train_minutes=4.5)[0][1]  # 
    assert train[train.index("--time") + 1] == "4.50" and "--epochs" not in train
    for reserved in ("--time", "--epochs", "--eval-every"):
        with pytest.raises(RetinaNetError, match="set by the demo itself"):
            demo_commands(DemoOptions(train_options=(reserved, "3")), tmp_path, [])
    assert main(["demo", "--out", str(tmp_path / "x"), "--time", "3", "--epochs", "2"]) == 2
    assert "--time and --epochs together" in capsys.readouterr().err
