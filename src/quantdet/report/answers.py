"""The study's answers, each with its 95% interval (results/metrics/intervals.json).

The wording rule: a comparison states a direction ("higher", "lower") only when its interval
excludes zero; otherwise it says "no measurable difference", with the interval, whatever the
sign of the estimate."""
from __future__ import annotations

import math

import pandas as pd

from quantdet.report.formatting import markdown_table

NO_DIFFERENCE = "no measurable difference"
GROUP_TITLES = {"qrid": "Degradation-aware methods against their clean-data baselines",
                "zeroshot": "Zero-shot against real calibration data",
                "mimic": "Mimic distillation",
                "teacher": "Teacher against student"}


def verdict(difference: dict) -> str:
    """'higher' or 'lower' when the interval excludes zero, else 'no measurable difference'."""
    low, high = difference.get("low"), difference.get("high")
    if low is None or high is None or any(map(math.isnan, (low, high))):
        return "not measured"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return NO_DIFFERENCE


def _scale(metric: str) -> float:
    return 100.0  # AP and rPC fractions as points / percentage points


def with_interval(value: dict, metric: str, signed: bool = False) -> str:
    """`12.3 [10.1, 14.0]` (AP points; rPC in percent)."""
    if not value or value.get("estimate") is None:
        return "–"
    s = _scale(metric)
    fmt = "{:+.1f}" if signed else "{:.1f}"
    unit = "%" if metric.startswith("rPC") and not signed else ""
    return (f"{fmt.format(s * value['estimate'])}{unit} "
            f"[{fmt.format(s * value['low'])}, {fmt.format(s * value['high'])}]")


def difference_phrase(differences: dict, metric: str) -> str:
    d = differences.get(metric)
    if not d:
        return ""
    unit = "percentage points" if metric == "rPC" else "points"
    return f"Δ{metric} {with_interval(d, metric, signed=True)} {unit}: {verdict(d)}"


def _seeds(record: dict) -> str:
    seeds = record["seeds"]
    if len(seeds) == 1:
        return "one seed: images only"
    return f"seeds {', '.join(map(str, seeds))}: images and seed-to-seed spread"


def comparison_answers(intervals: dict) -> list[str]:
    """One sentence per method comparison (QRID, zero-shot, mimic, teacher), per bit width."""
    lines = []
    for record in intervals.get("comparisons", []):
        if record["group"] not in GROUP_TITLES:
            continue
        d = record["differences"]
        parts = [difference_phrase(d, m) for m in ("mPC", "rPC", "P")]
        label = record["comparison"][0].upper() + record["comparison"][1:]
        lines.append(f"**{label} at {record['bits']}** ({_seeds(record)}): "
                     + "; ".join(p for p in parts if p) + ".")
    return lines


def quantization_answers(intervals: dict) -> list[str]:
    """Does quantization amplify the loss under corruption? rPC of each quantized model (in the
    analysed runtime) against its FP32 source, per bit width."""
    by_bits: dict[str, dict[str, list[str]]] = {}
    for record in intervals.get("comparisons", []):
        if record["group"] != "fp32" or record.get("twin"):   # a deployed twin of a simulated model
            continue
        d = record["differences"].get("rPC")
        if not d:
            continue
        method = record["comparison"].removesuffix(" vs FP32")
        by_bits.setdefault(record["bits"], {}).setdefault(verdict(d), []).append(
            f"`{method}` {with_interval(d, 'rPC', signed=True)}")
    lines = []
    for bits, groups in by_bits.items():
        counts = ", ".join(f"{kind} for {len(items)}" for kind, items in
                           sorted(groups.items(), key=lambda kv: ("lower", "higher", NO_DIFFERENCE).index(kv[0])
                                  if kv[0] in ("lower", "higher", NO_DIFFERENCE) else 3))
        detail = "; ".join(item for items in groups.values() for item in items)
        lines.append(f"**Does {bits} quantization amplify the loss under corruption?** rPC against the FP32 "
                     f"student, beyond its 95% interval: {counts} (ΔrPC in percentage points: {detail}).")
    return lines


