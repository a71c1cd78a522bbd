"""Reading the report's inputs: evaluation files (one per model and condition) and export
files (one per quantized model). Every problem is reported with the file it came from."""
from __future__ import annotations

import json
import numbers
from pathlib import Path

from quantdet.errors import QuantdetError
from quantdet.evaluation.coco_metrics import BOX_METRICS
from quantdet.study import parse_model_name


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise QuantdetError(f"{path}: report input not found")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QuantdetError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(payload, dict):
        raise QuantdetError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def _require(payload: dict, key: str, kind, path: Path, where: str = ""):
    if key not in payload:
        raise QuantdetError(f"{path}: missing key {where}{key!r}")
    value = payload[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise QuantdetError(f"{path}: {where}{key!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def read_evaluation_rows(eval_files) -> list[dict]:
    """One row per (model, condition, severity): model, runtime, condition, severity, the
    six box metrics and num_images. Two files claiming the same row are an error: one of them is stale."""
    rows, seen = [], {}
    for path in map(Path, eval_files):
        for row in _evaluation_rows(path):
            key = (row["model"], row["condition"], row["severity"])
            if key in seen:
                raise QuantdetError(f"{path}: {key} is also in {seen[key]}")
            seen[key] = path
            rows.append(row)
    if not rows:
        raise QuantdetError("the report got no evaluation files")
    return rows


def _evaluation_rows(path: Path) -> list[dict]:
    payload = read_json(path)
    model = _require(payload, "model", str, path)
    condition = _require(payload, "condition", str, path)
    try:
        name = parse_model_name(model)
    except ValueError as err:
        raise QuantdetError(f"{path}: {err}") from err
    if payload.get("runtime", name.runtime) != name.runtime:
        raise QuantdetError(f"{path}: runtime {payload['runtime']!r} contradicts model name {model!r}")
    results = _require(payload, "results", list, path)
    if payload.get("not_run") and name.precision and not results:
        return []   # a deployment precision this machine could not run (the report says why)
    if not results:
        raise QuantdetError(f"{path}: 'results' is empty")
    rows = []
    for i, result in enumerate(results):
        where = f"results[{i}]."
        if not isinstance(result, dict):
            raise QuantdetError(f"{path}: results[{i}] should be an object")
        severity = _require(result, "severity", int, path, where)
        if (condition == "clean") != (severity == 0):
            raise QuantdetError(f"{path}: {where}severity {severity} does not fit condition {condition!r} "
                                "(severity 0 is clean and only clean)")
        metrics = _require(result, "metrics", dict, path, where)
        _require(metrics, "AP", numbers.Real, path, where + "metrics.")
        for key in BOX_METRICS:
            value = metrics.get(key)
            if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
                raise QuantdetError(f"{path}: {where}metrics.{key!r} should be a number or null, got {value!r}")
        rows.append({"model": model, "runtime": name.runtime, "condition": condition, "severity": severity,
                     **{key: metrics.get(key) for key in BOX_METRICS}, "num_images": result.get("num_images")})
    return rows


def read_exports(export_files) -> dict[str, dict]:
    """Export records keyed by model name. Only 'model' is required: the rest (latency, sizes,
    agreement) is reported as far as it is there."""
    exports = {}
    for path in map(Path, export_files):
        payload = read_json(path)
        model = _require(payload, "model", str, path)
        try:
            parse_model_name(model)
        except ValueError as err:
            raise QuantdetError(f"{path}: {err}") from err
        if model in exports:
            raise QuantdetError(f"{path}: a second export record for {model!r}")
        exports[model] = payload
    return exports
