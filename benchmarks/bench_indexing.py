"""Reading the annotations of a large dataset (``retinanet.data.build.read_records``, what
``check-data``, ``train`` and ``eval`` do before any image is decoded), per format.

Builds one dataset of N tiny images (one JPEG hard-linked N times, so the files cost nothing),
3 objects each, 80% train / 20% val, in each format: YOLO (images/ + labels/ + data.yaml), a flat
images+XML folder, a VOCdevkit, COCO JSON; then times ``read_records`` on each (CPU and wall
seconds, both splits). ``--code DIR`` times another checkout of the package (e.g. a ``git worktree``
of an earlier commit) on the same files, in a subprocess, for a before/after in one run.

    python benchmarks/bench_indexing.py --num-images 20000 [--code /tmp/before] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FORMATS = ("yolo", "voc-flat", "voc", "coco")
W, H = 64, 48
BOXES = [(2, 2, 30, 30), (20, 10, 60, 44), (5, 20, 25, 46)]
CLASSES = ["cat", "dog", "bird"]


class Linker:
    """Hard links of one small JPEG (a fresh source every 60,000 links: ext4 allows 65,000 a file)."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0

    def __call__(self, dst: Path) -> None:
        from PIL import Image
        src = self.folder / f"_src{self.count // 60_000}.jpg"
        if not src.exists():
            Image.new("RGB", (W, H), (120, 80, 40)).save(src, quality=80)
        os.link(src, dst)
        self.count += 1


def voc_xml(name: str) -> str:
    objects = "".join(f"<object><name>{CLASSES[k]}</name><difficult>0</difficult><bndbox><xmin>{b[0] + 1}</xmin>"
                      f"<ymin>{b[1] + 1}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                      for k, b in enumerate(BOXES))
    return (f"<annotation><filename>{name}</filename><size><width>{W}</width><height>{H}</height><depth>3</depth>"
            f"</size>{objects}</annotation>")


def make_datasets(out: Path, n: int) -> dict[str, str]:
    """The four datasets under ``out``; returns each format's ``--data`` root."""
    link = Linker(out)
    names = [f"img_{i:07d}" for i in range(n)]
    split = {"train": names[: int(n * 0.8)], "val": names[int(n * 0.8):]}
    yolo = out / "yolo"
    label = "".join(f"{k} {(b[0] + b[2]) / 2 / W:.6f} {(b[1] + b[3]) / 2 / H:.6f} {(b[2] - b[0]) / W:.6f} "
                    f"{(b[3] - b[1]) / H:.6f}\n" for k, b in enumerate(BOXES))
    for s, stems in split.items():
        (yolo / "images" / s).mkdir(parents=True)
        (yolo / "labels" / s).mkdir(parents=True)
        for stem in stems:
            link(yolo / "images" / s / f"{stem}.jpg")
            (yolo / "labels" / s / f"{stem}.txt").write_text(label)
    (yolo / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog, bird]\n")
    flat = out / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "annotations").mkdir()
    voc = out / "VOCdevkit" / "VOC2012"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    for stem in names:
        for images, xml in ((flat / "images", flat / "annotations"), (voc / "JPEGImages", voc / "Annotations")):
            link(images / f"{stem}.jpg")
            (xml / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg"))
    for s, stems in split.items():
        (voc / "ImageSets" / "Main" / f"{s}.txt").write_text("\n".join(stems) + "\n")
    coco = out / "coco"
    (coco / "annotations").mkdir(parents=True)
    for s, stems in split.items():
        (coco / f"{s}2017").mkdir()
        images, annotations = [], []
        for i, stem in enumerate(stems, 1):
            link(coco / f"{s}2017" / f"{stem}.jpg")
            images.append({"id": i, "file_name": f"{stem}.jpg", "width": W, "height": H})
            annotations += [{"id": len(annotations) + k + 1, "image_id": i, "category_id": k + 1, "iscrowd": 0,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
                            for k, b in enumerate(BOXES)]
        (coco / "annotations" / f"instances_{s}2017.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}))
    return {"yolo": str(yolo / "data.yaml"), "voc-flat": str(flat), "voc": str(out),
            "coco": str(coco / "annotations" / "instances_train2017.json")}


TIMER = """
import json, sys, time, warnings
from retinanet.config import DataConfig
from retinanet.data.build import read_records
warnings.simplefilter("ignore")
root, fmt = sys.argv[1], sys.argv[2]
c, t = time.process_time(), time.perf_counter()
records = read_records(DataConfig(root=root, format=fmt, val_split="val", train_split="train"))[0]
import retinanet
print(json.dumps({"images": sum(map(len, records.values())), "cpu": time.process_time() - c, "wall": time.perf_counter() - t,
                  "code": retinanet.__file__}))
"""


def time_reading(code: Path, root: str, fmt: str) -> dict:
    """``read_records`` of one dataset by the package in ``code``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    # cwd: the dataset's folder, not a checkout (python -c puts the cwd first on sys.path)
    proc = subprocess.run([sys.executable, "-c", TIMER, root, fmt], capture_output=True, text=True, env=env, check=False,
                          cwd=Path(root).parent)
    if proc.returncode:
        raise SystemExit(f"{code}: {fmt}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=20_000)
    p.add_argument("--code", type=Path, help="another checkout of the package to time on the same files (before/after)")
    p.add_argument("--keep", type=Path, help="build the datasets in this folder and keep them (default: a temporary one)")
    args = p.parse_args()
    here = Path(__file__).resolve().parents[1]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_indexing_"))
    try:
        roots = make_datasets(folder, args.num_images)
        codes = [("this", here)] + ([("other", args.code.resolve())] if args.code else [])
        print(f"{args.num_images} images (80% train / 20% val), 3 objects each; read_records, both splits, a fresh process each")
        print(f"{'format':10s} " + " ".join(f"{name + ' cpu s':>12s} {name + ' wall s':>13s}" for name, _ in codes))
        for fmt in FORMATS:
            row = []
            for _, code in codes:  # each reading draws the flat layout's split anew (the first run of a user's)
                shutil.rmtree(Path(roots["voc-flat"]) / "splits", ignore_errors=True)
                row.append(time_reading(code, roots[fmt], fmt))
            for (_, code), r in zip(codes, row):
                if not Path(r["code"]).resolve().is_relative_to(code):
                    raise SystemExit(f"timed {r['code']}, not the package in {code}")
            if any(r["images"] != args.num_images for r in row):
                raise SystemExit(f"{fmt}: read {[r['images'] for r in row]} images, made {args.num_images}")
            print(f"{fmt:10s} " + " ".join(f"{r['cpu']:12.2f} {r['wall']:13.2f}" for r in row))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
