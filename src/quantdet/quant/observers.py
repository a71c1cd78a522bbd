"""Observers: estimate the clipping range [lo, hi] of an activation from calibration batches.

Registered by name; `ptq.methods` in params.yaml selects one.
"""
from __future__ import annotations

import torch

OBSERVERS: dict[str, type] = {}


def register_observer(name: str):
    def wrap(cls):
        OBSERVERS[name] = cls
        cls.name = name
        return cls
    return wrap


def build_observer(name: str, **kwargs):
    try:
        cls = OBSERVERS[name]
    except KeyError:
        raise ValueError(f"unknown observer {name!r}; known: {sorted(OBSERVERS)}") from None
    return cls(**kwargs)


class Observer:
    """Accumulates batches with observe(); range() gives (lo, hi) as 0-d tensors."""

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        return self.count > 0


@register_observer("minmax")
class MinMaxObserver(Observer):
    """The extreme values over all calibration batches."""

    def __init__(self, **_):
        self.lo = self.hi = None
        self.count = 0

    def observe(self, x):
        lo, hi = x.detach().min().float(), x.detach().max().float()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.count += 1

    def range(self):
        return self.lo, self.hi


def percentile_range(x: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The [1 − γ, γ] quantiles of x (exact order statistics, any tensor size)."""
    flat = x.detach().flatten().float()
    n = flat.numel()
    k_lo = max(1, int(round((1.0 - gamma) * (n - 1))) + 1)
    k_hi = max(1, min(n, int(round(gamma * (n - 1))) + 1))
    lo = torch.kthvalue(flat, k_lo).values
    hi = torch.kthvalue(flat, k_hi).values
    return lo, hi


@register_observer("percentile")
class PercentileObserver(Observer):
    """FQN: clip each batch at its [1 − γ, γ] percentiles; average over batches
    (momentum=None) or track with an exponential moving average (momentum in (0, 1))."""

    def __init__(self, percentile: float = 0.999, momentum: float | None = None, **_):
        self.gamma = percentile
        self.momentum = momentum
        self.lo = self.hi = None
        self.count = 0

    def observe(self, x):
        lo, hi = percentile_range(x, self.gamma)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        elif self.momentum is None:  # running mean over batches
            self.lo = self.lo + (lo - self.lo) / (self.count + 1)
            self.hi = self.hi + (hi - self.hi) / (self.count + 1)
        else:
            self.lo = (1 - self.momentum) * self.lo + self.momentum * lo
            self.hi = (1 - self.momentum) * self.hi + self.momentum * hi
        self.count += 1

    def range(self):
        return self.lo, self.hi
