"""On-line degradations: a seeded plan saying which images are degraded, by what and how
strongly. Used by degradation-aware calibration (QRID: a share p of the calibration images
degraded by one random transform) and by DA-QAT (each training image degraded with
probability p by one transform of the configured list, at a random severity).

The plan for image i depends only on (seed, epoch, i), so a batch's composition is
reproducible whatever the order or the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantdet.corruptions.corrupted_split import check_condition, corrupt_image


@dataclass(frozen=True)
class Degradation:
    corruption: str
    severity: int
    seed: int


def plan_degradation(index: int, *, names, p: float, severities, seed: int,
                     epoch: int = 0) -> Degradation | None:
    """None (the image stays clean) with probability 1 − p, else one drawn degradation."""
    rng = np.random.default_rng([seed, epoch, index])
    if not names or rng.random() >= p:
        return None
    name = names[int(rng.integers(len(names)))]
    severity = int(severities[int(rng.integers(len(severities)))])
    return Degradation(name, severity, int(rng.integers(2**32)))


def check_degradations(names, severities) -> None:
    for name in names:
        for severity in severities:
            check_condition(name, severity)


def apply_degradation(pixels: np.ndarray, degradation: Degradation | None) -> np.ndarray:
    """uint8 H×W×3 pixels with the degradation applied (unchanged when None)."""
    if degradation is None:
        return pixels
    out = corrupt_image(pixels, degradation.corruption, degradation.severity, degradation.seed)
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)
