"""Ultralytics YOLO datasets (data.yaml, images/, labels/) to COCO, and `prepare` on them."""

import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from quantdet.data.coco import validate_coco
from quantdet.data.prepare import prepare_dataset
from quantdet.data.yolo import yolo_to_coco
from quantdet.errors import DataError
from tests.test_data_prepare import shrunk_params

TRAIN = {  # image: (width, height, label file text or None for no label file)
    "a.jpg": (40, 20, "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.2 0.2\n"),
    "b.png": (32, 32, "1 0.5 0.5 1.0 1.0\n"),
    "c.jpg": (24, 24, None),  # background: no label file
    "d.jpg": (24, 24, ""),  # background: an empty label file
}


def write_image(path, width, height, pixels=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8) if pixels is None else pixels).save(path)


def write_label(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def dataset(tmp_path):
    """configs/data.yaml → ../shapes: train a folder (images/train), val a list file (val.txt)."""
    root = tmp_path / "shapes"
    for name, (width, height, label) in TRAIN.items():
        write_image(root / "images" / "train" / name, width, height)
        if label is not None:
            write_label(root / "labels" / "train" / f"{name.rsplit('.', 1)[0]}.txt", label)
    write_image(root / "images" / "val" / "v1.jpg", 30, 30)
    write_label(root / "labels" / "val" / "v1.txt", "1 0.5 0.5 0.4 0.4\n")
    (root / "val.txt").write_text("./images/val/v1.jpg\n")
    spec = {"path": "../shapes", "train": "images/train", "val": "val.txt", "names": ["ring", "spot"]}
    data_yaml = tmp_path / "configs" / "data.yaml"
    data_yaml.parent.mkdir()
    data_yaml.write_text(yaml.safe_dump(spec))
    return data_yaml, root, spec


def rewrite(data_yaml, spec, **changes):
    data_yaml.write_text(yaml.safe_dump({**spec, **changes}))


def test_folder_split_with_background_images(dataset):
    data_yaml, root, _ = dataset
    coco, paths = yolo_to_coco(data_yaml, "train")
    validate_coco(coco, "yolo")
    assert coco["categories"] == [{"id": 1, "name": "ring", "supercategory": "yolo"},
                                  {"id": 2, "name": "spot", "supercategory": "yolo"}]
    names = [image["file_name"] for image in coco["images"]]
    assert names == sorted(TRAIN)  # c and d kept: background
    ring, spot, full = coco["annotations"]
    assert ring["bbox"] == [10.0, 5.0, 20.0, 10.0] and ring["category_id"] == 1 and ring["image_id"] == 1
    assert spot["bbox"] == pytest.approx([6.0, 3.0, 8.0, 4.0]) and spot["category_id"] == 2
    assert full["bbox"] == [0.0, 0.0, 32.0, 32.0] and full["image_id"] == 2
    assert paths[3] == root / "images" / "train" / "c.jpg"


def test_list_file_split_and_names_map(dataset):
    data_yaml, _, spec = dataset
    rewrite(data_yaml, spec, names={0: "ring", 3: "spot"})
    write_label(data_yaml.parents[1] / "shapes" / "labels" / "val" / "v1.txt", "3 0.5 0.5 0.4 0.4\n")
    coco, _ = yolo_to_coco(data_yaml, "val")
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "ring"), (4, "spot")]
    assert [i["file_name"] for i in coco["images"]] == ["v1.jpg"]
    assert coco["annotations"][0]["category_id"] == 4 and coco["annotations"][0]["bbox"] == pytest.approx([9, 9, 12, 12])


def test_a_split_of_several_folders_numbers_names_they_share(dataset):
    data_yaml, root, spec = dataset
    write_image(root / "images" / "extra" / "a.jpg", 16, 16)
    write_label(root / "labels" / "extra" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    rewrite(data_yaml, spec, train=["images/train", "images/extra"])
    coco, paths = yolo_to_coco(data_yaml, "train")
    assert [i["file_name"] for i in coco["images"]] == [*sorted(TRAIN), "000005_a.jpg"]
    assert paths[5] == root / "images" / "extra" / "a.jpg" and coco["annotations"][-1]["image_id"] == 5


def test_roboflow_relative_folders(dataset):
    data_yaml, root, spec = dataset
    beside = root / "data.yaml"  # no path; `../` on folders beside it, as Roboflow exports write them
    beside.write_text(yaml.safe_dump({"train": "../images/train", "val": "../images/val", "names": spec["names"]}))
    assert len(yolo_to_coco(beside, "train")[0]["images"]) == len(TRAIN)


def label_of(root, stem):
    return root / "labels" / "train" / f"{stem}.txt"


@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0.1\n", r"line 2: class id 2 is not in names \(ids 0-1\)"),
    ("0 1.5 0.5 0.1 0.1\n", r"line 1: box \[1.5, 0.5, 0.1, 0.1\] is not inside \[0, 1\]"),
    ("0 0.95 0.5 0.2 0.1\n", r"line 1: box \[0.95, 0.5, 0.2, 0.1\] extends outside \[0, 1\]"),
    ("\n0 0.5 0.5\n", r"line 2: expected 'class cx cy w h' \(5 values\), got 3"),
    ("ring 0.5 0.5 0.1 0.1\n", r"line 1: expected an integer class and 4 numbers"),
])
def test_bad_label_lines_name_file_and_line(dataset, text, message):
    data_yaml, root, _ = dataset
    write_label(label_of(root, "a"), text)
    with pytest.raises(DataError, match="^" + re.escape(str(label_of(root, "a"))) + ": " + message):
        yolo_to_coco(data_yaml, "train")


