"""The prepare stage: train, val and calib splits, written all at once or not at all."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from quantdet.data.prepare import prepare_dataset
from quantdet.errors import DataError, ParamsError

PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())


def shrunk_params(**data):
    params = copy.deepcopy(PARAMS)
    params["data"].update(image_size=64, embedded={"num_train": 12, "num_val": 4}, calib_size=5)
    params["data"].update(data)
    return params


def write_coco_split(directory, name, sizes):
    """A COCO split of solid images, one box each, as `name`.json plus an images folder."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (w, h) in enumerate(sizes, start=1):
        Image.fromarray(np.full((h, w, 3), 40 * index, np.uint8)).save(directory / "images" / f"{name}{index}.jpg")
        images.append({"id": index, "file_name": f"{name}{index}.jpg", "width": w, "height": h})
        annotations.append({"id": index, "image_id": index, "category_id": 7, "bbox": [1, 1, 10, 10]})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "thing"}]}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(coco))
    return path


def coco_params(tmp_path, calib_size=2):
    source = tmp_path / "raw"
    train = write_coco_split(source, "train", [(40, 30), (50, 30), (30, 30)])
    val = write_coco_split(source, "val", [(40, 40)])
    coco = {"train_annotations": str(train), "train_images": str(source / "images"),
            "val_annotations": str(val), "val_images": str(source / "images")}
    return shrunk_params(source="coco", coco=coco, calib_size=calib_size)


def test_embedded_splits_and_summary(tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_dataset(shrunk_params(), out)
    assert sorted(p.name for p in out.iterdir()) == ["calib", "summary.json", "train", "val"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert {k: v["images"] for k, v in summary["splits"].items()} == {"train": 12, "val": 4, "calib": 5}
    train = json.loads((out / "train" / "annotations.json").read_text())
    calib = json.loads((out / "calib" / "annotations.json").read_text())
    assert all(image in train["images"] for image in calib["images"])
    assert all(annotation in train["annotations"] for annotation in calib["annotations"])
    name = calib["images"][0]["file_name"]
    assert os.path.samefile(out / "calib" / "images" / name, out / "train" / "images" / name)
    again = prepare_dataset(shrunk_params(), tmp_path / "again")
    assert again == summary
    assert (tmp_path / "again" / "calib" / "annotations.json").read_text() == json.dumps(calib, separators=(",", ":"))


def test_user_coco_images_are_linked_not_reencoded(tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_dataset(coco_params(tmp_path), out)
    assert summary["classes"] == ["thing"]
    linked = (out / "train" / "images" / "train2.jpg").read_bytes()
    assert linked == (tmp_path / "raw" / "images" / "train2.jpg").read_bytes()
    assert summary["splits"]["calib"]["images"] == 2


def test_failure_midway_leaves_no_output(tmp_path):
    params = coco_params(tmp_path)
    (tmp_path / "raw" / "images" / "val1.jpg").unlink()  # train is written before val fails
    with pytest.raises(DataError, match="val1.jpg not found"):
        prepare_dataset(params, tmp_path / "prepared")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_failure_keeps_previous_output_and_success_replaces_it(tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(shrunk_params(), out)
    with pytest.raises(ParamsError, match="data.calib_size: 50"):
        prepare_dataset(shrunk_params(calib_size=50), out)
    assert json.loads((out / "summary.json").read_text())["splits"]["calib"]["images"] == 5
    prepare_dataset(shrunk_params(calib_size=3), out)
    assert json.loads((out / "summary.json").read_text())["splits"]["calib"]["images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_voc_source_requires_root(tmp_path):
    with pytest.raises(ParamsError, match="data.voc.root"):
        prepare_dataset(shrunk_params(source="voc"), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
