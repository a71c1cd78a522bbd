"""Outlier-aware quantization (QuantDemoire, adapted to detection): a few extreme weights per
layer stay in FP16 outside the low-bit grid, and a loss penalizes the quantization error of
the activation channels with the largest values.

Weights. In every quantized convolution the `weight_fraction` largest-|w| weights (at least
one) are chosen once, after BatchNorm folding, and kept in a boolean buffer, so the choice
survives save/load and stays fixed while QAT moves the weights. The per-channel scale comes
from the remaining (dense) weights only, so the grid is not stretched by the outliers.

    y = Q_out8( conv(x, Q(W ⊙ ¬M)) + b ) + conv(x, fp16(W ⊙ M))

Q_out8 is an 8-bit quantizer on the integer convolution's output. It is there for the
deployed model: onnxruntime runs a convolution in integers only when its output goes straight
into a QuantizeLinear (DQ → Conv → Q becomes QLinearConv); an Add of the side path between the
convolution and its quantizer would turn it into a float convolution (and onnxruntime's
ConvInteger, which returns the int32 accumulator, measured 11× slower than QLinearConv here).
So the integer convolution requantizes to 8 bits, the FP16 side path is added in float, and
the layer's own (low-bit) output quantizer follows as before. Layers whose output is not
quantized (the final prediction convolutions) add the side path to their float output
directly. Training sees exactly this arithmetic.

The side path is computed sparsely: gather the input channels the outliers read (one per
outlier), a depthwise convolution whose kernels hold one outlier each (same stride, padding
and dilation), a 0/1 1×1 convolution summing them into their output channels, and a gather
that places those channels among all output channels. Its cost grows with the number of
outliers, not with the layer's size.

Activations (the error-aware loss). A channel of activation A_k is an outlier channel when its
calibrated max |A| is among the top `channel_fraction` of the tensor's channels (at least one).
The loss is λ · mean_k mean_{outlier channels} h((A_k − Q(A_k)) / s_k): the error in units of
the quantizer's step s_k, so that layers of different ranges weigh alike, through
h(e) = e² for |e| ≤ 1 and 2|e| − 1 beyond (a Huber penalty scaled to match e² inside). Rounding
errors (at most half a step) count squared; an activation clipped k steps outside the range
counts ~2k, not k²: squared, a handful of values tens of steps out made the term (and its
gradient) swing with imperceptible changes of the FP32 student. Q(A_k) is detached: the
gradient moves A_k towards the value it is quantized to (back inside the clipping range,
towards the nearest grid point), where the straight-through estimator would give none.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from quantdet.quant.modules import QUANTIZE, ActQuantizer, QuantConv2d, _exporting

OUT_BITS = 8  # the integer convolution's requantized output ahead of the float side path
SIDE_PATH_CHANNEL_BLOCK = 16  # exported side paths pad their depthwise channels to a multiple
                              # of this (onnxruntime's NCHWc block on AVX-512)


def outlier_count(numel: int, fraction: float) -> int:
    return min(numel, max(1, math.ceil(fraction * numel)))


def split_weight(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense, sparse) with dense + sparse == weight exactly: the two never overlap."""
    zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
    return torch.where(mask, zero, weight), torch.where(mask, weight, zero)


