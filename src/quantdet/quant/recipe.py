"""What a QAT recipe is (torch-free: the method registry declares recipes without torch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QATRecipe:
    name: str
    calibration_observer: str   # initial activation ranges
    tracking_observer: str | None  # keeps updating ranges from training batches (EMA)
    learnable_steps: bool       # LSQ: step sizes are trained parameters
    degraded_batches: bool      # DA-QAT: on-line degradations in the training batches
    description: str
    outlier_aware: bool = False  # FP16 outlier weights + quantization-error loss (quant/outlier.py)
