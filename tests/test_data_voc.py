"""Pascal VOC to COCO conversion on tiny VOCdevkit trees: the 20 VOC classes and a dataset's own."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from quantdet.data.coco import validate_coco
from quantdet.data.prepare import prepare_dataset
from quantdet.data.voc import VOC_CLASSES, voc_class_names, voc_to_coco
from quantdet.errors import DataError
from tests.test_data_prepare import shrunk_params


def voc_xml(width, height, objects):
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, difficult, (x1, y1, x2, y2) in objects
    )
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>{size}{body}</annotation>"


@pytest.fixture
def devkit(tmp_path):
    """VOC2007 with trainval = [000001 (2 objects, one difficult), 000002 (1 object)]."""
    root = tmp_path / "VOCdevkit"
    year = root / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / folder).mkdir(parents=True)
    samples = {
        "000001": (60, 40, [("dog", 0, (1, 1, 10, 20)), ("person", 1, (30, 5, 60, 40))]),
        "000002": (50, 50, [("tvmonitor", 0, (11, 21, 30, 50))]),
    }
    for stem, (width, height, objects) in samples.items():
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(year / "JPEGImages" / f"{stem}.jpg")
        (year / "Annotations" / f"{stem}.xml").write_text(voc_xml(width, height, objects))
    (year / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n")
    return root


def test_conversion_to_coco(devkit):
    coco, paths = voc_to_coco(devkit, [["VOC2007", "trainval"]])
    validate_coco(coco, "voc")
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 21))
    assert [i["file_name"] for i in coco["images"]] == ["VOC2007_000001.jpg", "VOC2007_000002.jpg"]
    dog, person, tv = coco["annotations"]
    assert dog["bbox"] == [0.0, 0.0, 10.0, 20.0] and dog["category_id"] == 12 and dog["iscrowd"] == 0
    assert person["iscrowd"] == 1  # difficult: ignored by COCO evaluation
    assert tv["bbox"] == [10.0, 20.0, 20.0, 30.0] and tv["category_id"] == 20
    assert all(path.is_absolute() and path.is_file() for path in paths.values())
    assert set(paths) == {1, 2}


def replace_xml(devkit, stem, text):
    (devkit / "VOC2007" / "Annotations" / f"{stem}.xml").write_text(text)


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<annotation><size>", r"000002\.xml: malformed XML at line 1"),
        (voc_xml(50, 50, [("tv", 0, (1, 1, 5, 5))]), r"000002\.xml: object\[0\] \(tv\): unknown class 'tv'"),
        (voc_xml(50, 50, [("cat", 0, (1, 1, 5, 5)), ("dog", 0, (40, 40, 52, 50))]),
         r"000002\.xml: object\[1\] \(dog\): bndbox \[40.0, 40.0, 52.0, 50.0\] extends outside the 50x50 image"),
        ("<annotation><size><width>5</width><height>5</height></size><object><name>cat</name></object></annotation>",
         r"000002\.xml: object\[0\] \(cat\): missing bndbox"),
    ],
)
def test_annotation_errors_name_file_and_object(devkit, xml, message):
    replace_xml(devkit, "000002", xml)
    with pytest.raises(DataError, match=message):
        voc_to_coco(devkit, [["VOC2007", "trainval"]])


def test_missing_image_names_image_set_line(devkit):
    (devkit / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataError, match=r"trainval\.txt: line 2: image .*000002\.jpg not found"):
        voc_to_coco(devkit, [["VOC2007", "trainval"]])


def test_missing_image_set(devkit):
    with pytest.raises(DataError, match=r"VOC2012/ImageSets/Main/trainval\.txt: image set file not found"):
        voc_to_coco(devkit, [["VOC2012", "trainval"]])


@pytest.fixture
def own_classes(tmp_path):
    """A labelImg-style VOC2007 folder with classes of its own: trainval and test image sets."""
    root = tmp_path / "rings"
    year = root / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / folder).mkdir(parents=True)
    samples = {
        "r1": [("white_ring", 0, (1, 1, 10, 10)), ("scratch", 1, (5, 5, 20, 20))],
        "r2": [("white_ring", 0, (3, 3, 30, 12))],
        "r3": [("black_spot", 0, (2, 2, 8, 8))],  # in test only
    }
    for stem, objects in samples.items():
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(year / "JPEGImages" / f"{stem}.jpg")
        (year / "Annotations" / f"{stem}.xml").write_text(voc_xml(32, 32, objects))
    (year / "ImageSets/Main/trainval.txt").write_text("r1\nr2\n")
    (year / "ImageSets/Main/test.txt").write_text("r3\n")
    return root


def test_own_class_list_gives_ids_in_its_order(own_classes):
    coco, _ = voc_to_coco(own_classes, [["VOC2007", "trainval"]], ["white_ring", "black_spot", "scratch"])
    validate_coco(coco, "voc")
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "white_ring"), (2, "black_spot"), (3, "scratch")]
    assert [(a["category_id"], a["iscrowd"]) for a in coco["annotations"]] == [(1, 0), (3, 1), (1, 0)]


def test_auto_classes_are_the_sorted_names_of_every_set(own_classes):
    sets = [["VOC2007", "trainval"], ["VOC2007", "test"]]
    assert voc_class_names(own_classes, sets) == ["black_spot", "scratch", "white_ring"]


def test_class_outside_the_list_names_file_object_and_key(own_classes):
    xml = own_classes / "VOC2007" / "Annotations" / "r1.xml"
    with pytest.raises(DataError, match=re.escape(str(xml)) + r": object\[1\] \(scratch\): unknown class 'scratch' "
                                        r"\(classes: white_ring, black_spot; data.voc.classes"):
        voc_to_coco(own_classes, [["VOC2007", "trainval"]], ["white_ring", "black_spot"])


def voc_params(root, classes):
    return shrunk_params(source="voc", calib_size=1,
                         voc={"root": str(root), "train_sets": [["VOC2007", "trainval"]],
                              "val_sets": [["VOC2007", "test"]], "classes": classes})


@pytest.mark.parametrize("classes", ["auto", ["scratch", "white_ring", "black_spot"]])
def test_prepare_with_own_classes(own_classes, tmp_path, classes):
    summary = prepare_dataset(voc_params(own_classes, classes), tmp_path / "prepared")
    expected = sorted(["white_ring", "scratch", "black_spot"]) if classes == "auto" else classes
    assert summary["classes"] == expected
    assert summary["splits"]["train"]["per_class"] == {**dict.fromkeys(expected, 0), "white_ring": 2}
    assert summary["splits"]["train"]["ignored"] == 1  # the difficult scratch
    val = json.loads((tmp_path / "prepared" / "val" / "annotations.json").read_text())
    assert val["categories"] == json.loads((tmp_path / "prepared" / "train" / "annotations.json").read_text())["categories"]


def test_failed_prepare_with_own_classes_leaves_no_output(own_classes, tmp_path):
    with pytest.raises(DataError, match=r"r3\.xml: object\[0\] \(black_spot\): unknown class 'black_spot'"):
        prepare_dataset(voc_params(own_classes, ["white_ring", "scratch"]), tmp_path / "prepared")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rings"]
