"""Post-training quantization by an observer alone: calibrate activation ranges on the clean
calibration split with the named observer (quant.observers), then freeze them."""
from quantdet.methods import register_method
from quantdet.methods.base import PTQMethod


@register_method
class MinMax(PTQMethod):
    name = observer = "minmax"
    description = "PTQ, activation ranges from the calibration batches' min/max"


@register_method
class EMAMinMax(PTQMethod):
    name = observer = "ema_minmax"
    description = "PTQ, activation ranges from an EMA of per-batch min/max"


@register_method
class Percentile(PTQMethod):
    name = observer = "percentile"
    reads = ("quant.ptq.percentile",)
    description = "PTQ, activation ranges clipped at the γ percentile of |A| (FQN's calibration)"


@register_method
class MSE(PTQMethod):
    name = observer = "mse"
    description = "PTQ, the clipping range minimizing the quantization MSE on sampled activations"


@register_method
class KL(PTQMethod):
    name = observer = "kl"
    description = "PTQ, the clipping range minimizing the KL divergence of the histogram (TensorRT)"
