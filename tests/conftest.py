"""Shared test set-up: CPU-sized, deterministic, and fair to the machine's few cores."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
# No test may download or find weights in the user's cache: the torch hub cache is an empty folder
# (tests of the download path serve their own files into their own TORCH_HOME).
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="retinanet-tests-torch-home-")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], ignore_errors=True)  # one per worker: none left behind

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.utils._python_dispatch  # noqa: E402

# Under pytest-xdist each worker gets its share of the cores instead of all of them.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


class NanLoss(torch.nn.Module):
    """A model whose losses turn to NaN when ``poison`` is set (its weights stay finite)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.poison = model, False

    def forward(self, images, targets):
        losses = self.model(images, targets)
        return {k: v * float("nan") for k, v in losses.items()} if self.poison else losses


class CountBatchNorm(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the batch-norm ops run inside ``with CountBatchNorm() as counted:`` (``counted.calls``)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += "batch_norm" in func.__name__
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count_batch_norm():
    """``CountBatchNorm``: checks that BatchNorm is folded into the convs (ResNet and RegNet bodies)."""
    return CountBatchNorm


@pytest.fixture
def nan_loss():
    """``NanLoss``: wraps a model so a test can make its next loss non-finite (the CPU and CUDA step tests)."""
    return NanLoss


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from retinanet.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, err.getvalue()


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(argv) -> (exit status, stderr)``: ``retinanet ARGV`` in this process, its stdout dropped."""
    return _run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port() -> int``: a TCP port of 127.0.0.1 that nothing listens on now (a process group's rendezvous)."""
    return _free_port


@pytest.fixture
def torchrun(tmp_path):
    """``torchrun(*args, timeout=240) -> CompletedProcess``: ``torchrun --nproc_per_node=2 -m retinanet
    ARGS`` on this checkout, one thread per process, output captured. Its temporary files (torchrun
    leaves a ``torchelastic_*`` log folder per launch) go under ``tmp_path``, not the system's /tmp."""
    repo = Path(__file__).resolve().parents[1]
    # the checkout first, then what PYTHONPATH already holds (packages installed with --target, as on the GPU image)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}

    def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "retinanet", *args]
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)

    return run
