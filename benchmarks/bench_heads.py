"""The parts around the network: loss (matching + focal + box loss, forward and backward) and
post-processing (decode + top-k + NMS), ours against torchvision's, on the same head outputs.

    python benchmarks/bench_heads.py --batch-size 4 --image-size 512 --boxes 5 --iters 10

``bench_model.py`` times whole steps, where the ResNet/FPN/head convolutions (identical in both
models) dominate; this one feeds both implementations the same random head outputs, anchors and
targets and times only what differs:

- loss: ours ``retinanet_loss`` (padded batch, batched IoU/matching, one focal-loss kernel) vs
  torchvision's ``RetinaNet.compute_loss`` (a Python loop over images for matching and losses),
  forward + backward to the head outputs;
- post-processing: ours ``decode_batch`` + ``unpad_detections`` (all images of a level at once,
  one NMS call) vs torchvision's ``postprocess_detections`` (a loop over images and levels).

Logits are drawn around ``--logit-mean`` with spread ``--logit-std``: the default, the prior
(sigmoid 0.01), lets about 218,000 class scores per image pass the 0.05 threshold (an untrained
model); ``--logit-mean -6.5`` about 860 (a trained model's count). Rounds alternate ours / torchvision's (the
order flips every round); the median time of each is printed with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_model import build_torchvision, load_average, machine, setup
from retinanet.model.anchors import AnchorCache
from retinanet.model.loss import retinanet_loss
from retinanet.model.postprocess import decode_batch, unpad_detections


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=512, help="square input side, pixels")
    p.add_argument("--num-classes", type=int, default=91)
    p.add_argument("--boxes", type=int, default=5, help="ground-truth boxes per image")
    p.add_argument("--box-loss", default="l1", choices=["l1", "giou"])
    p.add_argument("--logit-mean", type=float, default=-4.6, help="mean of the random logits (prior 0.01)")
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    return p.parse_args(argv)


def make_inputs(args, device):
    """Head outputs per level, anchors per level and targets, all seeded."""
    g = torch.Generator().manual_seed(0)
    s, B, C = args.image_size, args.batch_size, args.num_classes
    feat_hws = [((s + 2 ** k - 1) // 2 ** k,) * 2 for k in range(3, 8)]
    anchors = AnchorCache()(feat_hws, (s, s), device)
    cls = [(torch.randn(B, a.shape[0], C, generator=g) * args.logit_std + args.logit_mean).to(device)
           for a in anchors]
    reg = [(torch.randn(B, a.shape[0], 4, generator=g) * 0.1).to(device) for a in anchors]
    targets = []
    for _ in range(B):
        xy = torch.rand(args.boxes, 2, generator=g) * s * 0.7
        wh = 16 + torch.rand(args.boxes, 2, generator=g) * (s * 0.3 - 16)
        boxes = torch.cat([xy, (xy + wh).clamp(max=s)], 1)
        labels = torch.randint(1, max(C, 2), (args.boxes,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return cls, reg, anchors, targets


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    args = parse_args(argv)
    device = setup(args)
    tv_args = argparse.Namespace(arch="resnet18_fpn_v2" if args.box_loss == "giou" else "resnet18_fpn",
                                 norm="frozen_bn", trainable_layers=0, fpn_channels=256, head_convs=1,
                                 num_classes=args.num_classes, image_size=args.image_size, score_thresh=0.05)
    tv = build_torchvision(tv_args).to(device).eval()  # only its loss and post-processing are used
    cls, reg, anchors, targets = make_inputs(args, device)
    B, s = args.batch_size, args.image_size
    cls_all, reg_all, anchors_all = torch.cat(cls, 1), torch.cat(reg, 1), torch.cat(anchors, 0)
    image_hw = torch.tensor([[s, s]] * B, device=device)

    def ours_loss():
        c, r = cls_all.detach().requires_grad_(), reg_all.detach().requires_grad_()
        losses = retinanet_loss(c, r, anchors_all, targets, args.box_loss)
        sum(losses.values()).backward()

    def tv_loss():
        c, r = cls_all.detach().requires_grad_(), reg_all.detach().requires_grad_()
        losses = tv.compute_loss(targets, {"cls_logits": c, "bbox_regression": r}, [anchors_all] * B)
        sum(losses.values()).backward()

    def ours_post():
        with torch.inference_mode():
            unpad_detections(*decode_batch(cls, reg, anchors, image_hw)[:4])

    def tv_post():
        with torch.inference_mode():
            tv.postprocess_detections({"cls_logits": cls, "bbox_regression": reg}, [list(anchors)] * B,
                                      [(s, s)] * B)

    candidates = (torch.cat(cls, 1).sigmoid() > 0.05).sum().item() / B
    print(f"machine: {machine(device)}")
    print(f"device {device}; batch {B} x {s}px, {anchors_all.shape[0]} anchors, {args.num_classes} classes, "
          f"{args.boxes} boxes/image, box loss {args.box_loss}; {candidates:.0f} scores > 0.05 per image; "
          f"{args.iters} timed rounds after {args.warmup} warm-up")
    print(f"load average before: {load_average()}")
    for label, pair in (("loss fwd+bwd", (ours_loss, tv_loss)), ("post-process", (ours_post, tv_post))):
        times = {"ours": [], "torchvision": []}
        for r in range(args.warmup + args.iters):
            order = list(zip(times, pair))
            for name, fn in order if r % 2 == 0 else order[::-1]:
                dt = timed(fn, device)
                if r >= args.warmup:
                    times[name].append(dt)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"{label}: ours {ms['ours']:8.1f} ms  torchvision {ms['torchvision']:8.1f} ms  "
              f"speed-up {ms['torchvision'] / ms['ours']:.2f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
