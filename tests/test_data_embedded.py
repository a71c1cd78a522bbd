"""The embedded default dataset: deterministic, and a real detection problem."""

import json
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from quantdet.data.coco import load_coco
from quantdet.data.embedded import MAX_IOU, generate_embedded


def files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    summary = generate_embedded(out, num_train=40, num_val=8, image_size=128, seed=3)
    return out, summary


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_embedded(tmp_path / name, num_train=4, num_val=2, image_size=64, seed=seed)
    a, b, c = (files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[key] != c[key] for key in a if key.suffix == ".png")


def test_splits_are_valid_coco_with_pngs(generated):
    out, summary = generated
    for split, count in (("train", 40), ("val", 8)):
        coco = load_coco(out / split / "annotations.json", out / split / "images")
        assert len(coco["images"]) == count
        assert summary["splits"][split]["images"] == count
        with Image.open(out / split / "images" / coco["images"][0]["file_name"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 128))


def test_detection_problem_properties(generated):
    out, summary = generated
    coco = json.loads((out / "train" / "annotations.json").read_text())
    assert len(coco["categories"]) >= 5
    assert summary["classes"] == [c["name"] for c in coco["categories"]]
    boxes = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        boxes[annotation["image_id"]].append(annotation["bbox"])
    assert all(1 <= len(b) <= 8 for b in boxes.values())
    assert max(len(b) for b in boxes.values()) >= 6
    sides = np.array([max(w, h) for b in boxes.values() for _, _, w, h in b])
    assert sides.min() <= 12 and sides.max() >= 40 and sides.max() <= 80
    assert all(x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128 for b in boxes.values() for x, y, w, h in b)
    ious = [iou(a, b) for image_boxes in boxes.values() for a, b in combinations(image_boxes, 2)]
    assert max(ious) <= MAX_IOU
    assert sum(i > 0 for i in ious) > 0  # objects do overlap sometimes
    assert len({a["category_id"] for a in coco["annotations"]}) == len(coco["categories"])


def iou(a, b):
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)
