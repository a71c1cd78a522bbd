"""The `prepare` stage: turn the configured data source into the train, val and calib splits."""

import json
from pathlib import Path

import numpy as np

from quantdet.io_utils import atomic_directory
from quantdet.data.coco import load_coco
from quantdet.data.embedded import generate_embedded
from quantdet.data.split import IMAGES, link_image, split_statistics, subset, write_annotations
from quantdet.data.voc import VOC_CLASSES, voc_class_names, voc_to_coco
from quantdet.data.yolo import yolo_to_coco
from quantdet.errors import DataError, ParamsError
from quantdet.stages.common import split_fingerprint

SPLITS = ("train", "val", "calib")


def prepare_dataset(params, out_dir):
    """Write `out_dir/{train,val,calib}` and `out_dir/summary.json` all at once; return the summary."""
    data = params["data"]
    seed = params["study"]["seed"]
    with atomic_directory(out_dir) as staging:
        if data["source"] == "embedded":
            embedded = data["embedded"]
            generate_embedded(staging, embedded["num_train"], embedded["num_val"], data["image_size"], seed)
        elif data["source"] == "coco":
            train, val = (read_coco_source(data["coco"], split) for split in ("train", "val"))
            check_same_categories(train[0], val[0], data["coco"])
            write_user_split(staging / "train", *train)
            write_user_split(staging / "val", *val)
        elif data["source"] == "voc":
            voc = data["voc"]
            root = required(voc, "voc", "root")
            classes = voc.get("classes", VOC_CLASSES)
            if classes == "auto":  # one list for both splits: a class seen in val only still gets its id
                classes = voc_class_names(root, voc["train_sets"] + voc["val_sets"])
            write_user_split(staging / "train", *voc_to_coco(root, voc["train_sets"], classes))
            write_user_split(staging / "val", *voc_to_coco(root, voc["val_sets"], classes))
        elif data["source"] == "yolo":
            data_yaml = required(data["yolo"], "yolo", "data_yaml")
            write_user_split(staging / "train", *yolo_to_coco(data_yaml, "train"))
            write_user_split(staging / "val", *yolo_to_coco(data_yaml, "val"))
        else:
            raise ParamsError(f"data.source: unknown source {data['source']!r} (embedded, coco, voc or yolo)")
        train = json.loads((staging / "train" / "annotations.json").read_text())
        val = json.loads((staging / "val" / "annotations.json").read_text())
        calib = write_calib_split(staging, train, data["calib_size"], seed)
        summary = {
            "source": data["source"],
            "seed": seed,
            "classes": [c["name"] for c in sorted(train["categories"], key=lambda c: c["id"])],
            "splits": {name: split_statistics(coco) for name, coco in zip(SPLITS, (train, val, calib))},
            # identity of each split's annotations and image bytes (as in the calibration records)
            "fingerprints": {name: split_fingerprint(staging / name) for name in SPLITS},
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_coco_source(coco_params, split):
    annotations = required(coco_params, "coco", f"{split}_annotations")
    image_dir = Path(required(coco_params, "coco", f"{split}_images"))
    coco = load_coco(annotations, image_dir, check_images=True)
    return coco, {image["id"]: image_dir / image["file_name"] for image in coco["images"]}


def write_user_split(split_dir, coco, image_paths):
    """A split folder of user data: the images are linked, not re-encoded, so pixels stay the user's."""
    for image in coco["images"]:
        link_image(image_paths[image["id"]], split_dir, image["file_name"])
    write_annotations(split_dir, coco)


def write_calib_split(staging, train, calib_size, seed):
    """A seeded random subset of train: calibration sees only training images, never val."""
    image_ids = sorted(image["id"] for image in train["images"])
    if not 1 <= calib_size <= len(image_ids):
        raise ParamsError(f"data.calib_size: {calib_size} is not between 1 and the {len(image_ids)} train images")
    chosen = np.random.default_rng(seed).choice(image_ids, size=calib_size, replace=False)
    calib = subset(train, {int(i) for i in chosen})
    for image in calib["images"]:
        link_image(staging / "train" / IMAGES / image["file_name"], staging / "calib", image["file_name"])
    write_annotations(staging / "calib", calib)
    return calib


def check_same_categories(train, val, coco_params):
    """COCO files each declare their categories; VOC and YOLO splits share one class list."""
    names = [{c["id"]: c["name"] for c in coco["categories"]} for coco in (train, val)]
    if names[0] != names[1]:
        train_file, val_file = (Path(coco_params[f"{split}_annotations"]).absolute() for split in ("train", "val"))
        raise DataError(f"{val_file}: categories {names[1]} differ from those of {train_file} {names[0]}")


def required(section, section_name, key):
    value = section.get(key)
    if value in (None, ""):
        raise ParamsError(f"data.{section_name}.{key}: required when data.source is {section_name}")
    return value
