"""Plain quantization-aware training: straight-through fake quantization, activation ranges
from min/max, tracked by EMA during fine-tuning."""
from quantdet.methods import register_method
from quantdet.methods.base import QATMethod
from quantdet.quant.recipe import QATRecipe


@register_method
class PlainQAT(QATMethod):
    name = "qat"
    recipe = QATRecipe("qat", "minmax", "ema_minmax", False, False,
                       "STE fake quantization; activation ranges from min/max, tracked by EMA")
    description = recipe.description
