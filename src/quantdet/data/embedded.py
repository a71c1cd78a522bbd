"""The embedded default dataset: real objects composited onto real photographs.

Classes: `face` and the handwritten digits 0, 1, 2, 3, 4 and 7. Digits are the one
many-instance object material that ships offline, and at 8x8 pixels they stay
recognisable when scaled to anything from 8 px to half a 128 px image. These six are the
ones a linear classifier on the 8x8 (and on a 4x4 view of it) confuses least with each
other; 5, 6, 8 and 9 are left out because they are mistaken for 9, 0, 1 and 7. Faces add
a class with grey-level texture instead of a flat stroke colour. Seven classes, 1-8
objects per image, sizes from 8 px to half the image, objects allowed to overlap
partially over textured backgrounds: meant to be learnable but not solved by a small
detector trained from scratch for a few CPU minutes (aim: AP50 about 0.6-0.8), so the
study has room to show what quantization and corruptions take away.

Generation is deterministic: image `i` of a split draws only from a generator seeded
with (seed, split, i), and PNG encoding is lossless and timestamp-free.
"""

import colorsys
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from quantdet.data.embedded_material import load_material
from quantdet.data.split import IMAGES, split_statistics, write_annotations

DIGITS = (0, 1, 2, 3, 4, 7)
CLASSES = ("face",) + tuple(f"digit_{d}" for d in DIGITS)
MAX_OBJECTS = 8
MIN_DIGIT_PX = 8
MIN_FACE_PX = 10  # below this a face is an unrecognisable blob
MAX_IOU = 0.3
MIN_VISIBLE = 0.6  # share of an object's mask that later objects may not cover
MASK_LEVEL = 0.25  # mask value that counts as object when measuring its box
MAX_TILT_DEG = 12
PLACEMENT_TRIES = 20


def generate_embedded(out_dir, num_train, num_val, image_size, seed):
    """Write `out_dir/train` and `out_dir/val` split folders; return their statistics."""
    material = load_material(DIGITS)
    summary = {"classes": list(CLASSES), "splits": {}}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        coco = write_split(Path(out_dir) / split, split, split_index, count, image_size, seed, material)
        summary["splits"][split] = split_statistics(coco)
    return summary


def write_split(split_dir, split, split_index, count, image_size, seed, material):
    (split_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_index, index])
        pixels, objects = compose_scene(rng, material, split, image_size)
        image_id, file_name = index + 1, f"{index:06d}.png"
        Image.fromarray(pixels).save(split_dir / IMAGES / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for label, (x, y, w, h) in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            })
    categories = [
        {"id": index + 1, "name": name, "supercategory": "face" if name == "face" else "digit"}
        for index, name in enumerate(CLASSES)
    ]
    coco = {
        "info": {"description": f"quantdet embedded dataset, {split} split, seed {seed}"},
        "images": images, "annotations": annotations, "categories": categories,
    }
    write_annotations(split_dir, coco)
    return coco


@dataclass
class Sprite:
    label: int
    x: int
    y: int
    rgb: np.ndarray  # h x w x 3 in [0, 1]
    alpha: np.ndarray  # h x w in [0, 1]
    visible: np.ndarray  # alpha left uncovered by sprites painted later

    def box(self, mask):
        """Tight [x1, y1, x2, y2) of `mask` > MASK_LEVEL in image pixels, or None."""
        ys, xs = np.nonzero(mask > MASK_LEVEL)
        if len(xs) == 0:
            return None
        return self.x + xs.min(), self.y + ys.min(), self.x + xs.max() + 1, self.y + ys.max() + 1


def compose_scene(rng, material, split, size):
    """Return (uint8 image, [(label, visible COCO box)]) of one scene."""
    canvas = background(rng, material, size)
    sprites = []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        for _ in range(PLACEMENT_TRIES):
            if place(draw_sprite(rng, material, split, size, canvas), sprites):
                break
    for sprite in sprites:
        region = canvas[sprite.y:sprite.y + sprite.alpha.shape[0], sprite.x:sprite.x + sprite.alpha.shape[1]]
        alpha = sprite.alpha[..., None]
        region[:] = region * (1 - alpha) + sprite.rgb * alpha
    objects = []
    for sprite in sprites:
        x1, y1, x2, y2 = sprite.box(sprite.visible)
        objects.append((sprite.label, (int(x1), int(y1), int(x2 - x1), int(y2 - y1))))
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8), objects


def background(rng, material, size):
    """A random square crop of a random photograph, scaled, maybe mirrored, textures tinted."""
    index = rng.integers(len(material.backgrounds))
    photo = material.backgrounds[index]
    short = min(photo.size)
    side = math.exp(rng.uniform(math.log(min(size, short)), math.log(short)))
    x0, y0 = rng.uniform(0, photo.size[0] - side), rng.uniform(0, photo.size[1] - side)
    crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    canvas = np.asarray(crop, dtype=np.float32) / 255
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    if material.grayscale[index]:
        canvas = canvas * tint(rng, hue=(0, 1), saturation=(0, 0.4))
    return np.ascontiguousarray(canvas)


