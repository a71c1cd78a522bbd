"""Mimic variant names (no torch: the report parses them too): `alone`, `plain`, `qmimic`,
optionally `_l{λ}` with `p` for the decimal point (`qmimic_l0p1` is λ = 0.1)."""
from __future__ import annotations

import re
from dataclasses import dataclass

_VARIANT = re.compile(r"^(?:alone|(?P<kind>plain|qmimic)(?:_l(?P<whole>\d+)(?:p(?P<frac>\d+))?)?)$")


@dataclass(frozen=True)
class MimicVariant:
    name: str
    mimic: bool              # a mimic term at all
    quantized: bool          # Q on both feature maps
    weight: float            # λ

    def describe(self) -> str:
        if not self.mimic:
            return "student trained alone (detection loss only)"
        kind = "quantization mimic" if self.quantized else "mimic without quantization"
        return f"{kind}, lambda {self.weight:g}"


def parse_variant(name: str, default_weight: float) -> MimicVariant:
    m = _VARIANT.match(name)
    if m is None:
        raise ValueError(f"not a mimic variant: {name!r} (alone, plain, qmimic, optionally _l<λ> "
                         "with p for the decimal point, e.g. qmimic_l0p1)")
    weight = default_weight
    if m["whole"] is not None:
        weight = float(f"{m['whole']}.{m['frac'] or 0}")
    return MimicVariant(name, m["kind"] is not None, m["kind"] == "qmimic", weight)
