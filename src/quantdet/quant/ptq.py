"""Post-training quantization: calibrate activation ranges on a few batches, then freeze."""
from __future__ import annotations

import itertools

import torch

from quantdet.quant.graph import (activation_quantizers, freeze_quantizers, quantize_model,
                                  set_quant_mode)
from quantdet.quant.modules import CALIBRATE

# observer -> its settings read from params["quant"]["ptq"] (the PTQ methods themselves are
# in the method registry, quantdet.methods)
OBSERVER_PARAMS = {"percentile": ("percentile",)}


def observer_kwargs(observer: str, ptq_params: dict) -> dict:
    return {k: ptq_params[k] for k in OBSERVER_PARAMS.get(observer, ())}


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


def post_training_quantize(model, batches, observer: str, weight_bits: int, act_bits: int,
                           ptq_params: dict, layer_bits: dict[str, int] | None = None):
    """Quantize an FP32 model, activation ranges from the named observer calibrated on up to
    quant.ptq.calib_batches batches; returns the fake-quantized model. layer_bits (layer →
    weight bits) overrides weight_bits for the layers it names."""
    qmodel = quantize_model(model, weight_bits, act_bits, observer,
                            observer_kwargs(observer, ptq_params), layer_bits)
    used = calibrate(qmodel, batches, ptq_params["calib_batches"])
    qmodel.quant_info.update(calibration_batches=used)
    return qmodel


def activation_ranges(model) -> list[dict]:
    """Scale and zero point of every activation quantizer (for metadata and reports)."""
    return [{"scale": float(q.scale.detach()), "zero_point": int(q.zero_point), "bits": q.bits}
            for q in activation_quantizers(model)]