def draw_sprite(rng, material, split, size, canvas):
    label = int(rng.integers(len(CLASSES)))
    smallest = MIN_FACE_PX if label == 0 else MIN_DIGIT_PX
    height = math.exp(rng.uniform(math.log(smallest), math.log(size / 2)))
    if label == 0:
        faces = material.faces[split]
        width = height * rng.uniform(0.8, 0.95)
        grey = resized(faces[rng.integers(len(faces))], width, height)
        alpha = ellipse(grey.shape)
        skin = tint(rng, hue=(0.02, 0.1), saturation=(0.1, 0.5))
        channels = list(np.clip(grey[..., None] * skin, 0, 1).transpose(2, 0, 1))
    else:
        digits = material.digits[split][DIGITS[label - 1]]
        width = height * rng.uniform(0.8, 1.0)
        # Upscaled 8x8 strokes are blurry; a steep ramp gives them ink-like edges.
        alpha = np.clip((resized(digits[rng.integers(len(digits))], width, height) - 0.2) / 0.4, 0, 1)
        channels = []
    angle = rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG)
    alpha, *channels = [tilted(plane, angle) for plane in [alpha] + channels]
    h, w = alpha.shape
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    if channels:
        rgb = np.dstack(channels)
    else:
        rgb = np.broadcast_to(contrasting_colour(rng, canvas[y:y + h, x:x + w]), (h, w, 3))
    return Sprite(label, x, y, rgb, alpha, alpha.copy())


def place(sprite, sprites):
    """Add `sprite` on top of `sprites` unless it hides too much of one or the boxes overlap too much.

    The IoU limit holds between the recorded (visible) boxes, which shrink as objects are covered.
    """
    if sprite.box(sprite.alpha) is None:
        return False
    uncovered = [other.visible for other in sprites]
    for index, other in enumerate(sprites):
        overlap = intersection(sprite, other)
        if overlap is None:
            continue
        (sy, sx), (oy, ox) = overlap
        visible = other.visible.copy()
        visible[oy, ox] *= 1 - sprite.alpha[sy, sx]
        if visible.sum() < MIN_VISIBLE * other.alpha.sum():
            return False
        uncovered[index] = visible
    boxes = [other.box(visible) for other, visible in zip(sprites, uncovered)] + [sprite.box(sprite.alpha)]
    if None in boxes or any(iou(a, b) > MAX_IOU for a, b in combinations(boxes, 2)):
        return False
    for other, visible in zip(sprites, uncovered):
        other.visible = visible
    sprites.append(sprite)
    return True


def intersection(a, b):
    """Slices of the pixels that sprites `a` and `b` share, in each one's own coordinates."""
    x1, y1 = max(a.x, b.x), max(a.y, b.y)
    x2 = min(a.x + a.alpha.shape[1], b.x + b.alpha.shape[1])
    y2 = min(a.y + a.alpha.shape[0], b.y + b.alpha.shape[0])
    if x2 <= x1 or y2 <= y1:
        return None
    return tuple(
        (slice(y1 - s.y, y2 - s.y), slice(x1 - s.x, x2 - s.x)) for s in (a, b)
    )


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def resized(plane, width, height):
    size = (max(1, round(width)), max(1, round(height)))
    return np.asarray(Image.fromarray(plane).resize(size, Image.Resampling.BICUBIC))


def tilted(plane, angle):
    return np.asarray(Image.fromarray(plane).rotate(angle, Image.Resampling.BILINEAR, expand=True))


def ellipse(shape):
    """A soft-edged ellipse filling `shape`: faces blend into the scene instead of showing a square crop."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = np.hypot((xs + 0.5 - w / 2) / (w / 2), (ys + 0.5 - h / 2) / (h / 2))
    return np.clip((1 - radius) / 0.15, 0, 1).astype(np.float32)


def tint(rng, hue, saturation):
    """A colour multiplier with its brightest channel at 1."""
    rgb = np.array(colorsys.hls_to_rgb(rng.uniform(*hue), 0.5, rng.uniform(*saturation)), dtype=np.float32)
    return rgb / rgb.max()


def contrasting_colour(rng, region):
    """A random colour clearly lighter or darker than the background it is painted on."""
    lightness = float(region.mean())
    if lightness > 0.5:
        level = rng.uniform(0.05, lightness - 0.3)
    else:
        level = rng.uniform(lightness + 0.3, 0.95)
    rgb = colorsys.hls_to_rgb(rng.uniform(0, 1), level, rng.uniform(0.2, 1.0))
    return np.array(rgb, dtype=np.float32)
