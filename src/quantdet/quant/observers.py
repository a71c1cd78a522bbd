"""Observers: estimate the clipping range [lo, hi] of a tensor from calibration batches.

Per tensor (axis=None) or per channel (axis=k: one range per index along k). Registered by
name; a PTQ method of the registry (quantdet.methods) names the one it calibrates with.

An observer is a module, a child of its quantizer, and every tensor it keeps is a buffer
(non-persistent: the saved model holds the scales, not the observations), so `model.to()`
moves its state with the model: a model calibrated on the CPU trains on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from quantdet.quant.quantizer import asymmetric_qparams, fake_quantize, integer_range

OBSERVERS: dict[str, type] = {}


def register_observer(name: str):
    def wrap(cls):
        OBSERVERS[name] = cls
        cls.name = name
        return cls
    return wrap


def build_observer(name: str, **kwargs):
    if name not in OBSERVERS:  # a method may bring its own observer (methods/aciq.py)
        from quantdet.methods import methods
        for method in methods():
            method.register_observers()
    try:
        cls = OBSERVERS[name]
    except KeyError:
        raise ValueError(f"unknown observer {name!r}; known: {sorted(OBSERVERS)}") from None
    return cls(**kwargs)


def rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """x as a 2-D float tensor: one row per channel along axis (a single row if axis is None)."""
    x = x.detach().float()
    if axis is None:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            x = x.permute(0, 2, 3, 1)   # the same values in memory order: no copy
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer(nn.Module):
    """Accumulates batches with observe(); range() gives (lo, hi), 0-d per tensor or 1-d per channel.

    A tensor assigned to an attribute (`self.lo = ...`) becomes a non-persistent buffer, so
    subclasses keep their state as plain assignments and it still follows `.to()`."""

    def __init__(self, axis: int | None = None, **_):
        super().__init__()
        self.axis = axis
        self.count = 0

    def __setattr__(self, name, value):
        if (isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)
                and name not in self._buffers):
            self.__dict__.pop(name, None)  # e.g. `self.samples = None` before the first batch
            self.register_buffer(name, value, persistent=False)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.observe(x)
        return x

    def observe(self, x: torch.Tensor) -> None:
        self._observe(rows(x, self.axis))
        self.count += 1

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._range()
        if self.axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    @property
    def ready(self) -> bool:
        return self.count > 0


@register_observer("minmax")
class MinMaxObserver(Observer):
    """The extreme values over all calibration batches."""

    def _observe(self, r):
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        if self.count == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _range(self):
        return self.lo, self.hi


@register_observer("ema_minmax")
class EMAMinMaxObserver(Observer):
    """Per-batch extremes tracked by an exponential moving average (momentum = new batch's weight)."""

    def __init__(self, momentum: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def _observe(self, r):
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        if self.count == 0:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi

    def _range(self):
        return self.lo, self.hi


def percentile_range(x: torch.Tensor, gamma: float, axis: int | None = None):
    """The [1 − γ, γ] quantiles of x, per row (exact order statistics, any tensor size)."""
    r = rows(x, axis)
    n = r.shape[1]
    k_lo = min(n, max(1, int(round((1.0 - gamma) * (n - 1))) + 1))
    k_hi = min(n, max(1, int(round(gamma * (n - 1))) + 1))
    lo = torch.kthvalue(r, k_lo, dim=1).values
    hi = torch.kthvalue(r, k_hi, dim=1).values
    if axis is None:
        return lo.reshape(()), hi.reshape(())
    return lo, hi


@register_observer("percentile")
class PercentileObserver(Observer):
    """FQN: clip each batch at its [1 − γ, γ] percentiles; average over batches
    (momentum=None) or track with an exponential moving average (momentum in (0, 1))."""

    def __init__(self, percentile: float = 0.999, momentum: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gamma = percentile
        self.momentum = momentum

    # Order statistics of at most this many values per row and batch: a 32-image training
    # batch has millions of activations, and exact kthvalue over all of them dominated a QAT
    # step. A regular stride keeps every spatial region and channel represented.
    max_samples = 1 << 18

    def _observe(self, r):
        if r.shape[1] > self.max_samples:
            r = r[:, :: -(-r.shape[1] // self.max_samples)]
        lo, hi = percentile_range(r, self.gamma, axis=0)
        if self.count == 0:
            self.lo, self.hi = lo, hi
        elif self.momentum is None:  # running mean over batches
            self.lo = self.lo + (lo - self.lo) / (self.count + 1)
            self.hi = self.hi + (hi - self.hi) / (self.count + 1)
        else:
            m = self.momentum
            self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi

    def _range(self):
        return self.lo, self.hi


class _SampleObserver(Observer):
    """Keeps a seeded random sample of each row's values (at most max_samples per row) and
    searches a clipping range on it."""

    def __init__(self, bits: int = 8, max_samples: int = 1 << 16, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.bits = bits
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.samples = None

    def _observe(self, r):
        # the indices are drawn on the CPU (the seeded generator), wherever the values are
        if r.shape[1] > self.max_samples:
            idx = torch.randperm(r.shape[1], generator=self.generator)[: self.max_samples]
            r = r[:, idx.to(r.device)]
        self.samples = r if self.samples is None else torch.cat([self.samples, r], dim=1)
        if self.samples.shape[1] > self.max_samples:
            idx = torch.randperm(self.samples.shape[1], generator=self.generator)[: self.max_samples]
            self.samples = self.samples[:, idx.to(self.samples.device)]

    def _range(self):
        ranges = [self._search(row) for row in self.samples]
        return (torch.stack([lo for lo, _ in ranges]), torch.stack([hi for _, hi in ranges]))


@register_observer("mse")
class MSEObserver(_SampleObserver):
    """The clipping range, among shrunken min/max ranges, whose quantization error (MSE against
    the float values) is smallest."""

    def __init__(self, candidates: int = 80, **kwargs):
        super().__init__(**kwargs)
        self.candidates = candidates

    def _search(self, x):
        lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
        qmin, qmax = integer_range(self.bits, signed=False)
        best, best_err = (lo, hi), float("inf")
        for alpha in torch.linspace(1.0, 0.05, self.candidates):
            scale, zp = asymmetric_qparams(lo * alpha, hi * alpha, self.bits)
            err = float(((fake_quantize(x, scale, zp, qmin, qmax) - x) ** 2).mean())
            if err < best_err:
                best, best_err = (lo * alpha, hi * alpha), err
        return best


@register_observer("kl")
class KLObserver(_SampleObserver):
    """The histogram (entropy) method: the clipping threshold whose 2^bits-level quantized
    histogram is closest in KL divergence to the float histogram. Tensors with negative values
    use the histogram of |x| and a range symmetric about zero, cut to the observed extremes.

    Exact zeros are left out of the histogram (pytorch-quantization's `skip_zeros`): after a
    ReLU they are often half the values, zero is exactly on the grid whatever the threshold,
    and kept in the first bin that spike dominates the divergence, so the search clips every
    post-ReLU tensor to about a tenth of its range (measured: W8A8 AP 4.7 instead of ~50)."""

    def __init__(self, bins: int = 2048, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins

    def _search(self, x):
        lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
        values = x if lo >= 0 else x.abs()
        values = values[values != 0]
        if values.numel() == 0:
            return lo, hi
        top = float(values.max())
        if top == 0.0:
            return lo, hi
        # the threshold search runs on the CPU: 2048 bins, wherever the values are
        hist = torch.histc(values, bins=self.bins, min=0.0, max=top).double().cpu()
        threshold = kl_threshold(hist, 2 ** self.bits if lo >= 0 else 2 ** (self.bits - 1)) * top
        t = torch.tensor(threshold, dtype=x.dtype, device=x.device)
        return (torch.maximum(lo, -t) if lo < 0 else lo), torch.minimum(hi, t)


def kl_threshold(hist: torch.Tensor, levels: int, step: int = 8) -> float:
    """Fraction of the histogram's range at which to clip (TensorRT's entropy calibration):
    for each candidate threshold, the clipped histogram P (outliers added to its last bin)
    against Q, P merged into `levels` levels and spread back over each level's non-empty bins."""
    bins = hist.numel()
    best_i, best_kl = bins, float("inf")
    for i in range(max(levels, step), bins + 1, step):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        level = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        nonzero = (hist[:i] > 0).double()
        mass = torch.zeros(levels, dtype=hist.dtype).scatter_add_(0, level, hist[:i])
        count = torch.zeros(levels, dtype=hist.dtype).scatter_add_(0, level, nonzero)
        q = nonzero * mass[level] / torch.clamp(count[level], min=1)
        p, q = p / p.sum(), q / torch.clamp(q.sum(), min=1e-12)
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / torch.clamp(q[mask], min=1e-12))).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i / bins
