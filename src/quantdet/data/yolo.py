"""Convert an Ultralytics YOLO dataset (`data.yaml`, `images/` and `labels/*.txt`) to COCO detection annotations.

A label file sits where its image does, with the last `images` folder of the path replaced by
`labels` and the extension by `.txt`; each line is `class cx cy w h`, normalised to [0, 1]
by the image's width and height. An image without a label file, or with an empty one, is a
background image: kept, with no object.
"""

import os
from collections import Counter
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from quantdet.errors import DataError

# Ultralytics' image formats that PIL reads without a plugin.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
# Exports round normalised coordinates; a box this far past the border is clipped, not rejected.
BOX_SLACK_PX = 1.0
# labelImg writes its class list beside the label files: not a label file of a missing image.
CLASS_LIST_FILES = ("classes.txt",)


def read_data_yaml(data_yaml):
    """Return (dataset root, {"train": [entries], "val": [entries]}, {yolo class id: name}) of a data.yaml.

    A relative `path` is taken from the data.yaml's folder (its folder when `path` is absent);
    `train` and `val` entries (a folder of images or a .txt list of image paths, or a list of
    such) from the root.
    """
    data_yaml = normal(data_yaml)
    try:
        spec = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{data_yaml}: dataset file not found (data.yolo.data_yaml)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{data_yaml}: cannot read dataset file: {error}") from None
    except yaml.YAMLError as error:
        raise DataError(f"{data_yaml}: not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{data_yaml}: expected a mapping with path, train, val and names")
    root = normal(data_yaml.parent / (spec.get("path") or "."))
    entries = {}
    for split in ("train", "val"):
        value = spec.get(split)
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise DataError(f"{data_yaml}: {split}: expected a folder of images or a .txt list of images, got {value!r}")
        entries[split] = [split_entry(root, v) for v in values]
    return root, entries, class_names(spec, data_yaml)


def split_entry(root, value):
    entry = normal(root / value)
    # Roboflow exports write `../train/images` for a folder beside their data.yaml; Ultralytics
    # falls back to the path without `../` then, and so do we.
    if not entry.exists() and value.startswith("../") and (root / value[3:]).exists():
        return normal(root / value[3:])
    return entry


def class_names(spec, data_yaml):
    """`names` as a list (ids 0..n-1) or an id → name map, checked against `nc` where given."""
    names = spec.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DataError(f"{data_yaml}: names: expected a list of class names or an id → name map, got {names!r}")
    by_id = {}
    for key, name in names.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            class_id = -1
        if class_id < 0 or str(class_id) != str(key).strip():
            raise DataError(f"{data_yaml}: names: class id {key!r} is not a non-negative integer")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{data_yaml}: names: class {class_id} has no name ({name!r})")
        by_id[class_id] = name.strip()
    duplicates = sorted(name for name, count in Counter(by_id.values()).items() if count > 1)
    if duplicates:
        raise DataError(f"{data_yaml}: names: {', '.join(duplicates)} named more than once")
    if "nc" in spec and spec["nc"] != len(by_id):
        raise DataError(f"{data_yaml}: nc is {spec['nc']!r} but names has {len(by_id)} classes")
    return dict(sorted(by_id.items()))


