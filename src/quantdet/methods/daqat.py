"""DA-QAT (QRID): FQN fine-tuned on training batches degraded on line (quant.degradations)."""
from quantdet.methods import register_method
from quantdet.methods.base import QATMethod
from quantdet.quant.recipe import QATRecipe


@register_method
class DegradationAwareQAT(QATMethod):
    name = "daqat"
    reads = ("quant.degradations",)
    recipe = QATRecipe("daqat", "percentile", "percentile", False, True,
                       "FQN with on-line degraded training batches (DA-QAT)")
    description = recipe.description
