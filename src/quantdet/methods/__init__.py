"""The method registry: one module per quantization method, each registered here.

A method declares, in one place, what the study needs to know about it:

- ``family``: the stage that makes its models (``ptq``, ``qat``, ``mimic``; ``peer`` for other
  tools' quantizers, which make an integer ONNX model from the FP32 ONNX one and are evaluated
  deployed only; ``generate`` for the zero-shot data generators, which make calibration sets);
- ``reads``: the params leaves it reads beyond its family's own (a job records only these, so
  changing another method's setting, or appending a method to the study matrix, reruns nothing
  of this one's);
- ``generated``: the generated set (``data/synthetic/<name>``) it calibrates or trains on;
  ``teacher``: whether it needs the FP32 teacher;
- its hooks into the family's driver (``quantdet.stages``): how it quantizes, calibrates or
  trains the model, and its export variants;
- ``description``: the line the report prints.

Registering follows timm's ``@register_model``: a decorator on the class and a table::

    @register_method
    class ACIQ(PTQMethod):
        name = "aciq"
        description = "..."

Every module of this package is imported on the first lookup, so a method of your own is
one new module here; a module elsewhere is named in the environment variable
``QUANTDET_METHODS`` (comma-separated module names), imported after the built-in ones.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

FAMILIES = ("ptq", "qat", "mimic", "peer", "generate")

# Params leaves every method of a family reads (its driver reads them for all of its methods).
CALIBRATION_READS = ("study.seed", "models.input_size", "train.threads",
                     "quant.ptq.calib_batches", "quant.ptq.calib_batch_size")
FAMILY_READS = {
    "ptq": CALIBRATION_READS,
    "qat": CALIBRATION_READS + ("quant.ptq.percentile", "quant.qat.ema_momentum",
                                "train.weight_decay", "train.processes", "train.workers",
                                "train.tf32"),
    "mimic": CALIBRATION_READS + ("quant.ptq.percentile", "quant.qat.ema_momentum",
                                  "train.weight_decay", "train.processes", "train.workers",
                                  "train.tf32"),
    "peer": ("models.input_size", "quant.ptq.calib_batches", "quant.ptq.calib_batch_size",
             "export.threads", "export.weight_type"),
    "generate": ("study.seed", "models.input_size", "train.threads", "train.tf32"),
}

_REGISTRY: dict[tuple[str, str], "object"] = {}

_loaded = False


def register_method(cls):
    """Class decorator: instantiate the method and add it to the table under (family, name)."""
    method = cls()
    if method.family not in FAMILIES:
        raise ValueError(f"{cls.__name__}: family {method.family!r} is not one of {FAMILIES}")
    key = (method.family, method.name)
    if key in _REGISTRY and type(_REGISTRY[key]) is not cls:
        raise ValueError(f"method {method.family}:{method.name} is registered twice")
    _REGISTRY[key] = method
    return cls


def _load_builtin() -> None:
    """Import every method module of this package, then those QUANTDET_METHODS names."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "base":
            importlib.import_module(f"quantdet.methods.{module}")
    for module in filter(None, os.environ.get("QUANTDET_METHODS", "").split(",")):
        importlib.import_module(module.strip())


def methods(family: str | None = None) -> list:
    """The registered methods (of one family), in registration order."""
    _load_builtin()
    return [m for (f, _), m in _REGISTRY.items() if family in (None, f)]


def names(family: str) -> list[str]:
    return [m.name for m in methods(family)]


def get_method(family: str, name: str):
    """The method a model name's method part stands for (``qmimic_l0p1`` is ``qmimic``'s)."""
    _load_builtin()
    if (family, name) in _REGISTRY:
        return _REGISTRY[(family, name)]
    for (f, _), method in _REGISTRY.items():
        if f == family and method.accepts(name):
            return method
    raise KeyError(f"unknown {family} method {name!r}; known: {', '.join(names(family))}")


def method_reads(family: str, name: str) -> list[str]:
    """Every params leaf a job of this method reads: its family's, then its own."""
    method = get_method(family, name)
    own = tuple(getattr(method, "training_reads", ())) + tuple(method.reads)
    return list(dict.fromkeys(FAMILY_READS[family] + own))
