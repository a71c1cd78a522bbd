"""A split folder as a torch Dataset of letterboxed images and detection targets."""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from quantdet.data.coco import load_coco
from quantdet.data.letterbox import CORNER, Letterbox  # noqa: F401 (its home before data.letterbox)
from quantdet.data.split import ANNOTATIONS, IMAGES
from quantdet.errors import DataError
from quantdet.integrity import SplitChecksums

FLIP_PROBABILITY = 0.5
RESCALE_PROBABILITY = 0.5
RESCALE_RANGE = (0.75, 1.25)
# A box cut by the crop stays a target only while this much of it, and 2 px each way, remains.
MIN_KEPT_AREA = 0.5
MIN_KEPT_SIDE_PX = 2.0




class DetectionDataset(torch.utils.data.Dataset):
    """Items are (image 3xSxS float in [0, 1], {"boxes" xyxy, "labels"}, meta).

    Images are letterboxed (``letterbox``: the detector family's, default CORNER): scaled by
    S / max(h, w) and padded, so a box maps back to the original image by subtracting
    meta["offset"] and dividing by meta["scale"]. Crowd (ignored)
    annotations are not targets. Augmentation is geometric only (flip, rescale, shift):
    photometric changes would blur the line between clean training and the corruptions the
    study measures. Its randomness depends on (seed, epoch, index) only, so it does not
    depend on worker count or order; call set_epoch() each epoch.
    """

    def __init__(self, split_dir, input_size, augment=False, seed=0, letterbox: Letterbox | None = None):
        self.split_dir = Path(split_dir)
        self.letterbox = letterbox or CORNER
        self.input_size = int(input_size)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        # a cached split's checksums (the corrupt stage writes them): each file checked as read
        self.checksums = SplitChecksums(self.split_dir)
        if self.checksums:
            self.checksums.verify_file(ANNOTATIONS)
        self.coco = load_coco(self.split_dir / ANNOTATIONS, self.split_dir / IMAGES, check_images=False)
        categories = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [c["name"] for c in categories]
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids)}
        self.images = list(self.coco["images"])
        objects = {image["id"]: ([], []) for image in self.images}
        for annotation in self.coco["annotations"]:
            if not annotation.get("iscrowd", 0):
                x, y, w, h = annotation["bbox"]
                boxes, labels = objects[annotation["image_id"]]
                boxes.append((x, y, x + w, y + h))
                labels.append(label_of[annotation["category_id"]])
        self.targets = [
            (np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64))
            for boxes, labels in (objects[image["id"]] for image in self.images)
        ]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        info = self.images[index]
        image = read_image(self.split_dir, info["file_name"], self.checksums)
        boxes, labels = self.targets[index]
        meta = {"image_id": info["id"], "orig_size": (image.height, image.width), "file_name": info["file_name"]}
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            pixels, boxes, labels, scale = augmented(image, boxes, labels, self.input_size, rng, self.letterbox)
            offset = (0, 0)
        else:
            pixels, scale, offset = letterbox(image, self.input_size, self.letterbox)
            boxes = boxes * scale + np.array(offset * 2, dtype=np.float32)
        meta["scale"], meta["offset"], meta["clip"] = scale, offset, self.letterbox.clip
        # numpy, not torch, converts: torch's intra-op threads cost more than they save on one image.
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255)
        target = {"boxes": torch.from_numpy(boxes.astype(np.float32)), "labels": torch.from_numpy(labels)}
        return tensor, target, meta


def read_image(split_dir: Path, file_name: str, checksums: SplitChecksums | None = None):
    """A split's image as RGB, its bytes checked against the split's checksums where it has
    them; an unreadable one is refused naming the file."""
    path = split_dir / IMAGES / file_name
    data = path.read_bytes()
    checksums = checksums if checksums is not None else SplitChecksums(split_dir)
    checksums.verify_bytes(f"{IMAGES}/{file_name}", data)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:   # e.g. "broken data stream"
        hint = checksums.remedy() if "corrupted" in path.parts else "restore it or rerun the stage that makes it"
        raise DataError(f"{path}: cannot read image ({error}): {hint}") from None


def letterbox(image, size, style: Letterbox = CORNER):
    """(uint8 size x size x 3 array, scale, (left, top)): `image` scaled to fit and padded."""
    scale = size / max(image.size)
    width, height = style.sizes(image.width, image.height, scale)
    width, height = min(width, size), min(height, size)
    if style.centre:   # Ultralytics' split of the padding (LetterBox: round(d / 2 -+ 0.1))
        offset = (round((size - width) / 2 - 0.1), round((size - height) / 2 - 0.1))
    else:
        offset = (0, 0)
    if style.ceil:   # boxes scale as the image did (Ultralytics: the resized height / the original)
        scale = height / image.height
    return placed(image, size, scale, offset, style, (width, height)), scale, offset


def placed(image, size, scale, offset, style: Letterbox = CORNER, resized: tuple[int, int] | None = None):
    """`image` scaled by `scale` (to `resized` where given) and pasted with its top-left corner
    at `offset` on a square of the letterbox's pad value."""
    width, height = resized or style.sizes(image.width, image.height, scale)
    pixels = style.resize(image, (width, height))
    canvas = np.full((size, size, 3), style.pad, dtype=np.uint8)
    ox, oy = offset
    x1, y1 = max(ox, 0), max(oy, 0)
    x2, y2 = min(ox + width, size), min(oy + height, size)
    canvas[y1:y2, x1:x2] = pixels[y1 - oy:y2 - oy, x1 - ox:x2 - ox]
    return canvas


def augmented(image, boxes, labels, size, rng, style: Letterbox = CORNER):
    """Random flip, then either the plain letterbox or a random rescale and shift (with crop)."""
    if rng.random() < FLIP_PROBABILITY:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = np.stack([image.width - boxes[:, 2], boxes[:, 1], image.width - boxes[:, 0], boxes[:, 3]], axis=1)
    scale = size / max(image.size)
    if rng.random() >= RESCALE_PROBABILITY:
        pixels, scale, offset = letterbox(image, size, style)
        return pixels, boxes * scale + np.array(offset * 2, dtype=np.float32), labels, scale
    scale *= rng.uniform(*RESCALE_RANGE)
    width, height = style.sizes(image.width, image.height, scale)
    offset = tuple(
        int(rng.integers(0, size - extent + 1)) if extent <= size else -int(rng.integers(0, extent - size + 1))
        for extent in (width, height)
    )
    moved = boxes * scale + np.array(offset * 2, dtype=np.float32)
    clipped = np.clip(moved, 0, size)
    sides = clipped[:, 2:] - clipped[:, :2]
    keep = (sides.min(axis=1) >= MIN_KEPT_SIDE_PX) & (box_area(clipped) >= MIN_KEPT_AREA * box_area(moved))
    return placed(image, size, scale, offset, style, (width, height)), clipped[keep], labels[keep], scale


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def collate_detections(batch):
    """(images B x 3 x S x S, [target], [meta]): targets differ in length, so they stay a list."""
    images, targets, metas = zip(*batch)
    return torch.stack(images), list(targets), list(metas)


class SeededSubset(torch.utils.data.Subset):
    """`size` items of `dataset` drawn once with `seed`, passing set_epoch on (so augmentation
    still changes every epoch): a training budget smaller than the split."""

    def __init__(self, dataset, size, seed):
        order = np.random.default_rng(seed).permutation(len(dataset))[:size]
        super().__init__(dataset, sorted(order.tolist()))

    def set_epoch(self, epoch):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
