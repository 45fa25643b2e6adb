"""Loader workers started with ``spawn`` (macOS, Windows) or ``forkserver`` leave Ctrl-C to the run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from retinanet.data import make_synthetic

REPO = Path(__file__).resolve().parents[2]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("method", ["spawn"])  # forkserver failed alike and passes alike (40 s more: not run each time)
def test_ctrl_c_with_spawned_workers_stops_the_run_with_its_checkpoint(tmp_path, method):
    make_synthetic(tmp_path / "syn", num_train=8, num_val=2, image_size=64, seed=0)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "syn"), "--arch", "resnet18_fpn", "--from-scratch", "--fpn-channels", "16",
            "--head-convs", "1", "--min-size", "64", "--max-size", "64", "--epochs", "50", "--batch-size", "2",
            "--device", "cpu", "--workers", "2", "--print-every", "1", "--out", str(run)]
    script = (f"import sys, torch.multiprocessing as mp; mp.set_start_method({method!r}, force=True); "
              f"from retinanet.cli import main; sys.exit(main({args!r}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # its own process group, as a terminal's foreground job: Ctrl-C reaches the workers too
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        for line in proc.stdout:  # then epoch 2 and its evaluation, on the workers of epoch 1 and its evaluation
            if line.startswith("epoch 1/50: loss"):
                break
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
        left = time.monotonic() + 10  # the workers (training and val) end with the run: none is left in its group
        while _group_alive(proc.pid) and time.monotonic() < left:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "a process of the run's group outlived it"
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "exited unexpectedly" not in err and "Traceback" not in err, err[-3000:]
    log = (run / "train.log").read_text()  # stopped in epoch 2's steps (interrupted.pt) or its evaluation (last.pt)
    saved = re.search(r"stopped by SIGINT .*; checkpoint (\S+)", log)
    assert saved, log[-2000:]
    assert torch.load(saved.group(1), weights_only=True)["epoch"] >= 0  # epoch 1 (or later) is in it


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc/PID/status")
def test_workers_ignore_sigint_only_block_nothing_and_a_process_with_persistent_ones_exits():
    """A worker left with SIGTERM blocked could not be terminated: a process whose persistent
    workers were still alive at exit hung there."""
    script = """
import torch
from torch.utils.data import Dataset
from retinanet.data.workers import QuietWorkersLoader
class D(Dataset):
    def __len__(self): return 8
    def __getitem__(self, i): return i
loader = QuietWorkersLoader(D(), batch_size=None, num_workers=2, persistent_workers=True)
assert sorted(loader) == list(range(8))
for w in loader._iterator._workers:
    status = dict(line.split(":", 1) for line in open(f"/proc/{w.pid}/status").read().splitlines() if ":" in line)
    ignored, blocked = int(status["SigIgn"], 16), int(status["SigBlk"], 16)
    print(bool(ignored >> 1 & 1), bool(ignored >> 14 & 1), blocked)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "False", "0"] * 2  # SIGINT ignored, SIGTERM not, nothing blocked


def test_the_dataset_s_warnings_in_spawned_workers_print_as_the_command_s(tmp_path):
    """A worker started by spawn (macOS, Windows; forkserver alike) is a new interpreter: the
    dataset's per-image warnings printed there Python's way (``.../dataset.py:150: UserWarning:
    ...`` and the source line), not as the command's ``retinanet COMMAND: warning: ...``."""
    make_synthetic(tmp_path / "syn", num_train=1, num_val=2, image_size=64, seed=0)
    for xml in (tmp_path / "syn").rglob("val_*.xml"):  # a <size> the image does not have: a warning as it loads
        xml.write_text(xml.read_text().replace("<width>64</width>", "<width>65</width>"))
    script = f"""
import torch.multiprocessing as mp
mp.set_start_method("spawn", force=True)
from retinanet.cli import plain_warnings
from retinanet.config import DataConfig
from retinanet.data import build_datasets, build_loader
with plain_warnings("x"):
    data = build_datasets(DataConfig(root={str(tmp_path / "syn")!r}), min_size=64, max_size=64, splits=("val",))
    assert sum(len(targets) for _, targets in build_loader(data.val, batch_size=1, workers=1, train=False)) == 2
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if "annotation says 65x64" in line]
    assert len(said) == 2 and all(line.startswith("retinanet x: warning: ") for line in said), proc.stderr[-2000:]
    assert "UserWarning" not in proc.stderr and "self._warn(" not in proc.stderr
