"""The command line: every sub-command's help, one-line usage errors, --version, README consistency."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from retinanet import __version__
from retinanet.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
MAIN_OPTIONS = {
    "make-synthetic": ["--num-train", "--num-val", "--image-size", "--seed"],
    "check-data": ["--data", "--format", "--year", "--train-split", "--val-split", "--classes", "--val-fraction", "--skip-bad"],
    "train": ["--data", "--config", "--weights", "--epochs", "--batch-size", "--lr", "--device", "--out", "--resume",
              "--amp", "--ema", "--arch", "--min-size", "--workers"],
    "eval": ["--weights", "--data", "--split", "--out", "--voc", "--device", "--batch-size", "--coco-backend", "--min-size"],
    "predict": ["--weights", "--out", "--score-thresh", "--voc-xml", "--device", "--recursive", "--classes-filter",
                "--min-size"],
    "export": ["--weights", "--out", "--opset", "--image-size", "--batch-size", "--dynamic", "--static", "--no-verify",
               "--score-thresh", "--sample"],
    "demo": ["--out", "--device", "--epochs", "--synthetic-train", "--synthetic-val", "--synthetic-size"],
}


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _has_flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_every_command_is_listed_and_has_help(capsys):
    top = _help(capsys)
    assert set(MAIN_OPTIONS) == set(_commands())
    for command, options in MAIN_OPTIONS.items():
        assert command in top
        text = _help(capsys, command)
        assert text.startswith(f"usage: retinanet {command}")
        missing = [o for o in options if not _has_flag(text, o)]
        assert not missing, f"retinanet {command} --help lacks {missing}"


@pytest.mark.parametrize("argv", [[], ["--bogus"], ["train", "--no-such-option"], ["eval"], ["predict", "x.jpg"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("retinanet") and "error:" in err and "--help" in err


def test_library_errors_are_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.jpg"), "--weights", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retinanet predict: error: ") and "missing.jpg" in err and "Traceback" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"retinanet {__version__}"


def test_python_m_retinanet_without_command():
    """The real entry (``python -m retinanet``, as torchrun runs it): one line, exit 2."""
    run = subprocess.run([sys.executable, "-m", "retinanet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "COMMAND" in run.stderr and "Traceback" not in run.stderr


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


def _readme_commands() -> list[str]:
    """Every ``retinanet ...`` command line in the README's code blocks (continuations joined)."""
    fenced = re.findall(r"```(\w*)\n(.*?)```", README.read_text(), flags=re.S)
    blocks = [body for lang, body in fenced if lang in ("", "bash", "sh", "console")]
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("#", 1)[0] for line in lines if re.search(r"(^|\s)(-m )?retinanet [a-z]", line.split("#", 1)[0])]


def test_readme_commands_use_existing_options(capsys):
    """Each README command parses, and each option it gives is in that sub-command's --help (after ``demo --``: train's)."""
    helps = {c: _help(capsys, c) for c in _commands()}
    seen, wrong = set(), []
    for line in _readme_commands():
        found = re.search(r"retinanet ([a-z-]+)", line)
        command, line = found.group(1), line[found.end():]  # launcher options (torchrun's) are not ours
        assert command in helps, f"README runs an unknown command: {line}"
        seen.add(command)
        build_parser().parse_args([command, *shlex.split(line)])  # values have the right types too
        own, _, passed = line.partition(" -- ") if command == "demo" else (line, "", "")
        for text, target in ((own, command), (passed, "train")):
            wrong += [f"{target} {f}: {line.strip()}" for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", text)
                      if not _has_flag(helps[target], f)]
    assert not wrong, "README options missing from --help:\n" + "\n".join(wrong)
    assert seen == set(helps), f"README shows no command line for {sorted(set(helps) - seen)}"


# --- counts and limits checked when the command line is parsed; output paths before work (issue 22) --

def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.choices and "train" in a.choices)
    return action.choices


def test_no_numeric_option_of_any_command_takes_an_unchecked_int_or_float():
    """Every numeric option has a type that checks its limits (cli/options: positive_int,
    non_negative_int, fraction, field_type(...) from config.LIMITS), not bare int/float."""
    bare = [f"{name} {'/'.join(a.option_strings)}" for name, p in _subparsers().items() for a in p._actions
            if a.type in (int, float)]
    assert bare == []


