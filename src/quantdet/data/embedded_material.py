"""Real image material that installed packages ship, for the embedded dataset (no downloads).

Backgrounds are photographs from scikit-image and scikit-learn. Objects are handwritten
digits (scikit-learn's 8x8 UCI digits) and face crops (scikit-image's LFW subset, whose
first 100 entries are faces and the rest non-face patches). Object templates are split
between train and val, so validation measures detection of unseen instances.
"""

from dataclasses import dataclass

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

# Photographs without people in them: an unlabelled human face in a background would be
# a false negative in every image that shows it.
SKIMAGE_PHOTOS = (
    "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "brick", "grass", "gravel", "coins", "moon",
)
LFW_FACES = 100
VAL_FRACTION = 0.15


@dataclass(frozen=True)
class Material:
    backgrounds: tuple  # PIL RGB images
    grayscale: tuple  # per background: True where it is a texture to tint
    digits: dict  # split -> digit -> float32 array (n, 8, 8) in [0, 1]
    faces: dict  # split -> float32 array (n, 25, 25) in [0, 1]


def load_material(digit_classes):
    photos = [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    photos.append(skimage.data.stereo_motorcycle()[0])
    photos.extend(load_sample_images().images)  # china.jpg, flower.jpg
    backgrounds = tuple(Image.fromarray(np.dstack([p] * 3) if p.ndim == 2 else p[..., :3]) for p in photos)
    grayscale = tuple(p.ndim == 2 for p in photos)

    digits = load_digits()
    digit_templates = {"train": {}, "val": {}}
    for digit in digit_classes:
        images = (digits.images[digits.target == digit] / 16.0).astype(np.float32)
        train, val = split_templates(images)
        digit_templates["train"][digit], digit_templates["val"][digit] = train, val
    faces = skimage.data.lfw_subset()[:LFW_FACES].astype(np.float32)
    train_faces, val_faces = split_templates(faces)
    return Material(backgrounds, grayscale, digit_templates, {"train": train_faces, "val": val_faces})


def split_templates(templates):
    cut = len(templates) - int(round(len(templates) * VAL_FRACTION))
    return templates[:cut], templates[cut:]
