"""What a degradation suite is (``quantdet.corruptions.suites``)."""
from __future__ import annotations

import numpy as np


class Suite:
    """A set of named degradations at graded severities.

    ``conditions(settings)`` maps each degradation the study writes to its severities, from the
    suite's settings (``corruptions.<name>``); ``check(settings, key)`` raises ParamsError
    naming the key where a setting is out of range; ``apply`` degrades one image, reproducibly
    from ``seed`` (uint8 H x W x 3 in and out, same shape). Names must not collide with another
    suite's: each is the folder ``data/corrupted/<name>``."""
    name = ""
    description = ""
    reference = ""   # where its degradations and their parameters come from

    def known(self) -> tuple[str, ...]:
        """Every degradation the suite can write."""
        raise NotImplementedError

    def severities(self, corruption: str) -> tuple[int, ...]:
        """The severities ``corruption`` can be written at."""
        return (1, 2, 3, 4, 5)

    def conditions(self, settings: dict) -> dict[str, list[int]]:
        raise NotImplementedError

    def reads(self, corruption: str) -> list[str]:
        """The settings a corrupt job of ``corruption`` reads (a change rewrites it), below
        ``corruptions``: by default the suite's whole settings (e.g. its severities)."""
        return [self.name]

    def check(self, settings: dict, key: str) -> None:
        """Refuse settings out of range (ParamsError naming ``key``.<setting>)."""

    def apply(self, pixels: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
        raise NotImplementedError
