"""The package on other platforms, emulated on this one in a subprocess each:

- Windows' standard library: no ``fcntl`` (the run folder's lock), no ``resource`` (peak memory);
  ``msvcrt`` is absent here too, so the lock's platform-without-either path runs (its Windows path is
  tests/engine/runtime/test_concurrent_use.py's, with a stand-in ``msvcrt``).
- A locale that is not UTF-8 (Windows' cp1252 when output is redirected, ``open()`` without an
  encoding): ``PYTHONUTF8=0 LC_ALL=C`` makes both ASCII, which cannot hold ``猫`` or ``é`` either.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from retinanet.data import make_synthetic

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18_fpn", "--norm", "bn", "--min-size", "64", "--max-size", "64", "--fpn-channels", "16",
        "--head-convs", "1", "--epochs", "1", "--batch-size", "2", "--warmup-iters", "1", "--workers", "0",
        "--device", "cpu", "--from-scratch"]

# Windows' standard library: these modules do not exist there ('import fcntl' raises ImportError)
NO_POSIX = """
import runpy, sys
for name in ("fcntl", "resource", "msvcrt"):
    sys.modules[name] = None
sys.argv = ["retinanet", "--help"]
try:
    runpy.run_module("retinanet", run_name="__main__", alter_sys=True)
except SystemExit as end:
    assert end.code in (0, None), end.code
from retinanet.cli import main
sys.exit(main({argv!r}))
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=2, num_val=1, image_size=64, seed=0)
    return root / "VOCdevkit"


@pytest.mark.slow
def test_without_fcntl_and_resource_help_and_a_training_run(data_root, tmp_path):
    out = tmp_path / "run"
    done = _python(NO_POSIX.format(argv=["train", "--data", str(data_root), "--out", str(out), *TINY]))
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "usage: retinanet" in stdout and "training finished: 1 epoch(s)" in stdout
    assert "peak mem - MiB" in stdout  # no reading without resource (Windows itself reads it through ctypes)
    assert (out / "best.pt").is_file() and (out / ".lock").read_text() == ""  # held (without a lock here), let go


def _unicode_classes(voc_root: Path) -> None:
    """Rename the synthetic classes: circle, star -> 猫; square, triangle -> étoile."""
    names = {"circle": "猫", "star": "猫", "square": "étoile", "triangle": "étoile"}
    for xml in (voc_root / "VOC2012" / "Annotations").glob("*.xml"):
        text = xml.read_text(encoding="utf-8")
        xml.write_text(re.sub(r"<name>(\w+)</name>", lambda m: f"<name>{names[m[1]]}</name>", text), encoding="utf-8")


# Commands given as arguments, separated by NEXT, run in one process as 'retinanet ...' runs each (main);
# as arguments, their paths reach main as the locale decodes them, as a real command line's do.
NEXT = "--next-command--"
COMMANDS = f"""
import sys
from retinanet.cli import main
commands = [[]]
for arg in sys.argv[1:]:
    if arg == {NEXT!r}:
        commands.append([])
    else:
        commands[-1].append(arg)
codes = [main(argv) for argv in commands]
print("exit statuses", codes)
"""


@pytest.mark.slow
def test_a_locale_that_is_not_utf8_reads_and_prints_unicode_class_names_and_paths(tmp_path):
    make_synthetic(tmp_path / "syn", num_train=2, num_val=1, image_size=64, seed=0)
    data = tmp_path / "syn" / "VOCdevkit"
    _unicode_classes(data)
    run, report = tmp_path / "run 名", tmp_path / "check"
    commands = [["check-data", "--data", str(data), "--out", str(report), "--min-size", "64", "--max-size", "64"],
                ["train", "--data", str(data), "--out", str(run), *TINY],
                ["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--out", str(tmp_path / "eval"),
                 "--device", "cpu"]]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_CTYPE", "LANGUAGE")}
    env.update(PYTHONUTF8="0", LC_ALL="C", LANG="C")
    done = _python(COMMANDS, *[a for c in commands for a in (*c, NEXT)][:-1], env=env)
    stdout, stderr = done.stdout.decode("ascii"), done.stderr.decode("ascii")  # all the console got: ASCII
    assert done.returncode == 0 and "exit statuses [0, 0, 0]" in stdout, stdout[-3000:] + stderr[-3000:]
    assert "\\u732b" in stdout and "\\xe9toile" in stdout  # the class table of check-data and eval, escaped
    assert "猫" in (report / "report.txt").read_text(encoding="utf-8")
    assert f"run dir {run}" in (run / "train.log").read_text(encoding="utf-8")  # the path as given, in UTF-8
    assert "猫" in json.loads((run / "classes.json").read_text(encoding="utf-8"))
    assert "étoile" in json.dumps(json.loads((tmp_path / "eval" / "eval.json").read_text(encoding="utf-8")),
                                  ensure_ascii=False)
