"""The degradation-suite registry: one module per suite, each registered here, like the
method and detector registries.

A suite (``suites.base.Suite``) is a set of named degradations, each at its severities, that
the study writes once as corrupted copies of val (``data/corrupted/NAME/SEVERITY``) and
evaluates every model on. ``corruptions.suites`` names the suites a study runs; a suite's
settings are ``corruptions.<suite>`` (the ``imagecorruptions`` suite keeps today's
``corruptions.names``, ``heldout`` and ``severities``). A suite of your own is one new module
here, or a module named in ``QUANTDET_SUITES`` (comma-separated). Each suite gets its own
figures: its mean AP over its conditions (``mPC_<suite>``) and that mean relative to the clean
AP (``rPC_<suite>``), each with its interval; the ``imagecorruptions`` suite's are mPC and rPC.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

DEFAULT = "imagecorruptions"   # the benchmark suite (mPC, rPC): every study runs it

_REGISTRY: dict[str, object] = {}
_loaded = False


def register_suite(cls):
    """Class decorator: instantiate the suite and add it to the table under its name."""
    suite = cls()
    if not suite.name:
        raise ValueError(f"{cls.__name__}: a degradation suite needs a name")
    if suite.name in _REGISTRY and type(_REGISTRY[suite.name]) is not cls:
        raise ValueError(f"degradation suite {suite.name!r} is registered twice")
    _REGISTRY[suite.name] = suite
    return cls


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "base":
            importlib.import_module(f"quantdet.corruptions.suites.{module}")
    for module in filter(None, os.environ.get("QUANTDET_SUITES", "").split(",")):
        importlib.import_module(module.strip())


def suites() -> list:
    """The registered suites, imagecorruptions first, then by name."""
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda s: (s.name != DEFAULT, s.name))


def names() -> list[str]:
    return [s.name for s in suites()]


def get(name: str):
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown degradation suite {name!r}; known: {', '.join(names())}") from None


def of_corruption(corruption: str):
    """The registered suite that defines the degradation ``corruption`` (None: no suite)."""
    for suite in suites():
        if corruption in suite.known():
            return suite
    return None


def study_suites(corruptions_params: dict) -> list[str]:
    """The suites a study runs (``corruptions.suites``; default: the benchmark suite alone)."""
    return list(corruptions_params.get("suites", [DEFAULT]))


def study_conditions(corruptions_params: dict) -> dict[str, dict[str, list[int]]]:
    """suite -> {corruption: severities} for the suites the study runs."""
    return {name: get(name).conditions(corruptions_params.get(name, {}) if name != DEFAULT else corruptions_params)
            for name in study_suites(corruptions_params)}
