"""imagecorruptions: Hendrycks & Dietterich's 15 benchmark corruptions (mPC averages over them)
and their 4 held-out ones, at severities 1-5 (Michaelis et al., "Benchmarking Robustness in
Object Detection", 2019; the `imagecorruptions` package). Settings: ``corruptions.names``,
``corruptions.heldout``, ``corruptions.severities``."""
from __future__ import annotations

from quantdet.corruptions.corrupted_split import CORRUPTIONS, SEVERITIES, corrupt_image
from quantdet.corruptions.suites import DEFAULT, register_suite
from quantdet.corruptions.suites.base import Suite


@register_suite
class ImageCorruptions(Suite):
    name = DEFAULT
    description = "the 15 benchmark corruptions (mPC, rPC) and 4 held-out ones, severities 1-5"
    reference = "Michaelis et al. 2019 (arXiv 1907.07484); Hendrycks & Dietterich 2019 (arXiv 1903.12261)"

    def known(self) -> tuple[str, ...]:
        return CORRUPTIONS

    def conditions(self, settings: dict) -> dict[str, list[int]]:
        severities = list(settings.get("severities", SEVERITIES))
        return {c: severities for c in [*settings.get("names", []), *settings.get("heldout", [])]}

    def apply(self, pixels, corruption, severity, seed):
        return corrupt_image(pixels, corruption, severity, seed)