def test_label_file_without_image(dataset):
    data_yaml, root, _ = dataset
    write_label(label_of(root, "lost"), "0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="^" + re.escape(str(label_of(root, "lost"))) + ": label file without an image"):
        yolo_to_coco(data_yaml, "train")
    label_of(root, "lost").unlink()
    write_label(label_of(root, "classes"), "ring\nspot\n")  # labelImg's class list is no label file
    yolo_to_coco(data_yaml, "train")


def test_unreadable_image(dataset):
    data_yaml, root, _ = dataset
    image = root / "images" / "train" / "b.png"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(DataError, match="^" + re.escape(str(image)) + ": cannot read image"):
        yolo_to_coco(data_yaml, "train")


def test_list_file_entry_without_image(dataset):
    data_yaml, root, _ = dataset
    (root / "val.txt").write_text("./images/val/v1.jpg\nimages/val/v2.jpg\n")
    with pytest.raises(DataError, match="^" + re.escape(str(root / "val.txt")) + r": line 2: image .*v2\.jpg not found"):
        yolo_to_coco(data_yaml, "val")


@pytest.mark.parametrize("changes, message", [
    ({"names": "ring"}, r"names: expected a list of class names or an id → name map"),
    ({"names": {"zero": "ring"}}, r"names: class id 'zero' is not a non-negative integer"),
    ({"names": ["ring", "ring"]}, r"names: ring named more than once"),
    ({"val": None}, r"val: expected a folder of images or a \.txt list of images, got None"),
    ({"train": "images/missing"}, r"train: .*images/missing is neither a folder nor a \.txt list of images"),
    ({"nc": 3}, r"nc is 3 but names has 2 classes"),
])
def test_data_yaml_errors_name_it(dataset, changes, message):
    data_yaml, _, spec = dataset
    rewrite(data_yaml, spec, **changes)
    with pytest.raises(DataError, match="^" + re.escape(str(data_yaml)) + ": " + message):
        yolo_to_coco(data_yaml, "train")


def yolo_params(data_yaml, calib_size=2):
    return shrunk_params(source="yolo", yolo={"data_yaml": str(data_yaml)}, calib_size=calib_size)


def test_prepare_links_images_and_keeps_background(dataset, tmp_path):
    data_yaml, root, _ = dataset
    out = tmp_path / "prepared"
    summary = prepare_dataset(yolo_params(data_yaml), out)
    assert summary["source"] == "yolo" and summary["classes"] == ["ring", "spot"]
    train = summary["splits"]["train"]
    assert (train["images"], train["objects"], train["per_class"]) == (4, 3, {"ring": 1, "spot": 2})
    assert summary["splits"]["val"]["images"] == 1
    linked = out / "train" / "images" / "b.png"  # linked or copied, never re-encoded
    assert linked.read_bytes() == (root / "images" / "train" / "b.png").read_bytes()
    assert json.loads((out / "summary.json").read_text()) == summary


def test_failed_prepare_leaves_no_output(dataset, tmp_path):
    data_yaml, root, _ = dataset
    write_label(root / "labels" / "val" / "v1.txt", "7 0.5 0.5 0.1 0.1\n")  # train is written before val fails
    with pytest.raises(DataError, match=re.escape(str(root / "labels" / "val" / "v1.txt")) + ": line 1: class id 7"):
        prepare_dataset(yolo_params(data_yaml), tmp_path / "prepared")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "shapes"]


def write_shapes_dataset(root, num_train, num_val, seed=0):
    """A YOLO dataset of bright squares (class 0) and dark bars (class 1) on noise, a few per image;
    every fourth image is a background image without a label file."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        for index in range(count):
            width, height = int(rng.integers(56, 80)), int(rng.integers(48, 64))
            pixels = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
            lines = []
            for _ in range(0 if index % 4 == 3 else int(rng.integers(1, 3))):
                class_id = int(rng.integers(0, 2))
                w, h = (14, 14) if class_id == 0 else (24, 8)
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                pixels[y:y + h, x:x + w] = 240 if class_id == 0 else 10
                lines.append(f"{class_id} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                             f"{w / width:.6f} {h / height:.6f}")
            write_image(root / "images" / split / f"{index:03d}.jpg", width, height, pixels)
            if lines:
                write_label(root / "labels" / split / f"{index:03d}.txt", "\n".join(lines) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": {0: "square", 1: "bar"}}))
    return root / "data.yaml"


@pytest.mark.slow  # trains a detector for an epoch (~20 s of CPU)
def test_yolo_dataset_through_prepare_and_pretrain(tmp_path, monkeypatch):
    """The smoke study's params with data.source: yolo, through `quantdet prepare` and `quantdet pretrain`."""
    from quantdet.cli import main
    from tests.conftest import SMOKE

    data_yaml = write_shapes_dataset(tmp_path / "shapes", num_train=24, num_val=8)
    params = yaml.safe_load(SMOKE.read_text())
    params["data"] = {"source": "yolo", "yolo": {"data_yaml": str(data_yaml)}, "calib_size": 8}
    params["models"]["teacher"].update(epochs=1)
    params["train"].update(epochs=1, batch_size=8)
    study = tmp_path / "study"
    study.mkdir()
    (study / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(study)
    monkeypatch.setenv("QUANTDET_TRACKING", "off")
    assert main(["prepare", "--params", "params.yaml", "--out", "data/prepared"]) == 0
    summary = json.loads((study / "data" / "prepared" / "summary.json").read_text())
    assert summary["classes"] == ["square", "bar"]
    assert {k: v["images"] for k, v in summary["splits"].items()} == {"train": 24, "val": 8, "calib": 8}
    assert main(["pretrain", "--params", "params.yaml", "--role", "student"]) == 0
    trained = json.loads((study / "results" / "models" / "student-fp32.train.json").read_text())
    assert len(trained["history"]["epochs"]) == 1
