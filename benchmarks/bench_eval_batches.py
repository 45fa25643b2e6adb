"""Evaluation batches: forward passes and time, batches in dataset order vs grouped by padded size.

    python benchmarks/bench_eval_batches.py                       # VOC-like sizes, built in
    python benchmarks/bench_eval_batches.py --data ROOT [--val-split val]   # a dataset's own sizes

In eval mode the model runs a batch as one pass per padded input size (an image's detections
never depend on its batch-mates), so a batch of mixed sizes costs several passes. The eval loader
(``build_loader(train=False)``) sorts each rank's images by padded size (``build.eval_groups``)
before batching. For each batch size this counts the passes both ways, from the image sizes alone
(annotation or file header; nothing decoded), at the model's ``--min-size/--max-size``.

``--time``: also runs the model (``--arch``, random weights, eval mode, fp32) on zero images of
those sizes, both orders, interleaved ``--repeats`` times, and reports the medians: the wall-clock
cost of the extra passes on this machine (on a CPU a pass of one image costs about a quarter of a
pass of four; on a GPU small passes leave it idle, so the ratio there is larger).

The built-in sizes (``--num-images``, ``--seed``): widths and heights as VOC's photos, the long
side 500 px and the short side uniform in 300..500, half of them portrait.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinanet.data.build import eval_groups  # noqa: E402
from retinanet.data.sampler import GroupedBatchSampler  # noqa: E402
from retinanet.model.transform import padded_size_groups  # noqa: E402


def voc_like_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for i in range(n):
        short = rng.randint(300, 500)
        sizes.append((short, 500) if i % 2 == 0 else (500, short))
    return sizes


def dataset_sizes(args) -> list[tuple[int, int]]:
    from retinanet.config import DataConfig
    from retinanet.data import build_datasets
    data = build_datasets(DataConfig(root=args.data, val_split=args.val_split), min_size=args.min_size,
                          max_size=args.max_size, splits=("val",))
    return [hw for hw in data.val.image_sizes() if hw is not None]


def batches_both_ways(sizes, batch_size, min_size, max_size):
    from retinanet.data.dataset import DetectionDataset
    from retinanet.data.records import Record
    from retinanet.data.transforms import ItemTransform
    import numpy as np
    empty = np.zeros((0, 4), np.float32)
    records = [Record(f"{i}.jpg", empty, np.zeros(0, np.int64), np.zeros(0, bool), i, hw, "bench")
               for i, hw in enumerate(sizes)]
    ds = DetectionDataset(records, ItemTransform(min_size=min_size, max_size=max_size))
    n = len(sizes)
    in_order = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    grouped = list(GroupedBatchSampler(eval_groups(ds), batch_size, shuffle=False, rank=0, world_size=1))
    return in_order, grouped


def passes(batches, images, min_size, max_size) -> int:
    return sum(len(padded_size_groups([images[i] for i in b], min_size, max_size)) for b in batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a dataset root (its val split's sizes); default: built-in VOC-like sizes")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--time", action="store_true", help="also time the model's forward both ways")
    p.add_argument("--arch", default="resnet18_fpn")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    sizes = dataset_sizes(args) if args.data else voc_like_sizes(args.num_images, args.seed)
    images = [torch.zeros(3, h, w, dtype=torch.uint8) for h, w in sizes]
    print(f"{len(sizes)} images, {len({s for s in sizes})} distinct sizes, model input {args.min_size}/{args.max_size}, "
          f"torch {torch.__version__}")
    model = None
    if args.time:
        from retinanet.model import build_model
        torch.manual_seed(0)
        model = build_model(args.arch, num_classes=21, min_size=args.min_size, max_size=args.max_size).eval()
    print("batch  passes in order  passes grouped  ratio" + ("   s in order  s grouped  ratio" if args.time else ""))
    for bs in args.batch_sizes:
        in_order, grouped = batches_both_ways(sizes, bs, args.min_size, args.max_size)
        a, b = passes(in_order, images, args.min_size, args.max_size), passes(grouped, images, args.min_size, args.max_size)
        line = f"{bs:5d}  {a:15d}  {b:14d}  {a / b:5.2f}"
        if model is not None:
            times = {"order": [], "grouped": []}
            with torch.inference_mode():
                model([images[i] for i in in_order[0]])  # warm-up
                for _ in range(args.repeats):
                    for name, batches in (("order", in_order), ("grouped", grouped)):
                        t = time.perf_counter()
                        for batch in batches:
                            model([images[i] for i in batch])
                        times[name].append(time.perf_counter() - t)
            ta, tb = statistics.median(times["order"]), statistics.median(times["grouped"])
            line += f"   {ta:10.1f}  {tb:9.1f}  {ta / tb:5.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
