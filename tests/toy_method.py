"""A PTQ method of a user's own, in one file: clip each activation at a fixed fraction of its
observed min/max range. Registered with quantdet's method registry when this module is imported
(QUANTDET_METHODS=tests.toy_method); tests/test_extend_study.py runs it through the smoke study."""
from quantdet.methods import register_method
from quantdet.methods.base import PTQMethod


def register_shrunk_minmax() -> None:
    from quantdet.quant.observers import OBSERVERS, MinMaxObserver, register_observer

    if "toy_shrunk_minmax" in OBSERVERS:
        return

    @register_observer("toy_shrunk_minmax")
    class ShrunkMinMax(MinMaxObserver):
        def _range(self):
            return 0.9 * self.lo, 0.9 * self.hi


@register_method
class ToyShrunkMinMax(PTQMethod):
    name = observer = "toy_shrunk_minmax"
    description = "toy: min/max ranges shrunk by 10% (a user's method, tests/toy_method.py)"

    def register_observers(self):
        register_shrunk_minmax()
