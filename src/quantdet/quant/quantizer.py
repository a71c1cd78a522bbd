"""Uniform quantization arithmetic: integer ranges, scales and zero points, fake quantization.

q = clamp(round(x / s) + z, qmin, qmax),  x̂ = (q − z) · s.
Training goes through the straight-through estimator: round() passes its gradient unchanged,
clamp() zeroes it outside the clipping range. Rounding is half-to-even, as in ONNX
QuantizeLinear, so the simulated model and the exported one round alike.
"""
from __future__ import annotations

import torch


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    if not 2 <= bits <= 8:
        raise ValueError(f"bit width must be within 2..8, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() whose gradient is the identity (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int):
    """Quantize and dequantize x; scale/zero_point broadcast against x (per tensor or per channel)."""
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def symmetric_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """Scale of a symmetric signed quantizer covering [-absmax, absmax] (zero point 0)."""
    _, qmax = integer_range(bits, signed=True)
    return torch.clamp(absmax, min=1e-8) / qmax


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int):
    """Scale and integer zero point of an unsigned quantizer covering [lo, hi].

    The range is widened to include 0 so that zero (ReLU outputs, zero padding) is exactly
    representable, as FQN requires.
    """
    qmin, qmax = integer_range(bits, signed=False)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=1e-8)
    zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, zero_point
