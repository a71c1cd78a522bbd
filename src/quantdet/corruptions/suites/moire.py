"""moire: synthetic screen-capture moiré, the input that demoiréing models (QuantDemoire,
arXiv 2510.04066, quantizes them) restore: a photograph of a display shows the beat between the
display's sub-pixel grid and the camera's sensor grid as coloured, slightly curved bands.

Here, per image (its parameters drawn from its seed): a grating of period 4-16 px at an angle
drawn in [-45°, 45°], bent by a quadratic warp (the lens and screen curvature), with the red,
green and blue channels a third of a period apart (the sub-pixels' offsets), modulates the
image multiplicatively, ``x * (1 + a * g)``; its amplitude ``a`` grows with the severity
(0.08, 0.16, 0.24, 0.32, 0.40), and a blur of the same severity-graded width (0.0-1.2 px
sigma) stands for the camera's defocus. Settings: ``corruptions.moire.severities`` (1-5)."""
from __future__ import annotations

import numpy as np

from quantdet.corruptions.suites import register_suite
from quantdet.corruptions.suites.base import Suite
from quantdet.errors import ParamsError

NAME = "moire"
SEVERITIES = (1, 2, 3, 4, 5)
AMPLITUDE = {1: 0.08, 2: 0.16, 3: 0.24, 4: 0.32, 5: 0.40}
BLUR_SIGMA = {1: 0.0, 2: 0.3, 3: 0.6, 4: 0.9, 5: 1.2}
PERIOD_PX = (4.0, 16.0)
ANGLE_DEG = (-45.0, 45.0)


def moire(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    image = np.asarray(pixels, dtype=np.float32)
    height, width = image.shape[:2]
    period = rng.uniform(*PERIOD_PX)
    angle = np.deg2rad(rng.uniform(*ANGLE_DEG))
    bend = rng.uniform(-1.0, 1.0) * 0.5 / max(height, width)   # up to half a period of bow per side
    phase = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = x - width / 2, y - height / 2
    along = cx * np.cos(angle) + cy * np.sin(angle) + bend * (cx ** 2 + cy ** 2)
    grating = np.stack([np.cos(2 * np.pi * along / period + phase + k * 2 * np.pi / 3) for k in range(3)], axis=-1)
    out = image * (1.0 + AMPLITUDE[severity] * grating)
    if BLUR_SIGMA[severity] > 0:
        import cv2

        out = cv2.GaussianBlur(out, (0, 0), BLUR_SIGMA[severity])
    return np.clip(out, 0, 255).round().astype(np.uint8)


@register_suite
class Moire(Suite):
    name = NAME
    description = "synthetic screen-capture moiré (coloured, bent beat bands), severities 1-5"
    reference = "a model of screen-capture moiré written for quantdet (see the module); cf. QuantDemoire, arXiv 2510.04066"

    def known(self) -> tuple[str, ...]:
        return (NAME,)

    def conditions(self, settings: dict) -> dict[str, list[int]]:
        return {NAME: list(settings.get("severities", SEVERITIES))}

    def check(self, settings: dict, key: str) -> None:
        severities = settings.get("severities", SEVERITIES)
        if not isinstance(severities, (list, tuple)) or not severities:
            raise ParamsError(f"{key}.severities: a non-empty list of integers in 1-5")
        bad = [s for s in severities if s not in SEVERITIES or isinstance(s, bool)]
        if bad:
            raise ParamsError(f"{key}.severities: {bad[0]!r} is not an integer in 1-5")
        extra = sorted(set(settings) - {"severities"})
        if extra:
            raise ParamsError(f"{key}.{extra[0]}: moire has no such setting (it has: severities)")

    def apply(self, pixels, corruption, severity, seed):
        if severity not in SEVERITIES:
            raise ParamsError(f"moire: severity {severity!r} is not an integer in 1-5")
        return moire(pixels, severity, np.random.default_rng(seed))
