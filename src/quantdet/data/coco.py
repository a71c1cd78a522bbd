"""Read and validate a COCO detection annotation file.

Every later stage trusts the prepared annotations, so problems are found here, once, and
reported with the file and the entry that holds them.
"""

import json
import math
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from quantdet.errors import DataError

# Annotation tools round box corners; a box this far past the border is clipped, not rejected.
BOX_SLACK_PX = 1.0

REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def load_coco(annotation_path, image_dir, check_images=True):
    """Return the COCO dict of `annotation_path`, validated against itself and `image_dir`.

    Boxes up to BOX_SLACK_PX outside their image are clipped to it; `iscrowd` and `area`
    are filled in where absent. Raises DataError naming the file and the entry.
    """
    # The full path: a train and a val file of the same name must be told apart.
    path = Path(annotation_path).absolute()
    coco = read_json(path)
    validate_coco(coco, str(path))
    if check_images:
        check_image_files(coco, Path(image_dir), str(path))
    return coco


def read_json(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read annotation file: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def validate_coco(coco, name):
    """Check structure, ids and references of a COCO dict in place; `name` labels messages."""
    if not isinstance(coco, dict):
        raise DataError(f"{name}: top level must be a JSON object, got {type(coco).__name__}")
    for key, entry_keys in REQUIRED_KEYS.items():
        if key not in coco:
            raise DataError(f"{name}: missing top-level key '{key}'")
        if not isinstance(coco[key], list):
            raise DataError(f"{name}: '{key}' must be a list")
        for index, entry in enumerate(coco[key]):
            where = f"{name}: {key}[{index}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: must be an object")
            for entry_key in entry_keys:
                if entry_key not in entry:
                    raise DataError(f"{where}: missing key '{entry_key}'")
            if not is_integer(entry["id"]):
                raise DataError(f"{where}: id {entry['id']!r} is not an integer")

    images = unique_by_id(coco["images"], "images", name)
    categories = unique_by_id(coco["categories"], "categories", name)
    unique_by_id(coco["annotations"], "annotations", name)

    file_names = set()
    for index, image in enumerate(coco["images"]):
        file_name = image["file_name"]
        # Prepared splits copy images under their file_name, which must stay inside the split.
        relative = isinstance(file_name, str) and file_name and not Path(file_name).is_absolute()
        if not relative or ".." in Path(file_name).parts:
            raise DataError(
                f"{name}: images[{index}] (id {image['id']}): file_name {file_name!r} is not a relative path"
            )
        if file_name in file_names:
            raise DataError(f"{name}: images[{index}] (id {image['id']}): duplicate file_name {file_name!r}")
        file_names.add(file_name)
        for side in ("width", "height"):
            if not is_integer(image[side]) or image[side] <= 0:
                raise DataError(
                    f"{name}: images[{index}] (id {image['id']}): {side} {image[side]!r} is not a positive integer"
                )
    for index, annotation in enumerate(coco["annotations"]):
        check_annotation(annotation, f"{name}: annotations[{index}] (id {annotation['id']})", images, categories)


def check_annotation(annotation, where, images, categories):
    image = images.get(annotation["image_id"])
    if image is None:
        raise DataError(f"{where}: refers to unknown image id {annotation['image_id']!r}")
    if annotation["category_id"] not in categories:
        raise DataError(f"{where}: unknown category id {annotation['category_id']!r}")
    box = annotation["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        raise DataError(f"{where}: bbox {box!r} is not a list of 4 finite numbers")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox {box} has non-positive width or height")
    width, height = image["width"], image["height"]
    if x < -BOX_SLACK_PX or y < -BOX_SLACK_PX or x + w > width + BOX_SLACK_PX or y + h > height + BOX_SLACK_PX:
        raise DataError(f"{where}: bbox {box} extends outside image {image['id']} ({width}x{height})")
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, width), min(y + h, height)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise DataError(f"{where}: bbox {box} has no area inside image {image['id']} ({width}x{height})")
    annotation["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    annotation.setdefault("area", (x2 - x1) * (y2 - y1))
    annotation.setdefault("iscrowd", 0)
    if annotation["iscrowd"] not in (0, 1):
        raise DataError(f"{where}: iscrowd {annotation['iscrowd']!r} is not 0 or 1")


def check_image_files(coco, image_dir, name):
    """Open and fully decode every image: a truncated file fails here, not mid-training."""
    for index, image in enumerate(coco["images"]):
        where = f"{name}: images[{index}] (id {image['id']})"
        path = image_dir / image["file_name"]
        if not path.is_file():
            raise DataError(f"{where}: image file {path} not found")
        try:
            with Image.open(path) as opened:
                opened.load()
                size = opened.size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DataError(f"{where}: cannot read image {path}: {error}") from None
        if size != (image["width"], image["height"]):
            raise DataError(
                f"{where}: image {path} is {size[0]}x{size[1]}, annotation says {image['width']}x{image['height']}"
            )


def unique_by_id(entries, key, name):
    by_id = {}
    for index, entry in enumerate(entries):
        if entry["id"] in by_id:
            raise DataError(f"{name}: {key}[{index}]: duplicate id {entry['id']}")
        by_id[entry["id"]] = entry
    return by_id


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
