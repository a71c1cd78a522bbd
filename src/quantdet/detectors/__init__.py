"""The detector registry: one module per detector family, each registered here.

A family (``detectors.base.DetectorFamily``) is the only code that knows its architecture:
how to build it from params or a user's checkpoint, its loss, the raw outputs its quantized
graph ends at and their float decoding, the layers that stay float, mimic's feature taps.
``models.<role>.detector`` names it (default ``centernet``).

Registering follows the method registry: a decorator on the class, a table, and every module
of this package imported on the first lookup, so a family of your own is one new module here
(a module elsewhere is named in ``QUANTDET_DETECTORS``, comma-separated). A family's module
imports its heavy package (ultralytics, torchvision's detection models) inside its hooks, so
listing the families loads none of them.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

DEFAULT = "centernet"

_REGISTRY: dict[str, object] = {}
_loaded = False


def register_detector(cls):
    """Class decorator: instantiate the family and add it to the table under its name."""
    family = cls()
    if not family.name:
        raise ValueError(f"{cls.__name__}: a detector family needs a name")
    if family.name in _REGISTRY and type(_REGISTRY[family.name]) is not cls:
        raise ValueError(f"detector family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return cls


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "base":
            importlib.import_module(f"quantdet.detectors.{module}")
    for module in filter(None, os.environ.get("QUANTDET_DETECTORS", "").split(",")):
        importlib.import_module(module.strip())


def families() -> list:
    _load_builtin()
    return list(_REGISTRY.values())


def names() -> list[str]:
    return [f.name for f in families()]


def get(name: str):
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown detector family {name!r}; known: {', '.join(names())}") from None


def family_name(config: dict) -> str:
    """The family of a model file's detector config (files before the registry: centernet)."""
    return config.get("family", DEFAULT)


def of(config: dict):
    """The family of a model file's detector config."""
    return get(family_name(config))


def of_params(model_params: dict):
    """The family `models.<role>` names."""
    return get(model_params.get("detector", DEFAULT))


def letterbox_of(config: dict | None):
    """The letterbox of a model file's detector config (None: quantdet's default)."""
    return of(config).letterbox if config else None


def build(config: dict, pretrained: bool = False):
    """The FP32 network a detector config describes; it carries the config (``detector_config``)
    so that quantizing, tracing and decoding it need nothing else."""
    network = of(config).build(config, pretrained=pretrained)
    network.detector_config = dict(config)
    return network


def of_model(model):
    """The family of a network (FP32 or quantized); one built outside the registry (a bare
    `models.detector.Detector`) is quantdet's first detector, the default family."""
    return of(getattr(model, "detector_config", None) or {})


def config_of(model) -> dict:
    """The detector config a network (FP32 or quantized) was built from."""
    config = getattr(model, "detector_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__}: not built by quantdet.detectors (no detector_config)")
    return config


class Decoder:
    """Raw outputs → per-image detections, for one detector config, input size and the
    evaluate.* decode settings: what evaluation, fidelity and mimic call."""

    def __init__(self, config: dict, input_size: int, **decode_params):
        self.family, self.config, self.input_size = of(config), config, input_size
        self.params = decode_params

    def __call__(self, outputs, **overrides) -> list[dict]:
        import torch

        outputs = tuple(o if isinstance(o, torch.Tensor) else torch.from_numpy(o) for o in outputs)
        return self.family.decode(outputs, self.config, self.input_size, **{**self.params, **overrides})
