"""Convert Pascal VOC (VOCdevkit layout) to COCO detection annotations."""

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from PIL import Image

from quantdet.errors import DataError

# The standard order: the default data.voc.classes.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
BOX_SLACK_PX = 1.0


def voc_to_coco(root, sets, classes=VOC_CLASSES):
    """Return (COCO dict, {image_id: absolute image path}) for `sets` such as [["VOC2007", "trainval"]].

    Category ids are 1..N in the order of `classes` (a dataset's own names, as labelImg, CVAT or
    Label Studio export them, or the 20 VOC classes). VOC boxes are 1-based inclusive pixel
    indices, so [xmin, ymin, xmax, ymax] becomes [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1].
    Objects marked difficult become iscrowd=1: COCO evaluation then neither rewards nor penalises
    detecting them, as VOC's does.
    """
    category_ids = {name: index + 1 for index, name in enumerate(classes)}
    images, annotations, image_paths = [], [], {}
    for image_path, file_name, (width, height, objects) in read_voc_sets(root, sets):
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        image_paths[image_id] = image_path
        for name, bbox, difficult, where in objects:
            if name not in category_ids:
                raise DataError(f"{where}: unknown class '{name}' (classes: {', '.join(classes)}; "
                                "data.voc.classes lists a dataset's own, or auto takes those in its files)")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[name],
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(difficult),
            })
    categories = [{"id": category_ids[name], "name": name, "supercategory": "voc"} for name in classes]
    return {"images": images, "annotations": annotations, "categories": categories}, image_paths


def voc_class_names(root, sets):
    """The sorted names of every object in `sets`: the classes of `data.voc.classes: auto`."""
    names = {name for _, _, (_, _, objects) in read_voc_sets(root, sets) for name, *_ in objects}
    if not names:
        listings = ", ".join(str(Path(root).resolve() / year / "ImageSets" / "Main" / f"{split}.txt")
                             for year, split in sets)
        raise DataError(f"{listings}: no object in any annotation file, so no class for data.voc.classes: auto")
    return sorted(names)


def read_voc_sets(root, sets):
    """Yield (image path, file_name in the split, read_voc_xml's result) for each image of `sets`, once."""
    root = Path(root).resolve()
    seen = set()
    for year, split in sets:
        devkit = root / year
        listing = devkit / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: image set file not found")
        for line_number, line in enumerate(listing.read_text().splitlines(), start=1):
            stem = line.strip()
            if not stem or (year, stem) in seen:
                continue
            seen.add((year, stem))
            image_path = devkit / "JPEGImages" / f"{stem}.jpg"
            if not image_path.is_file():
                raise DataError(f"{listing}: line {line_number}: image {image_path} not found")
            xml_path = devkit / "Annotations" / f"{stem}.xml"
            yield image_path, f"{year}_{stem}.jpg", read_voc_xml(xml_path, image_path)


def read_voc_xml(xml_path, image_path):
    """Return (width, height, [(name, [x, y, w, h], difficult, where)]) of one VOC annotation file;
    `where` names the file and the object for messages."""
    try:
        tree = ElementTree.parse(xml_path)
    except FileNotFoundError:
        raise DataError(f"{xml_path}: annotation file not found") from None
    except ElementTree.ParseError as error:
        line, column = error.position
        raise DataError(f"{xml_path}: malformed XML at line {line}, column {column}") from None
    width, height = declared_size(tree.getroot(), xml_path, image_path)
    objects = []
    for index, element in enumerate(tree.getroot().findall("object")):
        name = (element.findtext("name") or "").strip()
        where = f"{xml_path}: object[{index}] ({name or 'unnamed'})"
        if not name:
            raise DataError(f"{where}: missing class name")
        box = element.find("bndbox")
        if box is None:
            raise DataError(f"{where}: missing bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise DataError(f"{where}: bndbox needs numeric xmin, ymin, xmax, ymax") from None
        corners = [xmin, ymin, xmax, ymax]
        if xmax < xmin or ymax < ymin:
            raise DataError(f"{where}: bndbox {corners} has negative size")
        inside = xmin >= 1 - BOX_SLACK_PX and ymin >= 1 - BOX_SLACK_PX
        if not inside or xmax > width + BOX_SLACK_PX or ymax > height + BOX_SLACK_PX:
            raise DataError(f"{where}: bndbox {corners} extends outside the {width}x{height} image")
        x1, y1 = max(xmin - 1, 0.0), max(ymin - 1, 0.0)
        x2, y2 = min(xmax, float(width)), min(ymax, float(height))
        difficult = (element.findtext("difficult") or "0").strip() == "1"
        objects.append((name, [x1, y1, x2 - x1, y2 - y1], difficult, where))
    return width, height, objects


def declared_size(root, xml_path, image_path):
    """The size in the XML, or the image header's where the XML leaves it out or zero (a few VOC files do)."""
    try:
        width, height = int(float(root.findtext("size/width"))), int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        width = height = 0
    if width > 0 and height > 0:
        return width, height
    try:
        with Image.open(image_path) as image:
            return image.size
    except (OSError, SyntaxError) as error:
        raise DataError(f"{xml_path}: no image size and cannot read {image_path}: {error}") from None
