"""The split folder every stage reads: `<split>/annotations.json` and `<split>/images/<file_name>`."""

import json
import os
import shutil
from pathlib import Path

import numpy as np

ANNOTATIONS = "annotations.json"
IMAGES = "images"


def write_annotations(split_dir, coco):
    path = Path(split_dir) / ANNOTATIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco, separators=(",", ":")))


def link_image(source, split_dir, file_name):
    """Place `source` at images/<file_name>: a hard link where possible, else a copy, never a re-encode."""
    target = Path(split_dir) / IMAGES / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(source).resolve()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def subset(coco, image_ids):
    """The COCO dict restricted to `image_ids`, in the order of `coco["images"]`."""
    keep = set(image_ids)
    return {
        **coco,
        "images": [image for image in coco["images"] if image["id"] in keep],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
    }


def split_statistics(coco):
    """Counts and sizes a reader of the study wants to see before trusting its numbers."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]
    per_image = {image["id"]: 0 for image in coco["images"]}
    for annotation in objects:
        per_image[annotation["image_id"]] += 1
    counts = np.array(list(per_image.values()) or [0])
    sizes = np.sqrt([a["bbox"][2] * a["bbox"][3] for a in objects] or [0.0])
    per_class = {names[i]: 0 for i in sorted(names)}
    for annotation in objects:
        per_class[names[annotation["category_id"]]] += 1
    return {
        "images": len(coco["images"]),
        "objects": len(objects),
        "ignored": len(coco["annotations"]) - len(objects),
        "objects_per_image": {
            "min": int(counts.min()), "mean": round(float(counts.mean()), 3), "max": int(counts.max()),
        },
        # sqrt(box area) in pixels of the original image
        "object_size_px": {
            "min": round(float(sizes.min()), 2),
            "median": round(float(np.median(sizes)), 2),
            "max": round(float(sizes.max()), 2),
        },
        "per_class": per_class,
    }
