"""Report outputs go through quantdet.io_utils.atomic_path, like every stage's outputs, so a
killed report job never leaves a complete-looking file behind."""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from pathlib import Path

from quantdet.io_utils import atomic_path


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, payload) -> Path:
    # allow_nan=False: NaN is not JSON, and DVC/MLflow readers reject it
    return atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def finite_numbers(values: dict) -> dict:
    """Only the finite numbers of a dict: DVC metrics files hold numbers, nothing else."""
    return {k: int(v) if isinstance(v, numbers.Integral) else float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}
