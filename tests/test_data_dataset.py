"""DetectionDataset: letterboxing, targets, and geometric augmentation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from quantdet.data.dataset import DetectionDataset, collate_detections

WHITE_BOX = [16, 4, 24, 12]  # x, y, w, h of the white rectangle in the 80x40 image


@pytest.fixture
def split(tmp_path):
    """One 80x40 black image with a white rectangle (category 7), a crowd box, and a 50x60 image."""
    (tmp_path / "images").mkdir()
    wide = np.zeros((40, 80, 3), np.uint8)
    x, y, w, h = WHITE_BOX
    wide[y:y + h, x:x + w] = 255
    Image.fromarray(wide).save(tmp_path / "images" / "wide.png")
    Image.fromarray(np.full((60, 50), 128, np.uint8)).save(tmp_path / "images" / "tall.png")  # grayscale
    coco = {
        "images": [{"id": 10, "file_name": "wide.png", "width": 80, "height": 40},
                   {"id": 11, "file_name": "tall.png", "width": 50, "height": 60}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": WHITE_BOX},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [60, 20, 10, 10], "iscrowd": 1},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 50, 60]},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def test_letterbox_maps_boxes_and_pads_right_bottom(split):
    dataset = DetectionDataset(split, input_size=40)
    assert dataset.category_ids == [3, 7] and dataset.class_names == ["three", "seven"]
    image, target, meta = dataset[0]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert meta == {"image_id": 10, "orig_size": (40, 80), "file_name": "wide.png", "scale": 0.5,
                    "offset": (0, 0), "clip": False}   # quantdet's own letterbox: top-left, not clipped
    assert target["boxes"].tolist() == [[8.0, 2.0, 20.0, 8.0]]  # crowd box left out
    assert target["labels"].tolist() == [1]
    assert image[:, 20:, :].abs().sum() == 0  # padding below
    assert image[:, 3:7, 10:18].min() == 1.0  # the rectangle, where the box says
    tall, target, meta = dataset[1]
    assert meta["scale"] == pytest.approx(40 / 60)
    assert torch.allclose(target["boxes"], torch.tensor([[0.0, 0.0, 50 * 40 / 60, 40.0]]))
    assert tall[:, :, 34:].abs().sum() == 0  # padding right; 50 * 2/3 = 33.3 px of image
    assert tall[:, :, :33].min() == pytest.approx(128 / 255)


def test_augmentation_keeps_boxes_on_objects_and_is_reproducible(split):
    dataset = DetectionDataset(split, input_size=40, augment=True, seed=1)
    flipped = 0
    for epoch in range(12):
        dataset.set_epoch(epoch)
        image, target, meta = dataset[0]
        again, target_again, _ = dataset[0]
        assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])
        for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
            inside = image[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1]
            assert inside.numel() > 0 and inside.mean() > 0.9
        white = image[0] > 0.5
        if target["boxes"].numel():
            x1 = target["boxes"][0, 0]
            flipped += int(x1 > 0.5 * meta["scale"] * 80)
        assert white.sum() <= (target["boxes"][:, 2:] - target["boxes"][:, :2] + 2).prod(dim=1).sum()
    assert 0 < flipped < 12
    other = DetectionDataset(split, input_size=40, augment=True, seed=2)
    differs = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        other.set_epoch(epoch)
        differs.append(not torch.equal(dataset[0][0], other[0][0]))
    assert any(differs)


def test_collate(split):
    dataset = DetectionDataset(split, input_size=32)
    images, targets, metas = collate_detections([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 32, 32)
    assert [len(t["labels"]) for t in targets] == [1, 1]
    assert [m["image_id"] for m in metas] == [10, 11]


def test_seeded_subset_is_fixed_by_its_seed_and_passes_the_epoch_on():
    from quantdet.data.dataset import SeededSubset

    class Items(list):
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

    items = Items(range(20))
    a, b = SeededSubset(items, 5, seed=3), SeededSubset(items, 5, seed=3)
    assert list(a) == list(b) and len(set(a)) == 5 and list(a) != list(SeededSubset(items, 5, seed=4))
    a.set_epoch(2)
    assert items.epoch == 2