def largest_magnitude_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the `fraction` largest-|w| entries (at least one)."""
    flat = weight.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(outlier_count(flat.numel(), fraction)).indices] = True
    return mask.view_as(weight)


def _round_fp16(w: torch.Tensor) -> torch.Tensor:
    """w rounded to FP16, with the identity as gradient."""
    return w + (w.to(torch.float16).to(w.dtype) - w).detach()


def _constant(t: torch.Tensor) -> torch.Tensor:
    """A copy with no link to the model, so ONNX tracing stores it as an initializer."""
    return torch.from_numpy(t.detach().cpu().numpy().copy())


class OutlierQuantConv2d(QuantConv2d):
    """QuantConv2d whose masked outlier weights bypass the grid through a sparse FP16 side path.
    Made from a QuantConv2d by `convert`; see the module docstring for the arithmetic."""

    @classmethod
    def convert(cls, conv: QuantConv2d, quantize_output: bool, observer: str) -> "OutlierQuantConv2d":
        conv.__class__ = cls
        conv.register_buffer("outlier_mask", torch.zeros_like(conv.weight, dtype=torch.bool))
        conv.out_quant = ActQuantizer(OUT_BITS, observer) if quantize_output else None
        conv.side_path_enabled = True
        conv.keep_output_quant = False  # when the side path is disabled
        conv._index_key = None
        return conv

    def grid_weight(self) -> torch.Tensor:
        return split_weight(self.weight, self.outlier_mask)[0]

    def _apply(self, fn, recurse=True):
        self._index_key = self._index = None  # recomputed on the new device
        return super()._apply(fn, recurse)

    def outlier_weight(self) -> torch.Tensor:
        """The outliers as the deployed model holds them (FP16), zero elsewhere."""
        return _round_fp16(split_weight(self.weight, self.outlier_mask)[1])

    @torch.no_grad()
    def select_outliers(self, fraction: float) -> int:
        self.outlier_mask.copy_(largest_magnitude_mask(self.weight, fraction))
        self._cached_key = None
        return int(self.outlier_mask.sum())

    @property
    def has_outliers(self) -> bool:
        return len(self._indices()["o"]) > 0

    def forward(self, x):
        y = self._conv_forward(x, self.quantized_weight(), self.bias)
        if not self.has_outliers:
            return y
        if self.out_quant is not None and (self.side_path_enabled or self.keep_output_quant):
            y = self.out_quant(y)
        return y + self._side_path(x) if self.side_path_enabled else y

    def _indices(self):
        """Where the outliers sit, sorted by output channel (recomputed when the mask changes)."""
        key = (self.outlier_mask._version, self.outlier_mask.data_ptr())
        if self._index_key != key:
            o, i, ky, kx = self.outlier_mask.nonzero(as_tuple=True)
            order = torch.argsort(o, stable=True)
            o, i, ky, kx = o[order], i[order], ky[order], kx[order]
            group_out = self.out_channels // self.groups
            in_channel = (o // group_out) * (self.in_channels // self.groups) + i
            outs, position = torch.unique_consecutive(o, return_inverse=True)
            self._index = {"o": o, "i": i, "ky": ky, "kx": kx, "in_channel": in_channel,
                           "outs": outs, "position": position}
            self._index_key = key
        return self._index

    def _side_path(self, x):
        idx = self._indices()
        n, m = len(idx["o"]), len(idx["outs"])
        values = _round_fp16(self.weight[idx["o"], idx["i"], idx["ky"], idx["kx"]])
        dw = torch.zeros(n, 1, *self.kernel_size, dtype=values.dtype, device=values.device)
        dw = dw.index_put((torch.arange(n, device=dw.device), torch.zeros_like(idx["o"]),
                           idx["ky"], idx["kx"]), values)
        full = m < self.out_channels  # a zero row for the output channels without outliers
        mix = torch.zeros(m + full, n, 1, 1, dtype=values.dtype, device=values.device)
        mix[idx["position"], torch.arange(n, device=mix.device)] = 1.0
        in_channel, place = idx["in_channel"], None
        if full:
            place = torch.full((self.out_channels,), m, dtype=torch.long, device=dw.device)
            place[idx["outs"]] = torch.arange(m, device=dw.device)
        if _exporting():
            pad = -n % SIDE_PATH_CHANNEL_BLOCK if n >= SIDE_PATH_CHANNEL_BLOCK // 2 else 0
            if pad:
                # zero kernels reading channel 0: onnxruntime runs a depthwise convolution
                # whose channel count is a multiple of its block size in its fast NCHWc kernel
                # (else one small GEMM per channel); not worth it below half a block, where
                # the padding would cost more than it saves (OpenVINO pays for every channel)
                dw = torch.cat([dw, dw.new_zeros(pad, *dw.shape[1:])])
                mix = torch.cat([mix, mix.new_zeros(mix.shape[0], pad, 1, 1)], dim=1)
                in_channel = torch.cat([in_channel, in_channel.new_zeros(pad)])
                n += pad
            dw, mix, in_channel = _constant(dw), _constant(mix), _constant(in_channel)
            place = None if place is None else _constant(place)
        y = F.conv2d(x.index_select(1, in_channel), dw, None, self.stride, self.padding,
                     self.dilation, groups=n)
        y = F.conv2d(y, mix)
        return y if place is None else y.index_select(1, place)


def _output_quantized(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the conv's output (after its ReLU, if one follows) goes into a quantizer."""
    out = node
    if len(node.users) == 1:
        user = next(iter(node.users))
        if (user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.ReLU)) or (
                user.op == "call_function" and user.target in (F.relu, torch.relu)):
            out = user
    return bool(out.users) and all(
        u.op == "call_module" and isinstance(gm.get_submodule(u.target), ActQuantizer)
        for u in out.users)


