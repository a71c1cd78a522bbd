"""A YOLO-format dataset of non-square images from a prepared val split, for
scripts/ultralytics_agreement.py: where the letterbox matters. Even-numbered images are cropped
to their top-left 128x84 (wide), odd ones to 80x128 (tall); boxes are clipped to the crop and
kept where half their area and 2 px each way remain. train and val both hold the crops.

    python scripts/non_square_yolo_val.py --val data/prepared/val --out ns
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from PIL import Image

WIDE, TALL = (128, 84), (80, 128)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=Path, required=True, help="a prepared split (annotations.json, images/)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    coco = json.loads((args.val / "annotations.json").read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    for split in ("train", "val"):
        (args.out / "images" / split).mkdir(parents=True, exist_ok=True)
        (args.out / "labels" / split).mkdir(parents=True, exist_ok=True)
    objects = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            objects.setdefault(a["image_id"], []).append(a)
    kept = total = 0
    for k, info in enumerate(coco["images"]):
        with Image.open(args.val / "images" / info["file_name"]) as opened:
            image = opened.convert("RGB")
        width, height = WIDE if k % 2 == 0 else TALL
        width, height = min(width, image.width), min(height, image.height)
        crop = image.crop((0, 0, width, height))
        rows = []
        for a in objects.get(info["id"], []):
            x, y, w, h = a["bbox"]
            total += 1
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
            if x2 - x1 < 2 or y2 - y1 < 2 or (x2 - x1) * (y2 - y1) < 0.5 * w * h:
                continue
            kept += 1
            rows.append(f"{index[a['category_id']]} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                        f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        stem = Path(info["file_name"]).stem
        for split in ("train", "val"):
            crop.save(args.out / "images" / split / f"{stem}.png")
            (args.out / "labels" / split / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    names = {i: c["name"] for i, c in enumerate(categories)}
    (args.out / "data.yaml").write_text(yaml.safe_dump({"path": str(args.out.resolve()), "train": "images/train",
                                                         "val": "images/val", "names": names}))
    print(f"{len(coco['images'])} images, {kept} of {total} boxes kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
