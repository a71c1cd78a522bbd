"""FQN (Li et al., fully quantized network for object detection): BN frozen and folded,
percentile activation ranges over n calibration batches, tracked by EMA while fine-tuning."""
from quantdet.methods import register_method
from quantdet.methods.base import QATMethod
from quantdet.quant.recipe import QATRecipe


@register_method
class FQN(QATMethod):
    name = "fqn"
    recipe = QATRecipe("fqn", "percentile", "percentile", False, False,
                       "FQN: BN frozen and folded, percentile ranges (n batches, γ) tracked by EMA, "
                       "per-channel weights, every layer quantized")
    description = recipe.description
