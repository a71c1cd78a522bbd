"""QRID's degradation-aware calibration: percentile ranges on a calibration set where each
image is degraded, with probability p, by one transform of quant.degradations."""
from quantdet.methods import register_method
from quantdet.methods.base import PTQMethod


@register_method
class DegradationAwareCalibration(PTQMethod):
    name = "dacal"
    observer = "percentile"
    degraded_calibration = True
    reads = ("quant.ptq.percentile", "quant.degradations")
    description = ("PTQ, percentile ranges calibrated on degraded images (QRID's "
                   "degradation-aware calibration)")
