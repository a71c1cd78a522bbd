"""What a quantized model loses where its users look: AP per object size (COCO's small, medium,
large) and recall per class at a fixed score, each against the model's own FP32 model, paired
over the same image resamples, with 95% intervals; and the guard against a collapsed model, a
deployed model whose P is below half of its FP32 model's, named at the top of the report with
the convolutions whose outputs depart most from FP32 (its export record's layer divergence).

Every figure comes from results/metrics/intervals.json (its comparisons against an FP32 model)
and the export records; nothing is recomputed here.
"""
from __future__ import annotations

import pandas as pd

from quantdet import study
from quantdet.report.answers import verdict, with_interval
from quantdet.report.formatting import markdown_table

TABLE = "results/tables/losses.csv"
SIZES = ("small", "medium", "large")
COLLAPSE = 0.5   # a deployed model below this share of its FP32 model's P has collapsed


def against_fp32(intervals: dict) -> list[dict]:
    """The comparisons of a quantized or lower-precision model with its own FP32 model, one
    per model, in the order intervals.json first holds them: where a model is compared both
    alone and pooled with its repeat seeds, the pooled comparison (the one with more seeds)."""
    records: dict[str, dict] = {}
    for record in intervals.get("comparisons", []):
        if "recall_differences" not in record or any(study.parse_model_name(t).fp32 for t in record["treatment"]):
            continue
        first = record["treatment"][0]
        if first not in records or len(record["treatment"]) > len(records[first]["treatment"]):
            records[first] = record
    return list(records.values())


def _label(record: dict) -> str:
    models = record["treatment"]
    return f"`{models[0]}`" + (f" (+{len(models) - 1} seeds)" if len(models) > 1 else "")


def loss_rows(intervals: dict) -> pd.DataFrame:
    """Long form (results/tables/losses.csv): one row per (comparison, figure): ΔAP per object
    size and Δrecall per class, as fractions with their interval ends and verdict."""
    rows = []
    for record in against_fp32(intervals):
        base = {"treatment": " ".join(record["treatment"]), "baseline": " ".join(record["baseline"]),
                "bits": record["bits"], "seeds": len(record["seeds"])}
        figures = [(f"AP_{size}", record["differences"].get(f"AP_{size}")) for size in SIZES]
        figures += [(f"recall:{c}", d) for c, d in record["recall_differences"].items()]
        for figure, d in figures:
            if d:
                rows.append({**base, "figure": figure, "difference": d["estimate"], "low": d["low"],
                             "high": d["high"], "verdict": verdict(d)})
    return pd.DataFrame(rows)


def losses_section(intervals: dict | None) -> str:
    """## What quantization loses: object sizes and classes (empty without comparisons)."""
    records = against_fp32(intervals or {})
    if not records:
        return ""
    objects = intervals.get("objects", {})
    sizes = objects.get("sizes", {})
    classes = objects.get("classes", {})
    rows = []
    for record in records:
        d, recall = record["differences"], record["recall_differences"]
        finite = {c: v for c, v in recall.items() if v and v.get("estimate") is not None}
        worst = min(finite, key=lambda c: finite[c]["estimate"]) if finite else None
        worst = worst if worst and finite[worst]["estimate"] < 0 else None   # no class lost recall
        lower = sum(verdict(v) == "lower" for v in finite.values())
        rows.append([_label(record), record["bits"],
                     *[with_interval(d.get(f"AP_{size}"), "AP", signed=True) for size in SIZES],
                     f"{worst}: {with_interval(finite[worst], 'AP', signed=True)}" if worst else "none",
                     f"{lower} of {len(finite)}"])
    counts = ", ".join(f"{size} {sizes.get(size, 0)}" for size in SIZES)
    return "\n".join([
        "## What quantization loses: object sizes and classes", "",
        "Each quantized or lower-precision model against its own FP32 model on the clean images, paired over "
        "the same image resamples (95% intervals; points): AP per COCO object size (small < 32², medium < 96², "
        f"large ≥ 96² pixels of area; ground-truth boxes: {counts}; a size without boxes has no figure), and "
        f"recall per class at IoU 0.5 of the detections scoring at least {intervals.get('recall_score')} "
        "(`statistics.recall_score`), the class whose recall fell most and how many classes lost recall "
        "measurably (interval below zero). Every class's figure: `results/tables/losses.csv`.", "",
        markdown_table(["model", "bits", "ΔAP small", "ΔAP medium", "ΔAP large", "largest recall drop",
                        "classes with lower recall"], rows, align_right_from=2),
        "", f"Ground-truth boxes per class: {', '.join(f'{c} {n}' for c, n in classes.items())}." if classes else "",
    ]).rstrip() + "\n"


def collapsed(intervals: dict | None) -> list[dict]:
    """Deployed models whose P is below half of their FP32 model's (full image set)."""
    models = (intervals or {}).get("models", {})
    out = []
    for record in against_fp32(intervals or {}):
        for treatment, baseline in zip(record["treatment"], record["baseline"]):
            if not (treatment.endswith("-ort") or treatment.endswith("-ov")):
                continue
            p, p_fp32 = ((models.get(m, {}).get("P") or {}).get("estimate") for m in (treatment, baseline))
            if p is not None and p_fp32 and p < COLLAPSE * p_fp32 and treatment not in {c["model"] for c in out}:
                out.append({"model": treatment, "fp32": baseline, "P": p, "P_fp32": p_fp32})
    return out


def collapse_section(intervals: dict | None, exports: dict[str, dict]) -> str:
    """## Collapsed models: at the top of the report, with the layers that depart most."""
    found = collapsed(intervals)
    if not found:
        return ""
    lines = ["## Collapsed models", "",
             f"These deployed models keep less than {COLLAPSE:.0%} of their FP32 model's P. The convolutions whose "
             "outputs depart most from the FP32 model's (relative L2 error on 8 validation images, matched by "
             "position in the graph; the usual cause is one tensor forced onto a scale that does not fit it, "
             "such as a head's concatenation of boxes and scores):", ""]
    for c in found:
        source = c["model"].removesuffix("-ort").removesuffix("-ov")
        divergence = (exports.get(source) or {}).get("layer_divergence") or {}
        if divergence.get("matched"):
            layers = ", ".join(f"`{r['layer']}` {r['relative_error']:.2f}" for r in divergence["largest"][:5])
            detail = f"largest departures: {layers} (median over its {divergence['convolutions']} convolutions " \
                     f"{divergence['median_relative_error']:.2f})"
        else:
            detail = f"layers not compared: {divergence.get('why', 'no layer record in its export')}"
        lines.append(f"- `{c['model']}`: P {100 * c['P']:.1f} against {100 * c['P_fp32']:.1f} for "
                     f"`{c['fp32']}`; {detail}.")
    return "\n".join(lines) + "\n"
