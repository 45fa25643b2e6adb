"""``fix_mmap_threshold``: glibc's mmap threshold fixed for tiled runs, in a child process (the
setting is the process's), left alone when the user set it or glibc is not the C library."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from retinanet.engine.runtime.allocator import ENV, MMAP_THRESHOLD, fix_mmap_threshold

REPO = Path(__file__).resolve().parents[3]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _child(code: str, *args: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != ENV}
    environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code, *args], env=environ, capture_output=True, text=True,
                          check=True).stdout


ON_HEAP = """
import ctypes, sys
from retinanet.engine.runtime.allocator import fix_mmap_threshold
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p
if sys.argv[1:] == ["fix"]:
    print(fix_mmap_threshold())
p = libc.malloc(16 << 20)
heap = [l.split()[0].split("-") for l in open("/proc/self/maps") if l.rstrip().endswith("[heap]")]
print(any(int(a, 16) <= p < int(b, 16) for a, b in heap))
libc.free(ctypes.c_void_p(p))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_threshold_is_fixed_and_buffers_below_it_come_from_the_heap():
    fixed = _child(ON_HEAP, "fix").splitlines()
    assert fixed[0].startswith("memory: glibc's mmap threshold fixed at 32 MiB") and fixed[1] == "True"
    assert _child(ON_HEAP).strip() == "False"  # glibc's default: a 16 MiB buffer gets a mapping of its own


def test_a_threshold_the_user_set_or_zero_is_left_alone(monkeypatch):
    monkeypatch.setenv(ENV, "65536")
    assert fix_mmap_threshold() == f"memory: C allocator's mmap threshold left as {ENV}=65536 sets it"
    monkeypatch.delenv(ENV)
    assert fix_mmap_threshold(0) == "memory: C allocator left at its defaults"
    assert MMAP_THRESHOLD == 32 * 2**20
