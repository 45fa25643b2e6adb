"""Concurrent use of an output folder: a run folder (and eval's and predict's ``--out``) is held by
one process at a time (an advisory lock on ``FOLDER/.lock``, released by the OS when its holder
dies); a killed write's temporary files are cleared at the next start, and the log says so.

The other process is real: a second Python process that runs ``retinanet train`` (its epochs
replaced by a long sleep) or holds the folder's lock itself.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.train.loop import train
from retinanet.errors import RetinaNetError
from retinanet.files import hold_folder

REPO = Path(__file__).resolve().parents[3]
TINY = ["--arch", "resnet18_fpn", "--norm", "bn", "--min-size", "64", "--max-size", "64", "--fpn-channels", "32",
        "--head-convs", "1", "--epochs", "1", "--batch-size", "2", "--warmup-iters", "1", "--workers", "0",
        "--device", "cpu", "--from-scratch", "--quiet"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=2, num_val=1, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _python(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    end = time.time() + seconds
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the other process ended first: {proc.communicate()}")
        if time.time() > end:
            proc.kill()
            raise AssertionError("the other process did not get there in time")
        time.sleep(0.1)


HOLD = "import sys, time; from retinanet.files import hold_folder\nwith hold_folder(sys.argv[1], 'test holder'):\n" \
       "    print('held', flush=True); time.sleep(600)"


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """A second process holding ``folder`` (``files.hold_folder``) until the block ends, then SIGKILLed."""
    proc = _python(HOLD, str(folder))
    try:
        assert proc.stdout.readline().strip() == "held", proc.communicate()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_train_into_a_running_runs_folder_is_refused_naming_its_pid(data_root, tmp_path, run_cli):
    """Two real `retinanet train` processes into one --out: the second is refused (exit 2) with the
    first's pid, before it writes anything; the first holds the folder until it dies (SIGKILL),
    after which the folder is free again. Today the second runs, and both write the same files."""
    out = tmp_path / "run"
    slow = ("import sys, time; import retinanet.engine.train.loop as L\n"
            "L.run_epochs = lambda run, state: time.sleep(600) or 'finished'\n"
            "from retinanet.cli import main; sys.exit(main(sys.argv[1:]))")
    first = _python(slow, "train", "--data", data_root, "--out", str(out), *TINY)
    try:
        _wait_for(lambda: (out / "config.yaml").exists(), first)  # past set-up: in its epochs
        status, err = run_cli(["train", "--data", data_root, "--out", str(out), *TINY])
        assert status == 2, err
        assert f"pid {first.pid}" in err and "in use by another process" in err and "retinanet train" in err
        assert not (out / "last.pt").exists()
    finally:
        first.kill()
        first.wait()
    with hold_folder(out, "test"):  # the OS released the killed run's lock
        pass


def test_eval_and_predict_refuse_a_folder_another_process_holds(tmp_path, run_cli):
    out = tmp_path / "busy"
    with held_by_another_process(out) as holder:
        for argv in (["eval", "--weights", str(tmp_path / "w.pt"), "--out", str(out)],
                     ["predict", str(tmp_path), "--weights", str(tmp_path / "w.pt"), "--out", str(out)]):
            (tmp_path / "a.png").write_bytes(b"")  # predict finds one image name before it takes the folder
            status, err = run_cli(argv)
            assert status == 2 and f"pid {holder.pid}" in err and "test holder" in err, (argv, err)


def test_train_api_refuses_a_held_folder_and_a_killed_holder_leaves_it_free(data_root, tmp_path):
    out = tmp_path / "run"
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    cfg = TrainConfig(out=str(out), epochs=1, batch_size=2, warmup_iters=1, device="cpu", weights="none")
    with held_by_another_process(out) as holder:
        with pytest.raises(RetinaNetError, match=f"pid {holder.pid}"):
            train(model, DataConfig(root=data_root, workers=0), cfg, progress=False)
    assert not (out / "train.log").exists()
    with hold_folder(out, "test"):  # SIGKILL: no clean-up ran, the OS released the lock
        pass


def test_stale_temporaries_of_a_killed_write_are_removed_at_the_next_start_and_logged(data_root, tmp_path, run_cli):
    out = tmp_path / "run"
    out.mkdir()
    stale = [".last.pt.k3j_x9a2.tmp", ".results.csv.abcdefgh.tmp"]
    kept = [".notes.txt.abcdefgh.tmp", "mine.tmp", ".last.pt.tmp"]  # not write_atomic's temporaries of run files
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 10)
    status, err = run_cli(["train", "--data", data_root, "--out", str(out), *TINY])
    assert status == 0, err
    assert not any((out / n).exists() for n in stale) and all((out / n).exists() for n in kept)
    log = (out / "train.log").read_text()
    assert "removed 2 temporary file(s) that an interrupted write left" in log
    assert all(n in log for n in stale)


def hold_refuse_release(folder) -> None:
    """Hold ``folder``; a second holder (this process too) is refused naming the first; once the
    block ends it can be held again, and ``.lock`` names no pid of a holder that let go."""
    with hold_folder(folder, "first"):
        with pytest.raises(RetinaNetError, match=f"in use by another process \\(pid {os.getpid()}: first"):
            with hold_folder(folder, "second"):
                pass
    with hold_folder(folder, "third"):
        pass
    assert (folder / ".lock").read_text() == ""


def test_the_lock_is_released_when_the_block_ends_and_held_against_this_process_too(tmp_path):
    hold_refuse_release(tmp_path)


def test_sigterm_of_the_holder_also_releases(tmp_path):
    proc = _python(HOLD, str(tmp_path))
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    with hold_folder(tmp_path, "after"):
        pass


def test_a_command_that_fails_leaves_no_output_folder_it_created(tmp_path, run_cli):
    (tmp_path / "a.png").write_bytes(b"")
    new = tmp_path / "runs" / "predict"
    status, err = run_cli(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "missing.pt"), "--out", str(new)])
    assert status != 0 and "missing.pt" in err, err
    assert not (tmp_path / "runs").exists()  # nor the parent it created
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with hold_folder(existing, "test"):
            raise RuntimeError("fails before writing")
    assert existing.is_dir()  # a folder that was there stays
    with hold_folder(tmp_path / "kept", "test") as folder:
        (folder / "out.txt").write_text("x")
    assert (tmp_path / "kept" / "out.txt").exists()


class FakeMsvcrt:
    """Windows' ``msvcrt.locking`` (a byte lock at the file position; EACCES when another holds it), made of
    ``flock`` here, which also refuses a second open file of the same process. Records (mode, position)."""
    LK_UNLCK, LK_NBLCK = 0, 2

    def __init__(self):
        import fcntl
        self.fcntl, self.calls = fcntl, []

    def locking(self, fd, mode, nbytes):
        import errno
        self.calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), nbytes))
        if mode == self.LK_UNLCK:
            return self.fcntl.flock(fd, self.fcntl.LOCK_UN)
        try:
            self.fcntl.flock(fd, self.fcntl.LOCK_EX | self.fcntl.LOCK_NB)
        except BlockingIOError:
            raise PermissionError(errno.EACCES, "Permission denied") from None


def test_on_windows_msvcrt_locking_holds_the_folder_and_the_holder_stays_readable(tmp_path, monkeypatch):
    """Without fcntl (Windows), ``msvcrt.locking`` on one byte far past the pid line: a second holder is refused
    naming the first one's pid (the line is readable: Windows would refuse reading a locked byte)."""
    import retinanet.files as files

    fake = FakeMsvcrt()
    monkeypatch.setattr(files, "fcntl", None)
    monkeypatch.setattr(files, "msvcrt", fake)
    hold_refuse_release(tmp_path)
    assert {pos for _, pos, _ in fake.calls} == {files._WINDOWS_LOCK_AT} and all(n == 1 for *_, n in fake.calls)
    assert [mode for mode, *_ in fake.calls] == [2, 2, 0, 2, 0]  # the refused one never held it: nothing to undo


def test_without_fcntl_or_msvcrt_a_folder_is_held_without_a_lock(tmp_path, monkeypatch):
    """A platform with neither lock still runs (the folder is created, the pid written), but cannot refuse a
    second process: the one guarantee that needs an OS lock."""
    import retinanet.files as files

    monkeypatch.setattr(files, "fcntl", None)
    monkeypatch.setattr(files, "msvcrt", None)
    with hold_folder(tmp_path / "new", "first") as folder:
        assert (folder / ".lock").read_text().startswith(f"pid {os.getpid()}: first")
        with hold_folder(folder, "second"):
            pass
    assert not (tmp_path / "new").exists()  # created and left empty: removed as with the lock
