"""config.py: defaults < file < overrides over plain dicts; config files round trip; removed fields."""

import dataclasses

import pytest

from retinanet.config import (SECTIONS, DataConfig, ModelConfig, TrainConfig, read_config_file, resolve_config,
                              write_config_file)
from retinanet.errors import RetinaNetError


def test_overrides_beat_the_file_which_beats_the_defaults():
    file = {"model": {"arch": "resnet18_fpn", "min_size": 96}, "data": {"years": ["2012"], "workers": 1},
            "train": {"lr": 0.5, "lr_steps": [3]}}
    m, d, t = resolve_config(file, {"model": {"min_size": 64}, "train": {"lr_steps": [1, 2]}}, source="exp.yaml")
    assert m == ModelConfig(arch="resnet18_fpn", min_size=64)
    assert d == DataConfig(years=("2012",), workers=1)  # lists become tuples
    assert t == TrainConfig(lr=0.5, lr_steps=(1, 2))
    assert resolve_config() == (ModelConfig(), DataConfig(), TrainConfig())


def test_unknown_options_name_where_they_come_from():
    with pytest.raises(RetinaNetError, match="exp.yaml: unknown option\\(s\\) in train: lr_rate"):
        resolve_config({"train": {"lr_rate": 1}}, source="exp.yaml")
    with pytest.raises(RetinaNetError, match="options: unknown option\\(s\\) in model: colour"):
        resolve_config({}, {"model": {"colour": "red"}})
    with pytest.raises(RetinaNetError, match="exp.yaml: unknown section\\(s\\) optim"):
        resolve_config({"optim": {}}, source="exp.yaml")


def test_a_switch_or_a_list_given_as_something_else_is_refused_by_name(tmp_path):
    """A quoted "no" was a string, so the switch was on (``photometric: "no"`` trained with photometric
    distortion); a lone number for a list setting was a TypeError traceback in the run."""
    path = tmp_path / "exp.yaml"
    path.write_text('data: {photometric: "no", aspect_grouping: false, train_sizes: 96, years: [2012]}\n'
                    'train: {ema: "false", lr_steps: 5, clip_grad_norm: null}\n')
    file = read_config_file(path)
    with pytest.raises(RetinaNetError) as err:
        resolve_config({"data": file["data"]}, source=str(path))
    assert str(err.value) == (f"{path}: data.photometric must be true or false, not 'no'; "
                              "data.train_sizes must be a list, not 96 (one item: [96])")
    with pytest.raises(RetinaNetError, match="train.ema must be true or false, not 'false'; train.lr_steps must be a list"):
        resolve_config({"train": file["train"]}, source=str(path))
    with pytest.raises(RetinaNetError, match=r"model.anchor_sizes must be a list, not None$"):  # `anchor_sizes:` left empty
        resolve_config({"model": {"anchor_sizes": None}}, source=str(path))
    assert resolve_config({"data": {"photometric": False, "train_sizes": [96]}, "train": {"clip_grad_norm": None}})[1] \
        == DataConfig(train_sizes=(96,))


def test_every_problem_of_a_config_file_is_said_at_once(tmp_path):
    """A file with an unknown option, a switch of another kind and a number out of its limits in
    one section, and a problem in another, was refused at its first problem: fixed one by one, a
    run per fix."""
    path = tmp_path / "exp.yaml"
    path.write_text("model: {min_size: 0}\n"
                    "train: {epoch: 3, ema: 'no', lr: -1, batch_size: 4}\n")
    with pytest.raises(RetinaNetError) as err:
        resolve_config(read_config_file(path), source=str(path))
    assert str(err.value).splitlines() == [
        f"{path}: model.min_size must be at least 1, not 0",
        f"{path}: unknown option(s) in train: epoch; train.ema must be true or false, not 'no'; "
        "train.lr must be a finite number above 0.0, not -1.0"]


def test_a_setting_given_twice_in_a_config_file_is_refused_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: an edited ``lr:`` left above its
    new value, or a JSON file with a key twice, trained with whichever came last."""
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\n  lr: 0.001\n")
    with pytest.raises(RetinaNetError, match=r"exp.yaml: cannot read config \(key 'lr' is given twice \(lines 2 and 4\)"):
        read_config_file(path)
    path.write_text('{"train": {"epochs": 3, "epochs": 5}}')
    with pytest.raises(RetinaNetError, match="key 'epochs' is given twice"):
        read_config_file(path)


def test_removed_extra_field_is_ignored_and_no_longer_written(tmp_path):
    assert resolve_config({"train": {"extra": {"a": 1}, "epochs": 2}})[2] == TrainConfig(epochs=2)
    assert "extra" not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(RetinaNetError, match="unknown option.s. in data: extra"):  # only where the field existed
        resolve_config({"data": {"extra": {}}})


def test_written_config_file_reads_back_to_the_same_configs(tmp_path):
    configs = (ModelConfig(arch="resnet18_fpn"), DataConfig(years=("2007", "2012"), train_sizes=(96, 128)),
               TrainConfig(lr_steps=(4,), clip_grad_norm=1.0))
    write_config_file(tmp_path / "c.yaml", dict(zip(SECTIONS, configs)))
    assert resolve_config(read_config_file(tmp_path / "c.yaml")) == configs


def test_field_names_are_unique_across_sections():
    """The CLI maps an option to the config field of the same name, whatever its section."""
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))


def test_a_config_name_is_the_recipe_even_beside_a_folder_of_that_name_and_a_folder_is_named(tmp_path, monkeypatch):
    """`--config coco` run from ~/data (which holds a coco/ folder) found the folder, not the recipe."""
    from retinanet.config import RECIPES_DIR, find_config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").mkdir()
    assert find_config("coco") == RECIPES_DIR / "coco.yaml"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train: {}\n")
    with pytest.raises(RetinaNetError, match=r"run: a folder, not a config file; give run/config.yaml"):
        find_config(str(tmp_path / "run").replace(str(tmp_path) + "/", ""))


def test_a_tilde_in_a_config_file_s_paths_is_the_home_folder(tmp_path, monkeypatch):
    """`train.out: ~/runs/x` in a config file made a literal ./~/runs/x; `data.classes: ~/c.json` was not found."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  root: ~/data\n  classes: ~/classes.json\n  val_split: ~/val.txt\n"
                   "train:\n  out: ~/runs/x\n  weights: ~/w.pt\n  resume: ~/runs/old\n  backbone_weights: imagenet\n")
    _, d, t = resolve_config(read_config_file(cfg), source=str(cfg))
    assert (d.root, d.classes, d.val_split) == (f"{tmp_path}/data", f"{tmp_path}/classes.json", f"{tmp_path}/val.txt")
    assert (t.out, t.weights, t.resume, t.backbone_weights) == (f"{tmp_path}/runs/x", f"{tmp_path}/w.pt", f"{tmp_path}/runs/old",
                                                                "imagenet")
    _, d, _ = resolve_config({"data": {"val_split": "val", "root": "data~1/x"}})  # a split name, a ~ inside a name: as they are
    assert (d.val_split, d.root) == ("val", "data~1/x")
