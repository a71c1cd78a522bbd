"""Corrupted copies of a split: one (corruption, severity) of it, written once, read by every evaluation.
The corruption is one of imagecorruptions' or another degradation suite's (quantdet.corruptions.suites).

This runs as its own process for each of the 75 benchmark conditions, so it avoids torch,
and imports imagecorruptions (cv2, numba, scikit-image) only when it corrupts something.
"""

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from quantdet import integrity
from quantdet.io_utils import atomic_directory
from quantdet.data.coco import load_coco
from quantdet.data.split import ANNOTATIONS, IMAGES, write_annotations
from quantdet.errors import DataError, ParamsError

# Hendrycks & Dietterich's 15 benchmark corruptions, in the order of their tables.
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)
# Their 4 held-out corruptions, for checking that conclusions do not overfit the 15.
HELDOUT_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = BENCHMARK_CORRUPTIONS + HELDOUT_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE_PX = 32  # imagecorruptions' filters are sized for images at least this large
# These two take their own seed instead of drawing from numpy's global generator.
SEEDED_BY_ARGUMENT = ("glass_blur", "impulse_noise")


def check_condition(corruption, severity):
    """A degradation of imagecorruptions or of another registered suite (quantdet.corruptions.suites)
    at one of its severities."""
    if corruption not in CORRUPTIONS:
        from quantdet.corruptions import suites

        suite = suites.of_corruption(corruption)
        if suite is None:
            known = [c for s in suites.suites() for c in s.known()]
            raise ParamsError(f"corruption {corruption!r} is unknown (known: {', '.join(known)})")
        if severity not in suite.severities(corruption):
            raise ParamsError(f"severity {severity!r} of {suite.name}'s {corruption!r} is not one of "
                              f"{list(suite.severities(corruption))}")
        return
    if severity not in SEVERITIES:
        raise ParamsError(f"severity {severity!r} of corruption {corruption!r} is not an integer in 1-5")


def image_seed(seed, corruption, severity, image_id):
    """A 32-bit seed per image, so an image's corruption does not depend on which images precede it."""
    digest = hashlib.sha256(f"{seed}/{corruption}/{severity}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt_image(pixels, corruption, severity, seed):
    """`pixels` (uint8 H x W x 3) corrupted reproducibly from `seed`."""
    check_condition(corruption, severity)
    if corruption not in CORRUPTIONS:   # another suite's degradation
        from quantdet.corruptions import suites

        return suites.of_corruption(corruption).apply(pixels, corruption, severity, seed)
    from imagecorruptions import corrupt  # heavy imports, only where pixels are corrupted

    np.random.seed(seed)
    extra = {"seed": seed} if corruption in SEEDED_BY_ARGUMENT else {}
    return corrupt(pixels, severity=severity, corruption_name=corruption, **extra)


def condition_images(image_ids, seed, corruption, severity, count):
    """The ids of the images one condition draws from its split: `count` of them, a seeded draw
    that differs between conditions and depends on nothing else (sorted); all when count is
    None or not smaller than the split."""
    image_ids = sorted(image_ids)
    if count is None or count >= len(image_ids):
        return image_ids
    digest = hashlib.sha256(f"{seed}/{corruption}/{severity}/images".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return sorted(int(i) for i in rng.choice(image_ids, size=count, replace=False))


def corrupt_split(split_dir, corruption, severity, seed, out_dir, images=None):
    """Write `out_dir` as a split folder holding the corrupted copy of `split_dir`; return a summary.

    `images`: how many of the split's images the condition holds (a seeded draw per condition,
    `condition_images`); None: all. Images are saved as PNG, losslessly, so the corruption
    (jpeg_compression included) is exactly what the evaluation sees; file names change to .png
    where they were not.
    """
    check_condition(corruption, severity)
    split_dir = Path(split_dir)
    coco = load_coco(split_dir / ANNOTATIONS, split_dir / IMAGES, check_images=False)
    drawn = set(condition_images([i["id"] for i in coco["images"]], seed, corruption, severity, images))
    coco["images"] = [i for i in coco["images"] if i["id"] in drawn]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in drawn]
    started = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        (staging / IMAGES).mkdir()
        png_names, checksums = set(), {}
        for image in coco["images"]:
            source = split_dir / IMAGES / image["file_name"]
            pixels = read_rgb(source)
            corrupted = corrupt_image(pixels, corruption, severity, image_seed(seed, corruption, severity, image["id"]))
            if corrupted.shape != pixels.shape:
                raise DataError(f"{source}: {corruption} changed the image shape {pixels.shape} to {corrupted.shape}")
            png_name = str(Path(image["file_name"]).with_suffix(".png"))
            if png_name in png_names:
                raise DataError(
                    f"{split_dir / ANNOTATIONS}: image id {image['id']}: {png_name} would overwrite another image"
                )
            png_names.add(png_name)
            target = staging / IMAGES / png_name
            target.parent.mkdir(parents=True, exist_ok=True)
            encoded = io.BytesIO()   # the bytes written are the bytes hashed
            Image.fromarray(corrupted).save(encoded, format="PNG")
            target.write_bytes(encoded.getvalue())
            checksums[f"{IMAGES}/{png_name}"] = integrity.sha256_bytes(encoded.getvalue())
            image["file_name"] = png_name
        write_annotations(staging, coco)
        checksums = {ANNOTATIONS: integrity.sha256_file(staging / ANNOTATIONS), **checksums}
        # what DetectionDataset checks each image against when it reads it (quantdet.integrity)
        (staging / integrity.MANIFEST).write_text(integrity.format_lines(checksums))
        # Provenance only; the time stays out of the folder so reruns produce identical bytes.
        condition = {"corruption": corruption, "severity": severity, "seed": seed, "images": len(coco["images"]),
                     "of": len(drawn) if images is None else images}
        (staging / "corruption.json").write_text(json.dumps(condition, indent=2) + "\n")
    return {**condition, "source": str(split_dir), "seconds": round(time.perf_counter() - started, 3)}


def read_rgb(path):
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")  # grayscale and palette images become 3-channel
    except (OSError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read image: {error}") from None
    if min(image.size) < MIN_SIDE_PX:
        raise DataError(
            f"{path}: image is {image.width}x{image.height}; corruptions need at least {MIN_SIDE_PX} px on each side"
        )
    return np.asarray(image)
