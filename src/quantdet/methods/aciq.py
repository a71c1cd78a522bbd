"""ACIQ (Banner et al., "Post training 4-bit quantization of convolutional networks for
rapid-deployment", NeurIPS 2019): analytic clipping of activations.

Each activation tensor is modelled as Laplace(μ, b). Quantizing [μ − α, μ + α] uniformly to
M bits has expected squared error ≈ 2·b²·exp(−α/b) (clipping) + α²/(3·4^M) (rounding)
(Banner et al., eq. 5); the α minimizing it is α* = t_M·b, with t_M solving
2·exp(−t) = 2t/(3·4^M) (t_8 ≈ 9.89, t_4 ≈ 5.03, as in the paper's table). μ and b are
estimated on the calibration batches (b: mean absolute deviation, the Laplace MLE around the
mean); the range never exceeds the observed min/max, so post-ReLU tensors keep lo = 0.
"""
from __future__ import annotations

import math

from quantdet.methods import register_method
from quantdet.methods.base import PTQMethod


def laplace_clip_ratio(bits: int) -> float:
    """t_M = α*/b: the root of 2·exp(−t) − 2t/(3·4^M) (decreasing in t) by bisection."""
    rounding = 3.0 * 4.0 ** bits
    lo, hi = 0.0, 64.0
    for _ in range(100):
        t = 0.5 * (lo + hi)
        if 2.0 * math.exp(-t) - 2.0 * t / rounding > 0:
            lo = t
        else:
            hi = t
    return 0.5 * (lo + hi)


def register_aciq_observer() -> None:
    """Define and register the observer (torch is imported here, not when the registry loads)."""
    import torch

    from quantdet.quant.observers import OBSERVERS, Observer, register_observer

    if "aciq" in OBSERVERS:
        return

    @register_observer("aciq")
    class ACIQObserver(Observer):
        """Laplace fit per row: running mean μ and mean absolute deviation b (per-batch values
        weighted by their element counts), and the observed extremes."""

        def __init__(self, bits: int = 8, **kwargs):
            super().__init__(**kwargs)
            self.ratio = laplace_clip_ratio(bits)

        def _observe(self, r):
            n = r.shape[1]
            mean = r.mean(dim=1)
            mad = (r - mean[:, None]).abs().mean(dim=1)
            lo, hi = r.amin(dim=1), r.amax(dim=1)
            if self.count == 0:
                self.n, self.mean, self.mad, self.lo, self.hi = n, mean, mad, lo, hi
                return
            total = self.n + n
            self.mean = (self.n * self.mean + n * mean) / total
            self.mad = (self.n * self.mad + n * mad) / total
            self.n = total
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

        def _range(self):
            alpha = self.ratio * self.mad
            return (torch.maximum(self.lo, self.mean - alpha), torch.minimum(self.hi, self.mean + alpha))


@register_method
class ACIQ(PTQMethod):
    name = observer = "aciq"
    description = ("PTQ, ACIQ: analytic clipping of each activation at α* = t_M·b of its "
                   "Laplace fit (Banner et al.)")

    def register_observers(self):
        register_aciq_observer()
