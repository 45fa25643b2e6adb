"""The command line: every sub-command's help, one-line usage errors, --version, README consistency."""

from __future__ import annotations

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
