"""How numbers appear to a reader: AP in points with one decimal, rPC in percent."""
from __future__ import annotations

import math


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def ap_points(fraction) -> str:
    return "–" if _missing(fraction) else f"{100 * fraction:.1f}"


def percent(fraction) -> str:
    return "–" if _missing(fraction) else f"{100 * fraction:.1f}%"


def signed_points(points) -> str:
    return "–" if _missing(points) else f"{points:+.1f}"


def signed_percent(fraction) -> str:
    return "–" if _missing(fraction) else f"{100 * fraction:+.1f}%"


def plain(value) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[str]], align_right_from: int = 1) -> str:
    align = ["---" if i < align_right_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
