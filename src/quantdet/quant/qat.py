"""Quantization-aware training recipes. Each is a named way to turn a calibrated fake-quantized
model into a trainable one; the `qat` stage then fine-tunes it with the one training loop.

BatchNorm is folded before training starts, i.e. frozen at its trained statistics and then
folded, as FQN prescribes; training updates the folded convolutions.
"""
from __future__ import annotations

from quantdet.quant.graph import activation_quantizers, quantize_model
from quantdet.quant.modules import QuantConv2d, QuantLinear
from quantdet.quant.outlier import (attach_outlier_layers, mark_outlier_channels,
                                    record_channel_absmax, select_outliers)
from quantdet.quant.ptq import calibrate
from quantdet.quant.recipe import QATRecipe  # noqa: F401  (the recipes' type, re-exported)


# The recipes themselves are methods of the registry (quantdet.methods: qat, lsq, fqn, daqat,
# oaqat, ait), each declared in its own module.


def prepare_qat(model, recipe: QATRecipe, weight_bits: int, act_bits: int, calib_batches,
                num_batches: int, percentile: float, ema_momentum: float,
                outlier: dict | None = None):
    """Quantize, calibrate and make trainable; returns the model and its quantization config.

    Outlier-aware recipes need `outlier` (params quant.qat.outlier): the weight outliers are
    chosen after BatchNorm folding, before calibration, and the outlier channels of each
    activation from the calibration batches.
    """
    calib_kwargs = {"percentile": percentile} if recipe.calibration_observer == "percentile" else {}
    qmodel = quantize_model(model, weight_bits, act_bits, recipe.calibration_observer, calib_kwargs)
    outlier_config = None
    if recipe.outlier_aware:
        if outlier is None:
            raise ValueError(f"QAT recipe {recipe.name!r} needs the quant.qat.outlier params")
        attach_outlier_layers(qmodel, recipe.calibration_observer)
        counts = select_outliers(qmodel, outlier["weight_fraction"])
        with record_channel_absmax(qmodel) as channel_absmax:
            used = calibrate(qmodel, calib_batches, num_batches)
        channels = mark_outlier_channels(channel_absmax, outlier["channel_fraction"])
        outlier_config = {**{k: outlier.get(k) for k in ("weight_fraction", "channel_fraction",
                                                         "loss_weight", "max_update")},
                          **counts, "outlier_channels": channels}
    else:
        used = calibrate(qmodel, calib_batches, num_batches)
    if recipe.tracking_observer:
        track_kwargs = {"momentum": ema_momentum}
        if recipe.tracking_observer == "percentile":
            track_kwargs["percentile"] = percentile
        for q in activation_quantizers(qmodel):
            q.track_ranges(recipe.tracking_observer, **track_kwargs)
    if recipe.learnable_steps:
        make_learnable(qmodel)
    config = {"weight_bits": weight_bits, "act_bits": act_bits,
              "observer": recipe.calibration_observer, "observer_kwargs": calib_kwargs,
              "learnable_steps": recipe.learnable_steps, "calibration_batches": used}
    if outlier_config is not None:
        config["outlier"] = outlier_config
    return qmodel, config


def make_learnable(qmodel) -> None:
    for q in activation_quantizers(qmodel):
        q.make_learnable()
    for m in qmodel.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            m.make_learnable()


def stop_tracking(qmodel) -> None:
    for q in activation_quantizers(qmodel):
        q.tracking = False
