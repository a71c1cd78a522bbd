"""Does a second run of a study reproduce the first? `quantdet reproduce --root A --against B`
compares two finished study folders number by number: every figure and comparison with its
interval (results/metrics/intervals.json), every model's metrics on every condition
(results/eval/*/*/metrics.json), the DVC metrics (results/metrics/), each export's agreement
with its simulation and its size (results/models/*.export.json), the training histories
(results/models/*.train.json) and the prepared data's summary (data/prepared/summary.json).

Timing is left out (latency, speed-up, seconds, wall time: the machine's noise, not the
study's); so are strings (paths, commits). Every other number must be equal, exactly: the
study is seeded and single-threaded where it computes, so a difference is a reproducibility
bug, not noise. With --into PAGE (e.g. docs/results.md), the result is written into that page's
`reproduced` block."""
from __future__ import annotations

import math
import re
from pathlib import Path

from quantdet import study
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_path, read_json

# Keys whose numbers are timings (or depend on them): not compared.
TIMING = re.compile(r"latency|speedup|seconds|wall|duration|elapsed|throughput|per_s\b|_ms\b|time",
                    re.IGNORECASE)
BLOCK = "reproduced"


def compared_files(root: Path) -> list[Path]:
    """The JSON files of a study whose numbers a rerun must reproduce (relative paths)."""
    patterns = [study.INTERVALS, "results/metrics/*.json", f"{study.EVAL}/*/*/metrics.json",
                "results/models/*.json",
                "data/prepared/summary.json"]
    found = set()
    for pattern in patterns:
        found.update(p.relative_to(root) for p in root.glob(pattern) if p.is_file())
    return sorted(found)


def numbers(value, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a JSON value, keyed by their path, timing keys left out."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if TIMING.search(str(key)):
                continue
            out.update(numbers(item, f"{prefix}/{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.update(numbers(item, f"{prefix}[{i}]"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


def _equal(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def compare_studies(root: str | Path, against: str | Path) -> dict:
    """Number-by-number comparison of two finished study folders."""
    root, against = Path(root), Path(against)
    for folder in (root, against):
        if not (folder / study.INTERVALS).is_file():
            raise QuantdetError(f"{folder / study.INTERVALS}: not found (is the study in {folder} finished?)")
    files_a, files_b = compared_files(root), compared_files(against)
    only_a = sorted(set(files_a) - set(files_b))
    only_b = sorted(set(files_b) - set(files_a))
    compared = identical = 0
    differences = []
    missing = []
    files = sorted(set(files_a) & set(files_b))
    for rel in files:
        a, b = numbers(read_json(root / rel)), numbers(read_json(against / rel))
        missing += [f"{rel}:{key}" for key in sorted(set(a) ^ set(b))]
        for key in sorted(set(a) & set(b)):
            compared += 1
            if _equal(a[key], b[key]):
                identical += 1
            else:
                differences.append({"file": str(rel), "key": key, "a": a[key], "b": b[key],
                                    "abs": abs(a[key] - b[key])})
    differences.sort(key=lambda d: -d["abs"] if math.isfinite(d["abs"]) else -math.inf)
    return {"root": str(root), "against": str(against), "files": len(files), "numbers": compared,
            "identical": identical, "differences": differences, "only_in_root": [str(p) for p in only_a],
            "only_in_against": [str(p) for p in only_b], "keys_missing": missing,
            "commits": [_commit(root), _commit(against)]}


def reproduced(result: dict) -> bool:
    return not (result["differences"] or result["only_in_root"] or result["only_in_against"]
                or result["keys_missing"])


def _commit(root: Path) -> str | None:
    env = root / "results" / "environment.json"
    if not env.is_file():
        return None
    source = ((read_json(env).get("runtime") or {}).get("source")) or {}
    return (source.get("commit") or "")[:7] + (" (with uncommitted changes)" if source.get("dirty") else "") or None


def reproduce_markdown(result: dict, show: int = 10) -> str:
    a, b = result["commits"]
    head = (f"Two runs of the study, `{Path(result['root']).name}` (commit `{a}`) and "
            f"`{Path(result['against']).name}` (commit `{b}`), compared number by number "
            f"(`quantdet reproduce`; timings left out): {result['numbers']} numbers in "
            f"{result['files']} files (every figure and comparison with its interval, every "
            "model's metrics on every condition, exports' agreement and sizes, training "
            "histories, the prepared data's summary)")
    if reproduced(result):
        return head + f": **all {result['numbers']} identical**."
    lines = [head + f": {result['identical']} identical, **{len(result['differences'])} differ**."]
    for d in result["differences"][:show]:
        lines.append(f"- `{d['file']}` `{d['key']}`: {d['a']:.6g} vs {d['b']:.6g}")
    for label, items in (("only in the first", result["only_in_root"]),
                         ("only in the second", result["only_in_against"]),
                         ("keys in one only", result["keys_missing"])):
        if items:
            lines.append(f"- {len(items)} {label}: " + ", ".join(f"`{i}`" for i in items[:show]))
    return "\n".join(lines)


def write_reproduce(root, against, into: str | Path | None = None) -> dict:
    from quantdet.report.measured import markers, read_page, replace_block

    result = compare_studies(root, against)
    text = reproduce_markdown(result)
    begin, end = markers(BLOCK)
    result["markdown"] = (f"{begin}\n<!-- generated by `quantdet reproduce --root <study folder> --against "
                          f"<second study folder> --into docs/results.md`: do not edit by hand -->\n\n"
                          f"{text}\n\n{end}")
    if into is not None:
        path = Path(into)
        new = replace_block(read_page(path), result["markdown"], BLOCK, source=str(path))
        with atomic_path(path) as tmp:
            Path(tmp).write_text(new)
    return result
