"""The user's path on a GPU, timed: make-synthetic -> train -> eval -> predict, as a user types them.

    python benchmarks/gpu_cli.py --work /tmp/cli --json cli.json            # GPU: 512 px, about a minute
    python benchmarks/gpu_cli.py --work /tmp/cli --json cli.json --tiny     # CPU dry run (gpu_check.sh)

1. ``retinanet make-synthetic`` at ``--size`` px, in ``--shards`` processes at once (seeds 0..S-1),
   each shard one ``VOC20xx`` year folder of one VOCdevkit (as VOC 2007+2012 are read together).
2. ``retinanet train`` on it: ``resnet50_fpn`` from scratch (the machine has no network for the
   COCO weights) at ``--size`` px, ``--amp`` auto, ``--workers`` sized to the machine's cores,
   COCO eval (pycocotools, the default) after each epoch. ``nvidia-smi`` samples the GPU's
   utilisation meanwhile. A run still going at ``--train-seconds`` gets SIGINT and stops as a
   user's Ctrl-C stops it (``interrupted.pt``; ``best.pt`` is the last evaluated epoch).
3. The loader alone (``build_loader``, same data, batch and workers, GPU idle) for one epoch: does
   it deliver faster than training consumes? (If not, training waited for data.)
4. ``retinanet eval`` and ``retinanet predict`` on ``best.pt``.

Training images/s are read from ``metrics.json`` (``retinanet train``'s own per-epoch timing,
evaluation excluded); "steady" leaves out the first epoch (worker start-up, cuDNN autotuning).
The JSON file is rewritten after every step, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FULL = dict(arch="resnet50_fpn", size=512, shards=None, train_per_shard=96, val_per_shard=8, epochs=8, batch_size=16,
            extra=[])
TINY = dict(arch="resnet18_fpn", size=96, shards=2, train_per_shard=8, val_per_shard=4, epochs=1, batch_size=4,
            extra=["--fpn-channels", "32", "--head-convs", "1"])


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the data and the runs (emptied first)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: resnet18, 96 px, 1 epoch")
    p.add_argument("--arch")
    p.add_argument("--size", type=int, help="image side and network input, px [512]")
    p.add_argument("--shards", type=int, help="make-synthetic processes [cores - 2, at most 14]")
    p.add_argument("--train-per-shard", type=int, help="training images per shard [96]")
    p.add_argument("--val-per-shard", type=int, help="validation images per shard [8]")
    p.add_argument("--epochs", type=int, help="[8]")
    p.add_argument("--batch-size", type=int, help="[16]")
    p.add_argument("--workers", type=int, help="loader workers [cores - 2]")
    p.add_argument("--train-seconds", type=float, default=90, help="SIGINT to train after this long [90]")
    p.add_argument("--time-budget", type=float, default=200, help="the whole script's deadline, s [200]")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    n = cores()
    args.workers = args.workers if args.workers is not None else max(1, n - 2)
    args.shards = args.shards or max(1, min(14, n - 2))
    return args


class Results(dict):
    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def save(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self, indent=1))


def retinanet(*argv: str, timeout: float, env=None) -> tuple[int, float]:
    """``python -m retinanet ARGV`` (output to ours); (exit status, seconds). 124 on timeout."""
    t0 = time.perf_counter()
    print(f"$ retinanet {' '.join(argv)}", flush=True)
    try:
        rc = subprocess.run([sys.executable, "-m", "retinanet", *argv], env=env, timeout=max(timeout, 1)).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    return rc, time.perf_counter() - t0


def make_data(args, root: Path, deadline: float) -> dict:
    """``--shards`` make-synthetic processes at once, each moved in as one VOC year folder."""
    t0 = time.perf_counter()
    procs = []
    for k in range(args.shards):
        cmd = [sys.executable, "-m", "retinanet", "make-synthetic", str(root / f"shard{k}"), "--num-train",
               str(args.train_per_shard), "--num-val", str(args.val_per_shard), "--image-size", str(args.size),
               "--seed", str(k)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    print(f"$ retinanet make-synthetic ... x {args.shards} processes ({args.train_per_shard} + {args.val_per_shard} "
          f"images of {args.size} px each)", flush=True)
    rcs = []
    for proc in procs:
        try:
            rcs.append(proc.wait(timeout=max(1, deadline - time.perf_counter())))
        except subprocess.TimeoutExpired:
            proc.kill()
            rcs.append(124)
    if any(rcs):
        raise RuntimeError(f"make-synthetic exit statuses {rcs}")
    devkit = root / "data" / "VOCdevkit"
    devkit.mkdir(parents=True)
    for k in range(args.shards):
        (root / f"shard{k}" / "VOCdevkit" / "VOC2012").rename(devkit / f"VOC{2012 + k}")
    shutil.copy(root / "shard0" / "classes.json", root / "data" / "classes.json")
    return {"train_images": args.shards * args.train_per_shard, "val_images": args.shards * args.val_per_shard,
            "seconds": time.perf_counter() - t0}


class GpuSampler:
    """``nvidia-smi`` utilisation samples every 200 ms while in use (none without nvidia-smi)."""

    def __init__(self):
        self.samples: list[int] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        s = self.samples
        if not s:
            return {"samples": 0}
        return {"samples": len(s), "mean_pct": statistics.fmean(s), "median_pct": statistics.median(s),
                "share_at_least_80pct": sum(x >= 80 for x in s) / len(s)}


def train(args, data: Path, run: Path, deadline: float) -> dict:
    cmd = [sys.executable, "-m", "retinanet", "train", "--data", str(data), "--from-scratch", "--arch", args.arch,
           "--min-size", str(args.size), "--max-size", str(args.size), *args.extra, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device,
           "--print-every", "20", "--out", str(run)]
    print(f"$ retinanet {' '.join(cmd[3:])}", flush=True)
    sampler = GpuSampler()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    soft = min(args.train_seconds, deadline - time.perf_counter() - 15)
    interrupted = False
    try:
        rc = proc.wait(timeout=max(soft, 1))
    except subprocess.TimeoutExpired:
        interrupted = True
        print(f"train still running after {soft:.0f} s: SIGINT (stops after the current step)", flush=True)
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=max(5, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = 124
    seconds = time.perf_counter() - t0
    util = sampler.stop()
    row = {"rc": rc, "seconds": seconds, "interrupted": interrupted, "gpu_utilisation": util}
    metrics = run / "metrics.json"
    if metrics.is_file():
        history = json.loads(metrics.read_text())["epochs"]
        row["epochs"] = [{k: r.get(k) for k in ("epoch", "images_per_s", "time_s", "eval_s", "AP", "AP50", "peak_mem_mb")}
                         for r in history]
        steady = history[1:] or history

        def rate(rows):
            secs = sum(r["time_s"] for r in rows)
            return sum(r["images_per_s"] * r["time_s"] for r in rows) / secs if secs else None

        row["images_per_s"], row["steady_images_per_s"] = rate(history), rate(steady)
    return row


def loader_alone(args, data: Path) -> dict:
    """Images/s of ``build_loader`` over one training epoch, as ``retinanet train`` builds it."""
    import torch  # noqa: F401  (after the CLI steps: their own processes import it)

    from retinanet.config import DataConfig
    from retinanet.data import build_datasets, build_loader

    ds = build_datasets(DataConfig(root=str(data)), min_size=args.size, max_size=args.size, splits=("train",))
    loader = build_loader(ds.train, batch_size=args.batch_size, workers=args.workers, train=True, seed=0)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1, n = time.perf_counter(), 0
    for images, _ in it:
        n += len(images)
    dt = time.perf_counter() - t1
    return {"images": n, "images_per_s": n / dt if dt > 0 and n else None, "startup_s": t1 - t0}


def verdict(res: dict) -> str:
    """Whether the loader kept the GPU busy, from the loader alone vs training, and utilisation."""
    tr, ld = res.get("train", {}), res.get("loader", {})
    train_rate, load_rate = tr.get("steady_images_per_s"), ld.get("images_per_s")
    if not train_rate or not load_rate:
        return "unknown (a step did not finish)"
    util = (tr.get("gpu_utilisation") or {}).get("median_pct")
    util_text = f"; GPU utilisation median {util:.0f}% during train" if util is not None else ""
    if load_rate >= 1.2 * train_rate:
        return f"yes: the loader alone gives {load_rate / train_rate:.1f}x what training took{util_text}"
    return (f"no: the loader alone gives {load_rate:.0f} images/s, training took {train_rate:.0f} "
            f"({load_rate / train_rate:.2f}x): training waits for data{util_text}")


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.time_budget
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg", "RETINANET_CACHE": str(work / "cache")}
    os.environ.update(env)
    res = Results(args.json)
    res["config"] = {k: v for k, v in vars(args).items() if k not in ("json", "work")}
    res["cores"] = cores()
    failed = []

    def step(name, fn):
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as err:  # one failing step is reported; the next ones still run when they can
            res[name] = {"error": f"{type(err).__name__}: {str(err).strip()[:300]}"}
        res[name]["step_seconds"] = time.perf_counter() - t0
        if "error" in res[name] or res[name].get("rc"):
            failed.append(name)
        print(f"--- {name}: {json.dumps(res[name])[:600]}", flush=True)
        res.save()

    data, run = work / "data", work / "run"
    step("data", lambda: make_data(args, work, deadline))
    step("train", lambda: train(args, data, run, deadline))
    step("loader", lambda: loader_alone(args, data))
    res["loader_kept_up"] = verdict(res)
    best = run / "best.pt"
    left = lambda: deadline - time.perf_counter()  # noqa: E731
    common = ["--device", args.device, "--workers", str(args.workers)]

    def cli_step(*argv):
        rc, secs = retinanet(*argv, timeout=left(), env=env)
        return {"rc": rc, "seconds": secs}

    step("eval", lambda: cli_step("eval", "--weights", str(best), "--data", str(data), *common, "--batch-size",
                                  str(args.batch_size), "--out", str(work / "eval"), "--quiet"))
    if (work / "eval" / "eval.json").is_file():
        res["eval"]["metrics"] = json.loads((work / "eval" / "eval.json").read_text())["metrics"]
    images = data / "VOCdevkit" / "VOC2012" / "JPEGImages"
    step("predict", lambda: cli_step("predict", str(images), "--weights", str(best), "--device", args.device,
                                     "--out", str(work / "predict"), "--quiet"))
    pred = work / "predict" / "predictions.json"
    if pred.is_file():
        res["predict"]["images"] = len(json.loads(pred.read_text())["images"])
        res["predict"]["images_per_s"] = res["predict"]["images"] / res["predict"]["seconds"]
    res["seconds"] = time.perf_counter() - start
    res["failed"] = failed
    res.save()
    print("\n".join(summary_lines(res)))
    return 1 if failed else 0


def summary_lines(res: dict) -> list[str]:
    """A few lines for the check's summary (also used by gpu_summary.py)."""
    tr, ev, pr = res.get("train", {}), res.get("eval", {}), res.get("predict", {})
    fmt = lambda x, f=".1f": "n/a" if x is None else format(x, f)  # noqa: E731
    cfg = res.get("config", {})
    lines = [f"CLI train {cfg.get('arch')} {cfg.get('size')} px batch {cfg.get('batch_size')}, {cfg.get('workers')} "
             f"workers: {fmt(tr.get('steady_images_per_s'))} images/s steady ({fmt(tr.get('images_per_s'))} all epochs), "
             f"{len(tr.get('epochs', []))} epochs in {fmt(tr.get('seconds'), '.0f')} s"
             + (" (stopped by SIGINT)" if tr.get("interrupted") else "")
             + (f", exit {tr['rc']}" if tr.get("rc") else "") + (f" ERROR {tr['error']}" if "error" in tr else ""),
             f"CLI loader kept the GPU busy: {res.get('loader_kept_up', 'unknown')}",
             f"CLI eval {fmt(ev.get('seconds'))} s (AP {fmt((ev.get('metrics') or {}).get('AP'), '.3f')}), predict "
             f"{pr.get('images', 'n/a')} images in {fmt(pr.get('seconds'))} s"
             + "".join(f" [{k} exit {res[k].get('rc')}{' ' + res[k]['error'] if 'error' in res[k] else ''}]"
                       for k in ("data", "eval", "predict") if k in res and ("error" in res[k] or res[k].get("rc")))]
    return lines


if __name__ == "__main__":
    sys.exit(main())