BAD_VALUES = [  # (command line, option the message names)
    (["make-synthetic", "OUT", "--num-train", "0"], "--num-train"),
    (["make-synthetic", "OUT", "--num-val", "-1"], "--num-val"),
    (["make-synthetic", "OUT", "--image-size", "8"], "--image-size"),
    (["check-data", "--val-fraction", "1.5"], "--val-fraction"),
    (["check-data", "--min-size", "0"], "--min-size"),
    (["check-data", "--anchor-sizes", "32", "64", "0", "256", "512"], "--anchor-sizes"),
    (["check-data", "--max-image-pixels", "-5"], "--max-image-pixels"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "2.5"], "--epochs"),
    (["train", "--lr", "-0.1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--momentum", "1"], "--momentum"),
    (["train", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--warmup-iters", "-1"], "--warmup-iters"),
    (["train", "--lr-steps", "-2"], "--lr-steps"),
    (["train", "--lr-gamma", "0"], "--lr-gamma"),
    (["train", "--clip-grad", "0"], "--clip-grad"),
    (["train", "--ema-decay", "1.5"], "--ema-decay"),
    (["train", "--eval-every", "0"], "--eval-every"),
    (["train", "--print-every", "0"], "--print-every"),
    (["train", "--hflip-prob", "2"], "--hflip-prob"),
    (["train", "--train-sizes", "0"], "--train-sizes"),
    (["train", "--synthetic-train", "0"], "--synthetic-train"),
    (["train", "--synthetic-size", "4"], "--synthetic-size"),
    (["train", "--min-size", "0"], "--min-size"),
    (["train", "--fpn-channels", "0"], "--fpn-channels"),
    (["train", "--head-convs", "0"], "--head-convs"),
    (["train", "--trainable-backbone-layers", "6"], "--trainable-backbone-layers"),
    (["eval", "--weights", "w", "--batch-size", "0"], "--batch-size"),
    (["eval", "--weights", "w", "--workers", "-1"], "--workers"),
    (["eval", "--weights", "w", "--score-thresh", "-0.1"], "--score-thresh"),
    (["eval", "--weights", "w", "--max-size", "-1"], "--max-size"),
    (["predict", "x", "--weights", "w", "--max-dets", "0"], "--max-dets"),
    (["predict", "x", "--weights", "w", "--batch-size", "0"], "--batch-size"),
    (["predict", "x", "--weights", "w", "--workers", "-2"], "--workers"),
    (["predict", "x", "--weights", "w", "--score-thresh", "1.5"], "--score-thresh"),
    (["predict", "x", "--weights", "w", "--line-width", "0"], "--line-width"),
    (["export", "--weights", "w", "--out", "m.onnx", "--opset", "0"], "--opset"),
    (["export", "--weights", "w", "--out", "m.onnx", "--batch-size", "0"], "--batch-size"),
    (["export", "--weights", "w", "--out", "m.onnx", "--image-size", "-64"], "--image-size"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--workers", "-1"], "--workers"),
    (["demo", "--num-images", "0"], "--num-images"),
]


@pytest.mark.parametrize("argv, option", BAD_VALUES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_VALUES])
def test_bad_counts_and_limits_are_refused_when_parsed(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"argument {option}" in err and ("must be" in err), err


@pytest.mark.parametrize("command", ["predict x --weights w", "eval --weights w"])
def test_tile_and_no_tile_together_are_refused(command, capsys):
    """``--no-tile --tile 96`` tiled, the last one silently winning."""
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--no-tile", "--tile", "96"])
    assert exit_.value.code == 2 and "argument --tile: not allowed with argument --no-tile" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("train: {batch_size: 0}\n", "train.batch_size must be at least 1, not 0"),
    ("data: {workers: -1}\n", "data.workers must be at least 0, not -1"),
    ("train: {lr: -0.01, warmup_factor: 0}\n", "train.lr must be a finite number above 0.0, not -0.01; "
                                                "train.warmup_factor must be in (0.0, 1.0], not 0.0"),
    ("model: {anchor_sizes: [32, 0, 128, 256, 512]}\n", "model.anchor_sizes must be at least 1, not 0"),
    ("train: {epochs: ten}\n", "train.epochs must be a whole number, not 'ten'"),
])
def test_the_same_limits_hold_for_a_config_file(tmp_path, capsys, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cfg}: {message}" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["make-synthetic", "{file}/sub"], ["check-data", "--data", "{tmp}", "--out", "{file}/sub"]],
                         ids=["make-synthetic", "check-data"])
