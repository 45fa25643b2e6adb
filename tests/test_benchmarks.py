"""The benchmark scripts run end to end at toy sizes and print what BENCHMARKS.md quotes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("layout", [[], ["--ours-channels-last"]])
def test_bench_model_prints_both_models_and_the_ratio(layout):
    out = run("bench_model.py", "--arch", "resnet18_fpn", "--batch-size", "1", "--image-size", "64",
              "--iters", "1", "--warmup", "0", "--device", "cpu", *layout)
    for mode in ("train step", "inference "):
        line = next(line for line in out.splitlines() if line.startswith(mode))
        assert "ours" in line and "torchvision" in line and "ratio ours/torchvision" in line


def test_bench_heads_times_loss_and_postprocess():
    out = run("bench_heads.py", "--batch-size", "2", "--image-size", "64", "--num-classes", "5",
              "--iters", "1", "--warmup", "0", "--device", "cpu")
    assert "loss fwd+bwd: ours" in out and "post-process: ours" in out and "speed-up" in out
