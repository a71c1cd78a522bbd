"""COCO reader: every problem is a DataError naming the file and the entry."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from quantdet.data.coco import load_coco
from quantdet.errors import DataError


@pytest.fixture
def coco_dir(tmp_path):
    """A valid two-image COCO split: val.json and images/ (640x480 and 64x48)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (640, 480), "b.png": (64, 48)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
    coco = {
        "images": [
            {"id": 3, "file_name": "a.png", "width": 640, "height": 480},
            {"id": 4, "file_name": "b.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 56, "image_id": 3, "category_id": 1, "bbox": [10, 10, 100, 50], "area": 5000, "iscrowd": 0},
            {"id": 57, "image_id": 4, "category_id": 2, "bbox": [5, 5, 20, 20]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    write(tmp_path, coco)
    return tmp_path, coco


def write(directory, coco):
    (directory / "val.json").write_text(json.dumps(coco, indent=1))


def load(directory, **kwargs):
    return load_coco(directory / "val.json", directory / "images", **kwargs)


def test_valid_file_loads_with_defaults_filled(coco_dir):
    directory, _ = coco_dir
    coco = load(directory)
    assert coco["annotations"][1]["iscrowd"] == 0
    assert coco["annotations"][1]["area"] == 400


def test_malformed_json_names_line_and_column(coco_dir):
    directory, _ = coco_dir
    (directory / "val.json").write_text('{\n  "images": [\n    {"id": 1,,}\n  ]\n}')
    with pytest.raises(DataError, match=rf"^{re.escape(str(directory))}/val\.json: malformed JSON at line 3, column"):
        load(directory)


def test_box_outside_image_names_annotation_and_image(coco_dir):
    directory, coco = coco_dir
    coco["annotations"].append({"id": 58, "image_id": 3, "category_id": 1, "bbox": [600, 10, 80, 20]})
    write(directory, coco)
    with pytest.raises(DataError) as error:
        load(directory)
    assert str(error.value) == (  # the full path: a train and a val file may share a name
        f"{directory / 'val.json'}: annotations[2] (id 58): bbox [600, 10, 80, 20] extends outside image 3 (640x480)"
    )


def test_box_within_one_pixel_slack_is_clipped(coco_dir):
    directory, coco = coco_dir
    coco["annotations"][1]["bbox"] = [-0.5, 30, 64.8, 18.9]
    write(directory, coco)
    assert load(directory)["annotations"][1]["bbox"] == [0.0, 30, 64, 18]


def test_missing_image_names_entry(coco_dir):
    directory, _ = coco_dir
    (directory / "images" / "b.png").unlink()
    with pytest.raises(DataError, match=r"val\.json: images\[1\] \(id 4\): image file .*b\.png not found"):
        load(directory)
    load(directory, check_images=False)  # structure alone is fine


def test_truncated_image_names_entry(coco_dir):
    directory, _ = coco_dir
    path = directory / "images" / "a.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"val\.json: images\[0\] \(id 3\): cannot read image .*a\.png"):
        load(directory)


def test_image_size_differing_from_declared(coco_dir):
    directory, coco = coco_dir
    coco["images"][1]["width"] = 65
    coco["annotations"][1]["bbox"] = [5, 5, 10, 10]
    write(directory, coco)
    with pytest.raises(DataError, match=r"images\[1\] \(id 4\): image .*b\.png is 64x48, annotation says 65x48"):
        load(directory)


def test_unknown_category_id_names_annotation(coco_dir):
    directory, coco = coco_dir
    coco["annotations"][0]["category_id"] = 9
    write(directory, coco)
    with pytest.raises(DataError, match=r"val\.json: annotations\[0\] \(id 56\): unknown category id 9"):
        load(directory)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("categories"), r"val\.json: missing top-level key 'categories'"),
        (lambda c: c["annotations"][1].pop("bbox"), r"val\.json: annotations\[1\]: missing key 'bbox'"),
        (lambda c: c["annotations"].append(dict(c["annotations"][0])), r"annotations\[2\]: duplicate id 56"),
        (lambda c: c["annotations"][0].update(image_id=99), r"annotations\[0\] \(id 56\): refers to unknown image id"),
        (lambda c: c["images"][0].update(height=0), r"images\[0\] \(id 3\): height 0 is not a positive integer"),
        (lambda c: c["annotations"][0].update(bbox=[1, 1, 0, 5]), r"annotations\[0\] \(id 56\): .*non-positive"),
        (lambda c: c["images"][1].update(file_name="../b.png"), r"images\[1\] \(id 4\): file_name '../b.png'"),
    ],
)
def test_structural_errors_name_the_entry(coco_dir, mutate, message):
    directory, coco = coco_dir
    mutate(coco)
    write(directory, coco)
    with pytest.raises(DataError, match=message):
        load(directory, check_images=False)
