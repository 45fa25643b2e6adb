"""COCO metrics at COCO val2017's size: where the time and the memory of an evaluation go.

Builds synthetic per-image ground truth and detections as ``collect_predictions`` hands them to
``compute_metrics`` (float64 boxes in original pixels, float64 scores, int64 labels; ground truth
with COCO's stated areas and a few crowd regions), then in a fresh process per run times:

- ``compute_metrics`` (what ``retinanet train`` runs after every evaluated epoch and ``retinanet
  eval`` before writing; DDP gathering and tiled eval end there too), split on a timeline into
  pycocotools' own calls (``COCO.createIndex``, ``COCO.loadRes``, ``COCOeval.evaluate``,
  ``COCOeval.accumulate``, each wrapped by a timer; a call inside another counts with the outer
  one) and our code around them (before, between, after);
- ``write_eval_outputs`` (``retinanet eval --out``: eval.json, detections.json, pr_curves.png; the
  plot timed apart).

Memory: the process's resident set before ``compute_metrics`` (inputs, imports) and its peak
(``ru_maxrss``) at the end of each part; ``+peak`` is the peak above the resident set before.
``--code DIR`` runs the same in another checkout of the package (e.g. a ``git worktree`` of an
earlier commit) for a before/after in one run, and checks that both give the same 12 numbers and
per-class AP, bit for bit.

    python benchmarks/bench_coco_eval.py --num-images 5000 [--code /tmp/before] [--repeats 2]

Synthetic data (``--seed``): 640 x 480 images; ground truth Poisson(``--gt-per-image``) objects,
sizes log-uniform in 8..400 px, 1% crowd, area 0.5..0.9 of the box (a mask's area); detections
sorted by score, ``--dets-per-image`` each: up to 3 jittered copies of each object (10% with a
wrong class) and random boxes, half of those of a class the image has, half of any class.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def synthetic(num_images: int, gt_per_image: float, dets_per_image: int, num_classes: int, seed: int = 0):
    """``(gt, dets, class_map)`` in ``compute_metrics``' formats (module docstring)."""
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    class_ids = np.arange(1, num_classes + 1)
    gt, dets = [], []
    for i in range(num_images):
        n = int(rng.poisson(gt_per_image))
        wh = np.minimum(np.exp(rng.uniform(np.log(8), np.log(400), size=(n, 2))), [w - 1, h - 1])
        xy = rng.uniform(0, 1, size=(n, 2)) * ([w, h] - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.choice(class_ids, size=n)
        area = wh.prod(axis=1) * rng.uniform(0.5, 0.9, size=n)
        gt.append({"image_id": 1 + i, "boxes": boxes, "areas": area, "labels": labels, "ignore": rng.uniform(size=n) < 0.01,
                   "height": h, "width": w})
        copies = np.repeat(np.arange(n), 3)[:dets_per_image]
        jitter = rng.normal(0, 0.1, size=(len(copies), 4)) * np.tile(wh[copies], 2)
        true_labels = np.where(rng.uniform(size=len(copies)) < 0.1, rng.choice(class_ids, size=len(copies)), labels[copies])
        m = dets_per_image - len(copies)
        rwh = np.exp(rng.uniform(np.log(8), np.log(300), size=(m, 2)))
        rxy = rng.uniform(0, 1, size=(m, 2)) * ([w, h] - rwh)
        own = rng.choice(labels, size=m) if n else rng.choice(class_ids, size=m)
        rand_labels = np.where(rng.uniform(size=m) < 0.5, own, rng.choice(class_ids, size=m))
        det_boxes = np.concatenate([boxes[copies] + jitter, np.concatenate([rxy, rxy + rwh], axis=1)]).astype(np.float32)
        scores = rng.uniform(0.05, 1.0, size=dets_per_image).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        dets.append({"image_id": 1 + i, "boxes": det_boxes[order].astype(np.float64), "scores": scores[order].astype(np.float64),
                     "labels": np.concatenate([true_labels, rand_labels]).astype(np.int64)[order], "at_cap": 1})
    return gt, dets, {f"class{c}": int(c) for c in class_ids}


def rss_mb() -> float:
    """This process's resident set now (MiB; Linux /proc), else NaN."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_mb() -> float:
    """This process's peak resident set so far (MiB)."""
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 2**10


class Timeline:
    """Wraps pycocotools' methods: each outermost call's (name, wall start, wall end, CPU start, CPU end,
    RSS and peak at its end)."""

    def __init__(self):
        self.events, self.depth = [], 0

    def wrap(self, owner, name: str) -> None:
        inner = getattr(owner, name)
        timeline = self

        def timed(*args, **kwargs):
            timeline.depth += 1
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                timeline.depth -= 1
                if timeline.depth == 0:
                    timeline.events.append((f"{owner.__name__}.{name}", start, time.perf_counter(), cpu, time.process_time(),
                                            rss_mb(), peak_mb()))
        setattr(owner, name, timed)


def child(args) -> dict:
    """One measured run in this process (the package on ``sys.path``)."""
    import gc
    import tempfile

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    import retinanet
    from retinanet.engine.evaluate import loop

    gt, dets, class_map = synthetic(args.num_images, args.gt_per_image, args.dets_per_image, args.classes, args.seed)
    timeline = Timeline()
    for owner, name in ((COCO, "createIndex"), (COCO, "loadRes"), (COCOeval, "evaluate"), (COCOeval, "accumulate")):
        timeline.wrap(owner, name)
    gc.collect()
    rss0, peak0 = rss_mb(), peak_mb()
    start, cpu0 = time.perf_counter(), time.process_time()
    result = loop.compute_metrics(gt, dets, class_map)
    end, cpu1 = time.perf_counter(), time.process_time()
    steps, last, last_cpu = [], start, cpu0  # (name, wall s, cpu s, RSS at its end, peak at its end)
    for name, t0, t1, c0, c1, rss, peak in timeline.events:
        steps.append(("ours before" if not steps else "ours between", t0 - last, c0 - last_cpu, float("nan"), float("nan")))
        steps.append((name, t1 - t0, c1 - c0, rss, peak))
        last, last_cpu = t1, c1
    steps.append(("ours after", end - last, cpu1 - last_cpu, rss_mb(), peak_mb()))
    parts = {}  # name -> [calls, wall s, cpu s, largest RSS at an end, largest peak at an end], in order of first call
    for name, wall, cpu, rss, peak in steps:
        p = parts.setdefault(name, [0, 0.0, 0.0, float("nan"), float("nan")])
        p[0], p[1], p[2] = p[0] + 1, p[1] + wall, p[2] + cpu
        p[3], p[4] = np.fmax(p[3], rss), np.fmax(p[4], peak)
    out = {"code": retinanet.__file__, "compute_s": end - start, "compute_cpu_s": cpu1 - cpu0, "rss0_mb": rss0, "peak0_mb": peak0,
           "compute_peak_mb": peak_mb(), "parts": parts, "num_detections": len(result.detections),
           "metrics": [repr(result.metrics[k]) for k in sorted(result.metrics)],
           "per_class": [repr((r["id"], r["AP"], r["AP50"])) for r in result.per_class]}
    if args.write:
        plot = loop.plot_pr_curves
        plot_s = []

        def timed_plot(*a, **k):
            t = time.process_time()
            try:
                return plot(*a, **k)
            finally:
                plot_s.append(time.process_time() - t)
        loop.plot_pr_curves = timed_plot
        with tempfile.TemporaryDirectory() as folder:
            t, c = time.perf_counter(), time.process_time()
            paths = loop.write_eval_outputs(result, folder)
            out["write_s"], out["write_cpu_s"] = time.perf_counter() - t, time.process_time() - c
            out["plot_s"] = sum(plot_s)
            out["detections_json_mb"] = Path(paths["detections"]).stat().st_size / 2**20
            if args.check_json:  # the written detections re-read: the same bytes as json.dumps of the list
                out["detections_json_sha"] = __import__("hashlib").sha256(Path(paths["detections"]).read_bytes()).hexdigest()
        out["write_peak_mb"] = peak_mb()
    return out


def run_child(code: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--num-images", str(args.num_images), "--gt-per-image",
           str(args.gt_per_image), "--dets-per-image", str(args.dets_per_image), "--classes", str(args.classes), "--seed", str(args.seed)]
    cmd += ["--no-write"] * (not args.write) + ["--check-json"] * args.check_json
    # cwd: not a checkout (python puts the script's folder first on sys.path, and that holds no package)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).resolve().parent)
    if proc.returncode:
        raise SystemExit(f"{code}: {proc.stderr.strip()[-2000:] or proc.returncode}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(r["code"]).resolve().is_relative_to(code):
        raise SystemExit(f"timed {r['code']}, not the package in {code}")
    return r


def report(name: str, runs: list[dict]) -> None:
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    r = runs[0]
    print(f"{name}: compute_metrics {med('compute_s'):.2f} s wall, {med('compute_cpu_s'):.2f} s CPU; RSS before "
          f"{r['rss0_mb']:.0f} MiB, peak {r['compute_peak_mb']:.0f} MiB (+{r['compute_peak_mb'] - r['rss0_mb']:.0f})")
    print(f"    {'part':24s} {'calls':>5s} {'wall s':>8s} {'CPU s':>8s} {'RSS MiB':>8s} {'peak MiB':>8s}  (RSS, peak: at the end of a call)")
    for part, (calls, _, _, rss, peak) in r["parts"].items():
        wall, cpu = (statistics.median(x["parts"][part][k] for x in runs) for k in (1, 2))
        print(f"    {part:24s} {calls:5d} {wall:8.2f} {cpu:8.2f} {rss:8.0f} {peak:8.0f}".replace("nan", "  -"))
    pyco = {k: statistics.median(sum(v[k] for p, v in x["parts"].items() if not p.startswith("ours")) for x in runs) for k in (1, 2)}
    total = {1: med("compute_s"), 2: med("compute_cpu_s")}
    print(f"    pycocotools' own: {pyco[1]:.2f} s wall, {pyco[2]:.2f} s CPU ({100 * pyco[2] / total[2]:.0f}%); ours: "
          f"{total[1] - pyco[1]:.2f} s wall, {total[2] - pyco[2]:.2f} s CPU ({100 * (total[2] - pyco[2]) / total[2]:.0f}%)")
    if "write_s" in r:
        print(f"  write_eval_outputs {med('write_s'):.2f} s wall, {med('write_cpu_s'):.2f} s CPU (the PR plot {med('plot_s'):.2f} s CPU; "
              f"detections.json {r['detections_json_mb']:.0f} MiB); peak {r['write_peak_mb']:.0f} MiB "
              f"(+{r['write_peak_mb'] - r['rss0_mb']:.0f})")
        print(f"  compute + write (retinanet eval's share): {med('compute_s') + med('write_s'):.2f} s wall, "
              f"{med('compute_cpu_s') + med('write_cpu_s'):.2f} s CPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--gt-per-image", type=float, default=7.0)
    p.add_argument("--dets-per-image", type=int, default=100)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs of each checkout, interleaved; times are medians")
    p.add_argument("--no-write", dest="write", action="store_false", help="skip write_eval_outputs")
    p.add_argument("--check-json", action="store_true", help="also compare detections.json byte for byte (hash)")
    p.add_argument("--code", type=Path, help="another checkout of the package to time on the same data (before/after)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    codes = [("this", Path(__file__).resolve().parents[1])] + ([("other", args.code.resolve())] if args.code else [])
    print(f"{args.num_images} images, Poisson({args.gt_per_image:g}) objects and {args.dets_per_image} detections each, "
          f"{args.classes} classes; a fresh process per run, OMP_NUM_THREADS=1", flush=True)
    runs = {name: [] for name, _ in codes}
    for _ in range(args.repeats):
        for name, code in codes[::-1]:  # the other checkout first: a warm page cache favours neither
            runs[name].append(run_child(code, args))
    for name, code in codes:
        report(f"{name} ({code})", runs[name])
    if args.code:
        a, b = runs["this"][0], runs["other"][0]
        same = a["metrics"] == b["metrics"] and a["per_class"] == b["per_class"] and a["num_detections"] == b["num_detections"]
        if args.check_json:
            same = same and a.get("detections_json_sha") == b.get("detections_json_sha")
        print(f"same numbers{' and detections.json' if args.check_json else ''}: {same}")
        t = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
        print(f"compute_metrics this/other: wall {t('this', 'compute_s') / t('other', 'compute_s'):.2f}x, "
              f"CPU {t('this', 'compute_cpu_s') / t('other', 'compute_cpu_s'):.2f}x, "
              f"peak above RSS before {(a['compute_peak_mb'] - a['rss0_mb']) / (b['compute_peak_mb'] - b['rss0_mb']):.2f}x")


if __name__ == "__main__":
    main()
