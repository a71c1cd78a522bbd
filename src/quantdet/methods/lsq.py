"""LSQ (Esser et al.): step sizes of activations and per-channel weights are trained."""
from quantdet.methods import register_method
from quantdet.methods.base import QATMethod
from quantdet.quant.recipe import QATRecipe


@register_method
class LSQ(QATMethod):
    name = "lsq"
    recipe = QATRecipe("lsq", "percentile", None, True, False,
                       "learned step sizes (LSQ) for activations and per-channel weights")
    description = recipe.description
