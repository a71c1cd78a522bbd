"""Quantized modules: an activation quantizer and convolution/linear layers with
fake-quantized weights. In ONNX export mode they emit QuantizeLinear/DequantizeLinear pairs
(via torch's fake-quantize ops) carrying exactly these scales and zero points."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantdet.quant.observers import build_observer
from quantdet.quant.quantizer import (asymmetric_qparams, fake_quantize, integer_range,
                                      symmetric_scale)

FLOAT, CALIBRATE, QUANTIZE = "float", "calibrate", "quantize"


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


class ActQuantizer(nn.Module):
    """Asymmetric per-tensor activation quantizer (unsigned integers, zero point).

    mode: `calibrate` observes and passes floats through; `quantize` fake-quantizes.
    A quantizer can be applied to a second tensor with observe=False: ops such as max-pool
    and nearest upsampling keep values on the input's grid, so their output reuses the
    input's quantizer (and onnxruntime keeps them in int8).

    For quantization-aware training, `track_ranges()` keeps observing training batches (the
    observer's EMA) and re-derives scale and zero point from them; `make_learnable()` turns
    the scale into a parameter trained by LSQ instead.
    """

    def __init__(self, bits: int = 8, observer: str = "minmax", **observer_kwargs):
        super().__init__()
        self.bits = bits
        self.qmin, self.qmax = integer_range(bits, signed=False)
        self.observer_name = observer
        self.observer = build_observer(observer, bits=bits, **observer_kwargs)
        self.mode = CALIBRATE
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.tracking = False

    def track_ranges(self, observer: str | None = None, **observer_kwargs) -> None:
        """Keep updating the range from training batches, with `observer` (an EMA observer)
        starting from the range calibrated so far."""
        if observer is not None:
            previous = self.observer
            self.observer_name = observer
            self.observer = build_observer(observer, bits=self.bits, **observer_kwargs)
            if previous.ready:
                self.observer.lo, self.observer.hi = (t.reshape(1) for t in previous.range())
                self.observer.count = 1
        self.tracking = True

    def make_learnable(self) -> None:
        """LSQ: the step size becomes a trained parameter, initialised at its calibrated value."""
        scale = self.scale.detach().clone()
        del self.scale
        self.scale = nn.Parameter(scale)
        self.tracking = False

    def forward(self, x, observe: bool = True):
        if self.mode == FLOAT:
            return x
        if self.mode == CALIBRATE:
            if observe:
                self.observer.observe(x)
            return x
        if _exporting():
            return self._export_forward(x)
        if self.tracking and self.training and observe:
            self.observer.observe(x)
            self._set_qparams()
        if not torch.is_grad_enabled():
            return self._inference_forward(x)
        scale = self.scale
        if isinstance(scale, nn.Parameter):
            scale = lsq_gradient_scale(scale, x.numel(), self.qmax)
            return fake_quantize(x, scale, self.zero_point, self.qmin, self.qmax)
        # fixed step size: torch's fused kernel, whose gradient is the same straight-through
        # estimator (identity inside the clipping range, zero outside) at a fraction of the cost
        return torch.fake_quantize_per_tensor_affine(
            x, scale.detach().float().reshape(1), self.zero_point.to(torch.int32).reshape(1),
            self.qmin, self.qmax)

    def _inference_forward(self, x):
        """Fake quantization without autograd: the same arithmetic as the exported QDQ pair.

        Quantize-then-dequantize through a quint8 tensor is about 5x faster on CPU than the
        fused fake-quantize kernel (which also computes a gradient mask); a grid narrower than
        8 bits is the 8-bit result clamped to its float range, which is the same values.
        """
        scale, zp = float(self.scale.detach()), int(self.zero_point)
        if x.dtype != torch.float32 or x.device.type != "cpu" or not 0 <= zp <= 255:
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # quint8 tensors are deprecated API
            y = torch.quantize_per_tensor(x, scale, zp, torch.quint8).dequantize()
        if self.bits < 8:
            y = y.clamp((self.qmin - zp) * scale, (self.qmax - zp) * scale)
        return y

    def _export_forward(self, x):
        # ONNX carries uint8; a narrower grid is kept by clipping to its float range first.
        scale, zp = float(self.scale.detach()), int(self.zero_point)
        if self.bits < 8:
            x = torch.clamp(x, (self.qmin - zp) * scale, (self.qmax - zp) * scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)

    @torch.no_grad()
    def freeze(self):
        """Set scale and zero point from the observed range and start quantizing."""
        if not self.observer.ready:
            raise RuntimeError("activation quantizer was never calibrated")
        self._set_qparams()
        self.mode = QUANTIZE

    @torch.no_grad()
    def _set_qparams(self):
        lo, hi = self.observer.range()
        scale, zp = asymmetric_qparams(lo, hi, self.bits)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)

    def extra_repr(self):
        return f"bits={self.bits}, observer={self.observer_name}, mode={self.mode}"


def lsq_gradient_scale(scale: torch.Tensor, numel: int, qmax: int) -> torch.Tensor:
    """The step size with its gradient multiplied by 1/sqrt(numel · qmax) (LSQ, Esser et al.
    2020), which keeps step-size updates in proportion to weight updates."""
    g = 1.0 / math.sqrt(max(numel, 1) * qmax)
    return (scale - scale * g).detach() + scale * g



class OutputQuantizer(ActQuantizer):
    """The quantizer of a raw output (a prediction conv's, for families whose raw outputs are
    quantized: `DetectorFamily.integer_outputs`), so onnxruntime runs that conv as an integer
    kernel too (DQ → Conv → Q). At least 8 bits and min/max ranges whatever the method's
    observer and bit width: a clipped or coarse logit would move the detections themselves.
    In QAT its range follows an EMA of the batches' min/max."""

    def __init__(self, bits: int = 8, observer: str = "minmax", **observer_kwargs):
        super().__init__(max(8, bits), "minmax")

    def track_ranges(self, observer: str | None = None, **observer_kwargs) -> None:
        momentum = observer_kwargs.get("momentum")
        super().track_ranges("ema_minmax" if observer else None,
                             **({"momentum": momentum} if momentum is not None else {}))

class _WeightQuantMixin:
    """Symmetric per-output-channel weight quantization (zero point 0)."""

    def _init_weight_quant(self, bits: int):
        self.weight_bits = bits
        self.wqmin, self.wqmax = integer_range(bits, signed=True)
        self.quantize_weight = True

    def set_weight_bits(self, bits: int) -> None:
        """Change the weight bit width in place (mixed precision); drops the cached weights."""
        self._init_weight_quant(bits)
        self._cached_key = None

    def grid_weight(self) -> torch.Tensor:
        """The weights that go onto the integer grid (all of them here; outlier-aware layers,
        quant/outlier.py, leave their FP16 outliers out)."""
        return self.weight

    def weight_scale(self) -> torch.Tensor:
        if getattr(self, "learned_scale", None) is not None:
            return self.learned_scale
        absmax = self.grid_weight().detach().abs().flatten(1).amax(dim=1)
        return symmetric_scale(absmax, self.weight_bits)

    def make_learnable(self) -> None:
        """LSQ for the weights: one trained step size per output channel."""
        self.learned_scale = nn.Parameter(self.weight_scale().detach().clone())

    def quantized_weight(self) -> torch.Tensor:
        if not self.quantize_weight:
            return self.weight
        if not torch.is_grad_enabled() and not _exporting():
            # inference: quantize the weights once, until they change
            learned = getattr(self, "learned_scale", None)
            key = (self.weight._version, self.weight.data_ptr(),
                   None if learned is None else learned._version)
            if getattr(self, "_cached_key", None) != key:
                self._cached_weight = self._fake_quantized_weight(self.weight_scale())
                self._cached_key = key
            return self._cached_weight
        scale = self.weight_scale()
        if _exporting():
            # a traced constant, so the exported QuantizeLinear reads an initializer
            scale = torch.tensor(scale.tolist(), dtype=torch.float32)
            zp = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(self.grid_weight(), scale, zp, 0, -128, 127)
        if isinstance(scale, nn.Parameter):
            scale = lsq_gradient_scale(scale, self.weight[0].numel(), self.wqmax)
        return self._fake_quantized_weight(scale)

    def _fake_quantized_weight(self, scale):
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return fake_quantize(self.grid_weight(), scale.view(shape), 0.0, self.wqmin, self.wqmax)

    def _apply(self, fn, recurse=True):
        # `.to()`, `.cuda()`, `.double()`: the cached quantized weights are recomputed from
        # the moved weights rather than kept on the old device
        self._cached_key = None
        self.__dict__.pop("_cached_weight", None)
        return super()._apply(fn, recurse)

    def integer_weight(self) -> torch.Tensor:
        """The weights as the integers an integer kernel uses (for inspection and tests)."""
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        q = torch.round(self.grid_weight().detach() / self.weight_scale().detach().view(shape))
        return torch.clamp(q, self.wqmin, self.wqmax).to(torch.int8)


class QuantConv2d(_WeightQuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        q.weight = conv.weight
        q.bias = conv.bias
        q._init_weight_quant(bits)
        return q

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_WeightQuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.weight = linear.weight
        q.bias = linear.bias
        q._init_weight_quant(bits)
        return q

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)


QUANT_MODULES = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
