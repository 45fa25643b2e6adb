"""retinanet/shell.py: command lines printed for the user, quoted for the platform's shell."""

import sys

from retinanet.shell import command_line


def test_posix_shells_get_shlex_quoting(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert command_line(["retinanet", "train", "--resume", "runs/run 1", "--x", "it's"]) == \
        "retinanet train --resume 'runs/run 1' --x 'it'\"'\"'s'"
    assert command_line(["retinanet", "eval", "--weights", "runs/a/best.pt"]) == "retinanet eval --weights runs/a/best.pt"


def test_windows_gets_double_quotes_that_cmd_and_powershell_read(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    assert command_line(["retinanet", "train", "--resume", r"C:\runs\run 1"]) == r'retinanet train --resume "C:\runs\run 1"'
    assert command_line(["retinanet", "eval", "--weights", r"C:\runs\a\best.pt"]) == r"retinanet eval --weights C:\runs\a\best.pt"
    assert "'" not in command_line(["retinanet", "predict", "my images", "--out", "x y"])
