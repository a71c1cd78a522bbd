"""Corruption robustness as defined by Michaelis et al. 2019 ("Benchmarking Robustness in
Object Detection"): P on clean data, mPC averaged over corruptions x severities, rPC = mPC / P.

Performance is whatever AP the caller passes in (AP@[.5:.95] for COCO, AP50 for VOC).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def mean_performance_under_corruption(ap: Mapping[tuple[str, int], float],
                                      corruptions: Iterable[str], severities: Iterable[int]) -> float:
    """mPC: mean AP over every (corruption, severity); all of them must be there, since a
    mean over a subset is not comparable between models."""
    grid = [(c, s) for c in corruptions for s in severities]
    if not grid:
        raise ValueError("mPC needs at least one corruption and one severity")
    missing = [key for key in grid if key not in ap]
    if missing:
        raise ValueError(f"no AP for (corruption, severity) {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return sum(ap[key] for key in grid) / len(grid)


def relative_performance_under_corruption(mpc: float, p: float) -> float:
    """rPC = mPC / P; undefined (nan) for a model with zero clean AP."""
    return mpc / p if p != 0 else math.nan


def robustness_summary(clean_ap: float, ap_table: Mapping[tuple[str, int], float],
                       corruptions: Iterable[str], severities: Iterable[int]) -> dict[str, float]:
    mpc = mean_performance_under_corruption(ap_table, list(corruptions), list(severities))
    return {"P": clean_ap, "mPC": mpc, "rPC": relative_performance_under_corruption(mpc, clean_ap)}