def peer_answers(intervals: dict) -> list[str]:
    """Does any quantdet method beat the best peer (another tool's quantizer) at a bit width,
    on P, mPC and rPC, beyond the interval? (deployed against deployed)"""
    by_bits: dict[str, list[dict]] = {}
    for record in intervals.get("comparisons", []):
        if record["group"] == "peer":
            by_bits.setdefault(record["bits"], []).append(record)
    lines = []
    for bits, records in by_bits.items():
        best = records[0]["baseline"][0]
        parts = []
        for metric in ("P", "mPC", "rPC"):
            better = [r["treatment"][0] for r in records if verdict(r["differences"].get(metric, {})) == "higher"]
            worse = [r["treatment"][0] for r in records if verdict(r["differences"].get(metric, {})) == "lower"]
            parts.append(f"on {metric}, higher for {', '.join(f'`{m}`' for m in better) or 'none'}, lower for "
                         f"{len(worse)}, no measurable difference for {len(records) - len(better) - len(worse)}")
        lines.append(f"**Does a quantdet method beat the best peer at {bits}?** Against `{best}` (the peer "
                     f"with the highest P), of our {len(records)} deployed models: " + "; ".join(parts) + ".")
    return lines


def _agreement(intervals: dict, group: str, opening: str) -> str:
    """How many of a group's model pairs show no measurable difference in P and mPC, and the
    ones that do, with their differences."""
    records = [r for r in intervals.get("comparisons", []) if r["group"] == group]
    if not records:
        return ""
    differ = [r for r in records if verdict(r["differences"].get("P", {})) != NO_DIFFERENCE
              or verdict(r["differences"].get("mPC", {})) != NO_DIFFERENCE]
    text = opening.format(n=len(records), same=len(records) - len(differ))
    if differ:
        text += "; measurably different: " + "; ".join(
            f"`{r['treatment'][0]}` {difference_phrase(r['differences'], 'P')}, "
            f"{difference_phrase(r['differences'], 'mPC')}" for r in differ)
    return text + "."


def deployment_answer(intervals: dict) -> str:
    """Deployed (onnxruntime) against simulated (PyTorch): where they measurably differ."""
    return _agreement(intervals, "deployed", "**Deployed against simulated**: of {n} exported models, {same} show "
                      "no measurable difference in P and mPC between onnxruntime and PyTorch")


def runtime_answer(intervals: dict) -> str:
    """The same integer ONNX model in OpenVINO against onnxruntime: where they measurably differ."""
    return _agreement(intervals, "runtime", "**OpenVINO against onnxruntime** (the same ONNX files, OpenVINO at "
                      "f32 precision): of {n} models, {same} show no measurable difference in P and mPC")


def answers(intervals: dict) -> list[str]:
    return [*quantization_answers(intervals), *peer_answers(intervals), *comparison_answers(intervals),
            deployment_answer(intervals), runtime_answer(intervals)]


def interval_columns(intervals: dict) -> pd.DataFrame:
    """Per model: the low and high ends of P, mPC, rPC and held-out mPC (fractions)."""
    rows = []
    for model, figures in intervals.get("models", {}).items():
        row = {"model": model}
        for name, column in (("P", "P"), ("mPC", "mPC"), ("rPC", "rPC"), ("mPC_heldout", "mPC_heldout")):
            value = figures.get(name) or {}
            row[f"{column}_low"], row[f"{column}_high"] = value.get("low"), value.get("high")
        rows.append(row)
    return pd.DataFrame(rows)


def models_table(robustness: pd.DataFrame, intervals: dict) -> str:
    """Every model's P, mPC, rPC and held-out mPC with their 95% intervals."""
    figures = intervals.get("models", {})
    rows = []
    for r in robustness.itertuples():
        f = figures.get(r.model, {})
        rows.append([f"`{r.model}`", r.bits, r.runtime, with_interval(f.get("P"), "P"),
                     with_interval(f.get("mPC"), "mPC"), with_interval(f.get("rPC"), "rPC"),
                     with_interval(f.get("mPC_heldout"), "mPC")])
    return markdown_table(["model", "bits", "runtime", "P", "mPC", "rPC", "mPC held-out"], rows,
                          align_right_from=3)


def method_note(intervals: dict) -> str:
    return (f"Intervals: {100 * intervals['level']:.0f}% basic bootstrap intervals from {intervals['resamples']} "
            f"resamples of the {intervals['num_images']} val images, the same resample for every model and every "
            "corrupted copy of an image (paired); a comparison over repeat seeds adds the seed-to-seed spread. "
            "A direction is stated only where the interval excludes zero.")