def yolo_to_coco(data_yaml, split):
    """Return (COCO dict, {image_id: absolute image path}) of `split` ("train" or "val") of a data.yaml.

    Category ids are the YOLO class ids + 1 (COCO's are 1-based), named by `names`. File names
    are the images' own, numbered by image id where two in the split share one: split folders
    are flat, as later stages list their images/ folder.
    """
    _, entries, names = read_data_yaml(data_yaml)
    images, annotations, image_paths, used = [], [], {}, set()
    for image_path in split_images(entries[split], data_yaml, split):
        width, height = image_size(image_path)
        image_id = len(images) + 1
        file_name = image_path.name
        while file_name in used:
            file_name = f"{image_id:06d}_{file_name}"
        used.add(file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        image_paths[image_id] = image_path
        for class_id, bbox in read_label_file(label_path(image_path), names, width, height):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_id + 1,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    if not images:
        raise DataError(f"{normal(data_yaml)}: {split}: no image in {', '.join(map(str, entries[split]))}")
    categories = [{"id": class_id + 1, "name": name, "supercategory": "yolo"} for class_id, name in names.items()]
    return {"images": images, "annotations": annotations, "categories": categories}, image_paths


def split_images(entries, data_yaml, split):
    """The image paths of a split's entries, each once, in a stable order; folder entries are
    also checked for label files without an image."""
    seen, paths = set(), []
    for entry in entries:
        if entry.is_dir():
            found = sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            check_orphan_labels(entry, found)
        elif entry.is_file() and entry.suffix == ".txt":
            found = listed_images(entry)
        else:
            raise DataError(f"{normal(data_yaml)}: {split}: {entry} is neither a folder nor a .txt list of images")
        for path in found:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths


def listed_images(listing):
    """The images of a .txt list: one path a line, relative ones taken from the list's folder."""
    paths = []
    for line_number, line in enumerate(read_text(listing).splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        path = normal(listing.parent / entry)
        if not path.is_file():
            raise DataError(f"{listing}: line {line_number}: image {path} not found")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{listing}: line {line_number}: {path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        paths.append(path)
    return paths


def check_orphan_labels(image_dir, images):
    """A label file whose image is missing is a lost or misnamed image: stop rather than train without it."""
    labels_dir = label_path(image_dir / "_").parent
    if not labels_dir.is_dir():
        return
    expected = {label_path(image) for image in images}
    for label in sorted(labels_dir.rglob("*.txt")):
        if label not in expected and label.name not in CLASS_LIST_FILES:
            raise DataError(f"{label}: label file without an image (no {label.stem} with a suffix of "
                            f"{', '.join(IMAGE_SUFFIXES)} in {image_dir / label.parent.relative_to(labels_dir)})")


def label_path(image_path):
    """Ultralytics' convention: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image_path.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_label_file(path, names, width, height):
    """Yield (yolo class id, [x, y, w, h] in pixels) of each line; no file is a background image."""
    if not path.is_file():
        return
    for line_number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}: line {line_number}"
        if len(fields) != 5:
            raise DataError(f"{where}: expected 'class cx cy w h' (5 values), got {len(fields)}: {line.strip()!r}")
        try:
            class_id, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{where}: expected an integer class and 4 numbers, got {line.strip()!r}") from None
        if class_id not in names:
            raise DataError(f"{where}: class id {class_id} is not in names (ids {id_range(names)})")
        yield class_id, pixel_box(values, width, height, where)


def pixel_box(values, width, height, where):
    """[cx, cy, w, h] normalised → [x, y, w, h] in pixels, clipped to the image within BOX_SLACK_PX."""
    cx, cy, w, h = values
    if not all(0.0 <= v <= 1.0 for v in values):
        raise DataError(f"{where}: box {values} is not inside [0, 1] (cx cy w h normalised by the image size)")
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box {values} has non-positive width or height")
    x1, y1, x2, y2 = (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height
    if x1 < -BOX_SLACK_PX or y1 < -BOX_SLACK_PX or x2 > width + BOX_SLACK_PX or y2 > height + BOX_SLACK_PX:
        raise DataError(f"{where}: box {values} extends outside [0, 1] (corners {x1:.1f}, {y1:.1f}, "
                        f"{x2:.1f}, {y2:.1f} in the {width}x{height} image)")
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    return [x1, y1, x2 - x1, y2 - y1]


def image_size(path):
    """Open and fully decode the image: a truncated file fails here, not mid-training."""
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read image: {error}") from None


def read_text(path):
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read: {error}") from None


def normal(path):
    """Absolute, with `..` folded but links kept: a label file is found beside the image's
    path as given (a DVC cache link resolves elsewhere)."""
    return Path(os.path.normpath(Path(path).absolute()))


def id_range(names):
    ids = list(names)
    return f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))
