"""Post-training quantization: calibrate activation ranges on a few batches, then freeze."""
from __future__ import annotations

import itertools

import torch

from quantdet.quant.graph import (activation_quantizers, freeze_quantizers, quantize_model,
                                  set_quant_mode)
from quantdet.quant.modules import CALIBRATE

# ptq method name -> (observer, observer kwargs read from params["quant"]["ptq"])
PTQ_METHODS = {
    "minmax": ("minmax", ()),
    "ema_minmax": ("ema_minmax", ()),
    "percentile": ("percentile", ("percentile",)),
    "mse": ("mse", ()),
    "kl": ("kl", ()),
    # QRID's degradation-aware calibration: percentile ranges on a calibration set where
    # each image is degraded with probability p (quant.degradations)
    "dacal": ("percentile", ("percentile",)),
}
DEGRADED_CALIBRATION = {"dacal"}


@torch.no_grad()
def calibrate(model, batches, num_batches: int) -> int:
    """Run up to num_batches image batches through the model in calibration mode."""
    set_quant_mode(model, CALIBRATE)
    model.eval()
    seen = 0
    for images in itertools.islice(batches, num_batches):   # never draws a batch it won't use
        model(images)
        seen += 1
    if seen == 0:
        raise ValueError("calibration needs at least one batch")
    freeze_quantizers(model)
    return seen


def post_training_quantize(model, batches, method: str, weight_bits: int, act_bits: int,
                           ptq_params: dict, layer_bits: dict[str, int] | None = None):
    """Quantize an FP32 model with the named PTQ method; returns the fake-quantized model.
    layer_bits (layer → weight bits) overrides weight_bits for the layers it names."""
    if method not in PTQ_METHODS:
        raise ValueError(f"unknown PTQ method {method!r}; known: {sorted(PTQ_METHODS)}")
    observer, keys = PTQ_METHODS[method]
    qmodel = quantize_model(model, weight_bits, act_bits, observer,
                            {k: ptq_params[k] for k in keys}, layer_bits)
    used = calibrate(qmodel, batches, ptq_params["calib_batches"])
    qmodel.quant_info.update(method=method, calibration_batches=used)
    return qmodel


def activation_ranges(model) -> list[dict]:
    """Scale and zero point of every activation quantizer (for metadata and reports)."""
    return [{"scale": float(q.scale.detach()), "zero_point": int(q.zero_point), "bits": q.bits}
            for q in activation_quantizers(model)]
