"""Each detector family's letterbox: quantdet's own (top-left, black) stays as it was; the yolo
family's is Ultralytics' validator's (long side to S by OpenCV, sides rounded up, centred on
grey 114), pixel for pixel, and boxes map back to the original image through it."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from quantdet import detectors
from quantdet.data.dataset import CORNER, DetectionDataset, augmented, letterbox
from quantdet.evaluation.evaluate import to_coco_detections

SIZE = 64


def _image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _split(tmp_path, width, height):
    (tmp_path / "images").mkdir()
    _image(width, height).save(tmp_path / "images" / "a.png")
    box = [10.0, 20.0, 30.0, 25.0]   # x, y, w, h
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png", "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    return tmp_path, box


@pytest.mark.parametrize("width,height", [(200, 120), (90, 160), (64, 64), (40, 30)])
def test_the_yolo_letterbox_is_ultralytics_validators(width, height):
    """Ultralytics 8.4's val pipeline: BaseDataset.load_image (rect_mode: long side to imgsz,
    math.ceil sides, cv2.INTER_LINEAR), then LetterBox(new_shape=imgsz, scaleup=False)."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is not installed")
    from quantdet.detectors.yolo import ultralytics_imported

    ultralytics_imported()
    import math

    import cv2
    from ultralytics.data.augment import LetterBox

    image = _image(width, height)
    pixels = np.asarray(image)
    r = SIZE / max(height, width)
    if r != 1:
        w, h = min(math.ceil(width * r), SIZE), min(math.ceil(height * r), SIZE)
        pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_LINEAR)
    theirs = LetterBox(new_shape=SIZE, scaleup=False)(image=pixels)
    ours, scale, offset = letterbox(image, SIZE, detectors.get("yolo").letterbox)
    np.testing.assert_array_equal(ours, theirs)
    assert scale == pytest.approx(pixels.shape[0] / height)   # their scale_boxes gain
    if width != height:
        assert offset != (0, 0) and ours[0, 0].tolist() == [114, 114, 114]


def test_quantdet_own_letterbox_is_unchanged():
    """Top-left, black, PIL bilinear: what every earlier centernet number was measured with."""
    image = _image(200, 120)
    ours, scale, offset = letterbox(image, SIZE, CORNER)
    expected = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    expected[:38, :64] = np.asarray(image.resize((64, 38), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ours, expected)
    assert (scale, offset) == (SIZE / 200, (0, 0))
    assert detectors.get("centernet").letterbox is None


@pytest.mark.parametrize("family", ["centernet", "yolo"])
def test_boxes_map_back_through_the_letterbox(tmp_path, family):
    """A ground-truth box letterboxed into the input and decoded back lands where it was."""
    split, box = _split(tmp_path, 200, 120)
    dataset = DetectionDataset(split, SIZE, letterbox=detectors.get(family).letterbox)
    _, target, meta = dataset[0]
    assert ("offset" in meta) and (meta["offset"] != (0, 0)) == (family == "yolo")
    decoded = [{"boxes": target["boxes"], "scores": torch.ones(1), "labels": target["labels"]}]
    [result] = to_coco_detections(decoded, [meta], dataset.category_ids)
    assert result["bbox"] == pytest.approx(box, abs=0.2)


def test_augmented_images_pad_with_the_family_value():
    rng = np.random.default_rng(0)
    style = detectors.get("yolo").letterbox
    boxes = np.array([[10, 20, 40, 45]], dtype=np.float32)
    pads = set()
    for _ in range(8):
        pixels, *_ = augmented(_image(200, 120), boxes, np.array([0]), SIZE, rng, style)
        pads.add(tuple(pixels[-1, -1].tolist()))
    assert (114, 114, 114) in pads and (0, 0, 0) not in pads


@pytest.mark.parametrize("family", ["centernet", "yolo"])
def test_yolo_detections_are_clipped_to_the_image(tmp_path, family):
    """Ultralytics' scale_boxes clips to the original image; a box reaching into the padding
    would otherwise score a lower IoU than in Ultralytics' validator."""
    split, _ = _split(tmp_path, 200, 120)
    dataset = DetectionDataset(split, SIZE, letterbox=detectors.get(family).letterbox)
    _, _, meta = dataset[0]
    decoded = [{"boxes": torch.tensor([[0.0, 0.0, SIZE, SIZE]]), "scores": torch.ones(1),
                "labels": torch.zeros(1, dtype=torch.long)}]
    [result] = to_coco_detections(decoded, [meta], dataset.category_ids)
    x, y, w, h = result["bbox"]
    if family == "yolo":
        assert (x, y, y + h) == (0, 0, 120) and x + w == pytest.approx(min(SIZE / meta["scale"], 200), abs=0.01)
        assert y + h < (SIZE - meta["offset"][1]) / meta["scale"]   # cut at the image, not the padding
    else:
        assert (x, y, w, h) == (0, 0, 200, 200)   # quantdet's own: as decoded
