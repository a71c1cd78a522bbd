"""qrid: the degraded sets of QRID (Quantization Robustness to Input Degradations for Object
Detection, arXiv 2508.19600), with the parameters of its paper and repository (Albumentations,
one transform per image, p = 1), each drawn per image from the image's seed:

- ``noisy_low``, ``noisy_medium``: additive Gaussian noise, per pixel and channel, its variance
  drawn from [10, 50] and [50, 150] (pixel units squared, 0-255 scale; GaussNoise's var_limit);
- ``blurry_low``, ``blurry_medium``: Gaussian blur, an odd kernel drawn from 3-5 and 7-11,
  sigma from the kernel size (OpenCV's rule for sigma 0, as GaussianBlur's default);
- ``contrast_low``: contrast changed by c drawn from [-0.6, -0.3] with brightness 0, i.e. pixel
  values times 1 + c (RandomBrightnessContrast scales about zero, so it also darkens);
- ``jpeg_heavy``: JPEG at a quality drawn from 20-45 (``jpeg_moderate``, 50-75, is QRID's
  calibration set; ask for it in ``corruptions.qrid.sets``);
- ``mixed_50pct``: half of the images (a draw per image) degraded by one of the six sets above
  chosen at random, the other half clean.

Each set is one condition at severity 1 (``data/corrupted/<set>/1``). Settings:
``corruptions.qrid.sets``: the sets written and evaluated (default the seven of its tables)."""
from __future__ import annotations

import numpy as np

from quantdet.corruptions.suites import register_suite
from quantdet.corruptions.suites.base import Suite
from quantdet.errors import ParamsError

NOISE = {"noisy_low": (10.0, 50.0), "noisy_medium": (50.0, 150.0)}        # variance range
BLUR = {"blurry_low": (3, 5), "blurry_medium": (7, 11)}                   # odd kernel sizes
CONTRAST = {"contrast_low": (-0.6, -0.3)}                                 # contrast change
JPEG = {"jpeg_heavy": (20, 45), "jpeg_moderate": (50, 75)}                # quality
SINGLE = ("noisy_low", "noisy_medium", "blurry_low", "blurry_medium", "contrast_low", "jpeg_heavy")
MIXED = "mixed_50pct"
SETS = (*SINGLE, MIXED, "jpeg_moderate")
DEFAULT_SETS = (*SINGLE, MIXED)


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, encoded = cv2.imencode(".jpg", pixels[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a JPEG at quality {quality}")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]


def degrade(pixels: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """One of QRID's sets applied to uint8 H x W x 3 pixels, its parameters drawn from rng."""
    image = np.asarray(pixels, dtype=np.uint8)
    if name in NOISE:
        sigma = float(np.sqrt(rng.uniform(*NOISE[name])))
        return np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).round().astype(np.uint8)
    if name in BLUR:
        import cv2

        low, high = BLUR[name]
        kernel = int(rng.choice(np.arange(low, high + 1, 2)))
        return cv2.GaussianBlur(np.ascontiguousarray(image), (kernel, kernel), 0)
    if name in CONTRAST:
        alpha = 1.0 + float(rng.uniform(*CONTRAST[name]))
        return np.clip(image.astype(np.float32) * alpha, 0, 255).round().astype(np.uint8)
    if name in JPEG:
        low, high = JPEG[name]
        return _jpeg(image, int(rng.integers(low, high + 1)))
    if name == MIXED:
        if rng.random() < 0.5:
            return image.copy()
        return degrade(image, SINGLE[int(rng.integers(len(SINGLE)))], rng)
    raise ValueError(f"qrid has no set {name!r} (its sets: {', '.join(SETS)})")


@register_suite
class Qrid(Suite):
    name = "qrid"
    description = ("QRID's degraded sets: Gaussian noise low/medium, Gaussian blur low/medium, low contrast, "
                   "heavy JPEG, and half of the images degraded by one of them")
    reference = "QRID, arXiv 2508.19600, and its repository (Albumentations parameters)"

    def known(self) -> tuple[str, ...]:
        return SETS

    def severities(self, corruption: str) -> tuple[int, ...]:
        return (1,)

    def conditions(self, settings: dict) -> dict[str, list[int]]:
        return {s: [1] for s in settings.get("sets", DEFAULT_SETS)}

    def reads(self, corruption: str) -> list[str]:
        return []   # a set's parameters are the paper's, here; the list of sets only adds or drops jobs

    def check(self, settings: dict, key: str) -> None:
        sets = settings.get("sets", DEFAULT_SETS)
        if not isinstance(sets, (list, tuple)) or not sets:
            raise ParamsError(f"{key}.sets: a non-empty list of QRID's sets ({', '.join(SETS)})")
        unknown = [s for s in sets if s not in SETS]
        if unknown:
            raise ParamsError(f"{key}.sets: {unknown[0]!r} is not one of QRID's sets ({', '.join(SETS)})")
        if len(set(sets)) != len(sets):
            raise ParamsError(f"{key}.sets: a set is named twice")
        extra = sorted(set(settings) - {"sets"})
        if extra:
            raise ParamsError(f"{key}.{extra[0]}: qrid has no such setting (it has: sets)")

    def apply(self, pixels, corruption, severity, seed):
        if severity != 1:
            raise ParamsError(f"qrid's {corruption} has one severity, 1 (asked: {severity})")
        return degrade(pixels, corruption, np.random.default_rng(seed))
