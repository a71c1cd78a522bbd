"""How many ground-truth boxes of a prepared split have an anchor that RetinaNet would train them
with: the fraction whose best anchor reaches IoU 0.5 (torchvision RetinaNet's foreground
threshold) and 0.4 (its background threshold), for torchvision's anchors (sizes 32-512 times
2^(0, 1/3, 2/3), ratios 0.5/1/2 on P3-P7) scaled by each --scale, at the study's input size.

    python scripts/anchor_coverage.py --split data/prepared/val --input-size 128 --scale 1 0.5 0.25

Boxes are those of the split's annotations.json, letterboxed as quantdet does (long side to the
input size)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torchvision.ops import box_iou

STRIDES = (8, 16, 32, 64, 128)   # P3-P7


def anchors(input_size: int, scale: float) -> torch.Tensor:
    """Every anchor of quantdet's RetinaNet at `anchor_scale` (the generator its training and
    decoding use: quantdet.models.torchvision_detection.retinanet_anchors)."""
    from torchvision.models.detection.image_list import ImageList

    from quantdet.models.torchvision_detection import retinanet_anchors

    maps = [torch.zeros(1, 1, max(1, math.ceil(input_size / s)), max(1, math.ceil(input_size / s)))
            for s in STRIDES]
    images = ImageList(torch.zeros(1, 3, input_size, input_size), [(input_size, input_size)])
    return retinanet_anchors(scale)(images, maps)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="a prepared split (its annotations.json)")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    coco = json.loads((args.split / "annotations.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    boxes = []
    for a in coco["annotations"]:
        w, h = sizes[a["image_id"]]
        k = args.input_size / max(w, h)
        x, y, bw, bh = (v * k for v in a["bbox"])
        boxes.append([x, y, x + bw, y + bh])
    boxes = torch.tensor(boxes)
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    print(f"{args.split}: {len(boxes)} boxes at {args.input_size} px; sqrt(area) 10/50/90%: "
          + " / ".join(f"{float(side.quantile(q)):.1f}" for q in (0.1, 0.5, 0.9)) + " px")
    print("| anchor scale | smallest anchor px | best IoU >= 0.5 | best IoU >= 0.4 |\n| ---: | ---: | ---: | ---: |")
    for scale in args.scale:
        best = box_iou(boxes, anchors(args.input_size, scale)).max(1).values
        print(f"| {scale:g} | {32 * scale:.0f} | {float((best >= 0.5).float().mean()):.1%} | "
              f"{float((best >= 0.4).float().mean()):.1%} |")


if __name__ == "__main__":
    main()
