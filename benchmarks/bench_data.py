"""Data pipeline throughput: images/s from files to resized, augmented training batches.

    python benchmarks/bench_data.py --workers 2 --batch-size 4 --num-images 200 --image-size 256

Uses the synthetic dataset (written into a temporary folder unless ``--data`` is given), the
training transforms (flip, photometric distortion; ``--iou-crop`` adds the crop) and
``build_loader``, and times one pass after a warm-up batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from retinanet.config import DataConfig
from retinanet.data import build_datasets, build_loader, make_synthetic


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset root (default: a fresh synthetic dataset)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-images", type=int, default=200, help="synthetic training images")
    p.add_argument("--image-size", type=int, default=256, help="synthetic image side, pixels")
    p.add_argument("--min-size", type=int, default=256, help="model input short side")
    p.add_argument("--max-size", type=int, default=512)
    p.add_argument("--iou-crop", action="store_true")
    p.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=True,
                   help="photometric distortion (--no-photometric: off, as in the synthetic recipes) [on]")
    return p.parse_args(argv)


def run(args: argparse.Namespace, root: str) -> dict:
    cfg = DataConfig(root=root, photometric=args.photometric, iou_crop=args.iou_crop)
    ds = build_datasets(cfg, min_size=args.min_size, max_size=args.max_size)
    loader = build_loader(ds.train, batch_size=args.batch_size, workers=args.workers, train=True, seed=0)
    it = iter(loader)
    next(it)  # warm-up: worker start
    t0, n = time.perf_counter(), 0
    for images, _ in it:
        n += len(images)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            make_synthetic(tmp, num_train=args.num_images, num_val=1, image_size=args.image_size, seed=0)
            root = tmp
        r = run(args, root)
    print(f"workers={args.workers} batch={args.batch_size} image={args.image_size}px -> {args.min_size}px: "
          f"{r['images']} images in {r['seconds']:.2f} s = {r['images_per_s']:.1f} images/s")


if __name__ == "__main__":
    main()