def attach_outlier_layers(gm: fx.GraphModule, observer: str) -> int:
    """Turn every plain QuantConv2d of a quantized model into an OutlierQuantConv2d with an empty
    mask (choose the outliers with `select_outliers`, or load them with the state dict)."""
    converted = 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        if type(m) is QuantConv2d and m.padding_mode == "zeros":
            OutlierQuantConv2d.convert(m, _output_quantized(gm, node), observer)
            converted += 1
    return converted


def outlier_layers(model: nn.Module) -> list[OutlierQuantConv2d]:
    return [m for m in model.modules() if isinstance(m, OutlierQuantConv2d)]


def select_outliers(model: nn.Module, fraction: float) -> dict:
    """Choose every layer's outliers from its current (folded) weights; returns counts."""
    kept = sum(m.select_outliers(fraction) for m in outlier_layers(model))
    total = sum(m.weight.numel() for m in outlier_layers(model))
    return {"weights_kept_fp16": kept, "weights": total}


@contextmanager
def side_paths_disabled(model: nn.Module, keep_output_quant: bool = False):
    """The same model with its outlier weights dropped (for size and latency comparisons of
    the export): without the side paths, and without the 8-bit output requantization too
    unless `keep_output_quant`."""
    layers = outlier_layers(model)
    for m in layers:
        m.side_path_enabled, m.keep_output_quant = False, keep_output_quant
    try:
        yield model
    finally:
        for m in layers:
            m.side_path_enabled, m.keep_output_quant = True, False


# ------------------------------------------------------------------------- activations
def graph_quantizers(model: nn.Module) -> list[ActQuantizer]:
    """The activation quantizers placed by quantize_model (not the 8-bit output quantizers
    inside outlier-aware layers)."""
    return [m for m in model.children() if isinstance(m, ActQuantizer)]


def _channel_absmax(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().abs()
    return x.transpose(0, 1).reshape(x.shape[1], -1).amax(dim=1) if x.dim() > 1 else x.reshape(1)


@contextmanager
def record_channel_absmax(model: nn.Module):
    """While open, every observing call of a graph quantizer records its input's per-channel
    max |A|; yields {quantizer: tensor}."""
    stats: dict = {}

    def hook(module, args, kwargs, output):
        if kwargs.get("observe", True) and args[0].dim() > 1:
            a = _channel_absmax(args[0])
            stats[module] = a if module not in stats else torch.maximum(stats[module], a)

    handles = [q.register_forward_hook(hook, with_kwargs=True) for q in graph_quantizers(model)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def mark_outlier_channels(stats: dict, fraction: float) -> int:
    """Store on each quantizer the indices of its top-`fraction` channels by max |A|."""
    for q, absmax in stats.items():
        k = outlier_count(absmax.numel(), fraction)
        # a buffer, so it moves with the model (not saved: training reads it, export does not)
        q.register_buffer("outlier_channels", absmax.topk(k).indices.sort().values, persistent=False)
    return sum(len(q.outlier_channels) for q in stats)


def step_error_penalty(e: torch.Tensor) -> torch.Tensor:
    """e² within one step of the grid, 2|e| − 1 beyond (value and slope continuous at |e| = 1)."""
    a = e.abs()
    return torch.where(a <= 1, e * e, 2 * a - 1)


class QuantErrorLoss:
    """extra_loss for train.loop.fit: λ · mean_k mean(((A_k − Q(A_k)) / s_k)²) over the outlier
    channels of every graph quantizer whose input is trained. Forward hooks collect the terms;
    use as a context manager so the hooks are removed afterwards."""

    def __init__(self, model: nn.Module, weight: float):
        self.weight = weight
        self.terms: list[torch.Tensor] = []
        self.handles = [q.register_forward_hook(self._hook, with_kwargs=True)
                        for q in graph_quantizers(model) if hasattr(q, "outlier_channels")]

    def _hook(self, module, args, kwargs, output):
        x = args[0]
        if (not module.training or module.mode != QUANTIZE or not kwargs.get("observe", True)
                or not x.requires_grad):
            return
        channels = module.outlier_channels
        err = (x.index_select(1, channels) - output.detach().index_select(1, channels))
        self.terms.append(step_error_penalty(err / module.scale.detach()).mean())

    def __call__(self, model, images, targets, outputs):
        terms, self.terms = self.terms, []
        if not terms:
            zero = outputs[0].new_zeros(())
            return zero, {"quant_error": 0.0}
        value = torch.stack(terms).mean()
        return self.weight * value, {"quant_error": float(value.detach())}

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