def test_output_paths_under_a_file_are_refused_before_work(tmp_path, capsys, argv):
    file = tmp_path / "file"
    file.write_text("x")
    assert main([a.format(file=file, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{file} is a file, not a folder" in err, err


def test_a_min_size_above_max_size_is_refused_before_any_work(tmp_path, run_cli):
    """The long side's cap would decide every scale: `--max-size 10` trained on 10 px images without a word."""
    for argv in (["train", "--data", str(tmp_path / "none"), "--min-size", "200", "--max-size", "100", "--out", str(tmp_path / "r")],
                 ["train", "--data", str(tmp_path / "none"), "--max-size", "10", "--out", str(tmp_path / "r")]):
        status, err = run_cli(argv)
        assert status == 2 and " is above max_size " in err and "give a max_size of at least" in err, err
        assert not (tmp_path / "r").exists()


def test_tile_options_without_tile_name_only_what_was_given(tmp_path, run_cli):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")  # never read: the options are refused first
    for extra, said in ((["--tile-whole-image"], "--tile-whole-image sets up tiled prediction: give --tile too"),
                        (["--tile-overlap", "0.1", "--tile-whole-image"],
                         "--tile-overlap and --tile-whole-image set up tiled prediction: give --tile too")):
        status, err = run_cli(["predict", str(image), "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "o"), *extra])
        assert status == 2 and said in err, err
        # a --crop model tiles by default: the way to change its overlap is --tile alone, said
        assert "(--tile alone: the model's input size, for a --crop model its crop side" in err, err


def test_predict_help_says_what_exif_auto_is_there(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'auto' the same as 'apply' (no annotation to say otherwise)" in text and "annotation's stated size" not in text


def test_eval_refuses_two_different_splits_to_evaluate(tmp_path, run_cli):
    status, err = run_cli(["eval", "--weights", str(tmp_path / "w.pt"), "--data", str(tmp_path), "--split", "train",
                           "--val-split", "test", "--out", str(tmp_path / "ev")])
    assert status == 2 and "--split train and --val-split test both name the split to evaluate: give one" in err


def test_an_input_taken_as_the_tile_side_is_named(tmp_path, run_cli):
    (tmp_path / "photos").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"")  # never read: the option is refused first
    status, err = run_cli(["predict", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "w.pt"), "--tile",
                           str(tmp_path / "photos"), "--out", str(tmp_path / "o")])
    assert status == 2 and "it looks like an input: give the inputs before --tile, or --tile PX" in err, err


def test_make_synthetic_over_a_larger_earlier_set_says_what_is_left(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["make-synthetic", str(out), "--num-train", "4", "--num-val", "2", "--image-size", "32"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["make-synthetic", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "32"]) == 0
    said = capsys.readouterr().out
    assert "warning: 6 file(s) of an earlier dataset in" in said and "delete the folder first" in said


def test_under_torchrun_an_error_every_process_meets_alike_is_printed_once_per_machine(tmp_path, monkeypatch, capsys):
    """torchrun: "unknown arch", a missing dataset and the like were printed by every process; each
    machine's first process (LOCAL_RANK 0) prints them, the others exit with the same status."""
    args = ["train", "--arch", "resnet7_fpn", "--out", str(tmp_path / "run"), "--quiet"]  # refused before the processes join
    monkeypatch.setenv("WORLD_SIZE", "2")
    for local_rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", local_rank)
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert main(args) == 2
        assert ("unknown arch 'resnet7_fpn'" in capsys.readouterr().err) == printed


def test_train_goes_on_when_its_output_is_closed_and_other_commands_end_without_a_traceback(tmp_path):
    from retinanet.data import make_synthetic
    make_synthetic(tmp_path / "syn", num_train=8, num_val=2, image_size=64, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = tmp_path / "run"
    # `retinanet train ... | head -1`: the reader takes one line and leaves
    proc = subprocess.Popen([sys.executable, "-m", "retinanet", "train", "--data", str(tmp_path / "syn"), "--arch",
                             "resnet18_fpn", "--from-scratch", "--fpn-channels", "16", "--head-convs", "1", "--min-size", "64",
                             "--max-size", "64", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                             "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().startswith("retinanet train ")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, err[-3000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err
    log = (run / "train.log").read_text()
    assert "epoch 2/2: loss" in log and (run / "best.pt").is_file()
    # a command that prints as it goes ends at the closed pipe, with one line why
    proc = subprocess.Popen([sys.executable, "-m", "retinanet", "check-data", "--data", str(tmp_path / "syn")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) in (0, 141), err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,option,expected", [
    (["predict", "~/a.jpg", "~", "--weights", "~/w.pt", "--out", "~/pred"], "inputs", ["{home}/a.jpg", "{home}"]),
    (["predict", "x.jpg", "--weights", "w.pt", "--out", "~/pred"], "out", "{home}/pred"),
    (["train", "--config", "~/exp.yaml", "--out", "~/runs/x", "--classes", "~/c.json", "--resume", "~/runs/old"], "config",
     "{home}/exp.yaml"),
    (["train", "--out", "~/runs/x"], "out", "{home}/runs/x"),
    (["check-data", "--data", "~/d", "--classes", "~/c.json", "--val-split", "~/val.txt", "--out", "~/report"], "classes",
     "{home}/c.json"),
    (["check-data", "--val-split", "~/val.txt"], "val_split", "{home}/val.txt"),
    (["eval", "--weights", "~/w.pt", "--out", "~/ev"], "out", "{home}/ev"),
    (["export", "--weights", "~/w.pt", "--out", "~/m.onnx"], "out", "{home}/m.onnx"),
    (["make-synthetic", "~/syn"], "out", "{home}/syn"),
], ids=["predict-inputs", "predict-out", "train-config", "train-out", "check-data-classes", "val-split", "eval-out",
        "export-out", "make-synthetic"])
def test_a_tilde_in_any_option_is_the_home_folder(tmp_path, monkeypatch, argv, option, expected):
    """`--out ~/run` (quoted, or --out=~/run: no shell expands it) made a literal ./~/run folder; predict "~/x.jpg":
    'no such file or folder'. Every option of every command is expanded where it is parsed."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(argv)
    value = getattr(args, option)
    assert value == ([e.format(home=tmp_path) for e in expected] if isinstance(expected, list) else expected.format(home=tmp_path))
    assert not any(isinstance(v, str) and v.startswith("~") for v in vars(args).values()), vars(args)


def test_make_synthetic_to_a_quoted_tilde_writes_under_home_not_a_folder_named_tilde(tmp_path, monkeypatch, capsys):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["make-synthetic", "~/syn", "--num-train", "2", "--num-val", "1", "--image-size", "32"]) == 0
    assert (home / "syn" / "classes.json").is_file() and not (cwd / "~").exists()


def test_a_script_without_a_main_guard_re_run_in_a_starting_worker_is_told_why(tmp_path, monkeypatch, capsys):
    """A script calling ``main([...])`` or ``train(...)`` at its top level runs again in each loader
    worker that spawn or forkserver starts: it printed "--out ...: in use by another process" there
    (the parent's run held it). Now the call is refused in the worker with the fix, and touches nothing."""
    import multiprocessing

    from retinanet.config import DataConfig, ModelConfig, TrainConfig
    from retinanet.engine.train.loop import train
    from retinanet.errors import RetinaNetError

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)  # as spawn's _main sets it
    out = tmp_path / "run"
    missing = tmp_path / "no-data"  # were the call run, it would stop there at once, with another message
    assert main(["train", "--data", str(missing), "--out", str(out), "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "retinanet train: not run again in a starting loader worker" in err and 'if __name__ == "__main__":' in err
    with pytest.raises(RetinaNetError, match="train\\(\\) called while a loader worker process was starting"):
        train(ModelConfig(), DataConfig(root=str(missing)), TrainConfig(out=str(out)))
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic VOC dataset (2 + 2 images of 64 px) and a tiny untrained checkpoint of its classes."""
    import json
    from dataclasses import asdict

    import torch

    from retinanet.data import make_synthetic
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    root = tmp_path_factory.mktemp("reads") / "data"
    make_synthetic(root, num_train=2, num_val=2, image_size=64, seed=0)
    class_map = json.loads((root / "classes.json").read_text())
    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=max(class_map.values()) + 1, min_size=64, max_size=64, norm="bn",
                        fpn_channels=32, head_convs=1)
    ckpt = root.parent / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config), "data": {"root": str(root)}},
                     "class_map": class_map}, ckpt)
    return root, ckpt


def count_loads(monkeypatch) -> list[str]:
    """The names of the files ``torch.load`` reads from now on (``files.read_file`` calls it), one per call."""
    import torch

    loads, real = [], torch.load

    def load(f, *args, **kwargs):
        loads.append(Path(f).name)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return loads


@pytest.mark.parametrize("command", ["eval", "eval-without-data", "predict", "export"])
def test_each_command_reads_its_checkpoint_once(tiny_run, tmp_path, monkeypatch, run_cli, command):
    """``eval`` read its checkpoint twice (its configs, then its weights): 150 MB for ResNet-50."""
    import retinanet.engine.export.onnx_export as onnx_export

    root, ckpt = tiny_run
    image = next((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    argv = {"eval": ["eval", "--weights", str(ckpt), "--data", str(root), "--workers", "0"],
            "eval-without-data": ["eval", "--weights", str(ckpt), "--workers", "0"],  # the dataset it records
            "predict": ["predict", str(image), "--weights", str(ckpt), "--workers", "0"],
            "export": ["export", "--weights", str(ckpt), "--no-verify"]}[command]
    out = tmp_path / ("m.onnx" if command == "export" else "out")
    # the export and its summary (half a minute) read no checkpoint: left out
    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, **kw: Path(path))
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda model, path, samples: onnx_export.VerifyReport(
        Path(path), 0.0, 18, [], [], {}, []))
    loads = count_loads(monkeypatch)
    status, err = run_cli([*argv, "--out", str(out), *(["--device", "cpu"] if command != "export" else [])])
    assert status == 0, err
    assert loads == ["tiny.pt"]
