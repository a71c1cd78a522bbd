"""Quantization mimic (Wei et al.): the FQN-quantized student fine-tuned with the detection
loss plus a mimic term to the FP32 teacher's FPN features, on ground-truth and detected
regions. Variants (model names' method part): `alone` (no mimic term), `plain` (mimic without
quantizing the features), `qmimic` (both feature maps quantized with step distill.mimic.step);
`_l<λ>` sets λ (`qmimic_l0p1`: λ = 0.1), else distill.mimic.lambda."""
from quantdet.distill.variants import parse_variant
from quantdet.methods import register_method
from quantdet.methods.base import MimicMethod


class _Mimic(MimicMethod):
    reads = ("distill.mimic.lambda", "distill.mimic.step", "distill.mimic.roi_size",
             "distill.mimic.roi_topk", "distill.mimic.images", "distill.mimic.epochs",
             "distill.mimic.batch_size", "distill.mimic.lr", "distill.mimic.warmup_iters")

    def accepts(self, name):
        try:
            return parse_variant(name, 1.0).name.split("_l")[0] == self.name
        except ValueError:
            return False

    def describe(self, name):
        if name == self.name:
            return self.description
        return f"{self.description}, λ {parse_variant(name, 1.0).weight:g}"


@register_method
class Alone(_Mimic):
    name = "alone"
    description = "the FQN student fine-tuned alone (detection loss only): mimic's baseline"


@register_method
class PlainMimic(_Mimic):
    name = "plain"
    description = "mimic of the teacher's FPN features, without quantizing them"


@register_method
class QuantizationMimic(_Mimic):
    name = "qmimic"
    description = "quantization mimic: both feature maps quantized before the mimic loss"
