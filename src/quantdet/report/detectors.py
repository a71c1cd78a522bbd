"""The detector axis: the study's detectors side by side (models.student and each of
models.students), each quantized model against its own FP32 detector.

Every figure comes from results/metrics/intervals.json (group "detector" of its comparisons:
quantdet.evaluation.intervals.detector_pairs) and the export records; nothing here is
recomputed. Per detector: FP32 P, mPC, rPC with 95% intervals; each method's P, mPC, rPC and
its ΔmPC and ΔrPC against its own FP32 model (QRID's question, "does INT8 lower rPC?", is the
ΔrPC at W8A8); its integer export's speed-up over FP32 in each runtime beside the peers'.
"""
from __future__ import annotations

import statistics

import pandas as pd

from quantdet import study
from quantdet.report.answers import NO_DIFFERENCE, verdict, with_interval
from quantdet.report.deployment import RUNTIME_NAMES
from quantdet.report.formatting import markdown_table

TABLE = "results/tables/detectors.csv"


def _records(intervals: dict, detector: str) -> list[dict]:
    return [r for r in intervals.get("comparisons", [])
            if r["group"] == "detector" and r.get("detector") == detector and r["bits"] != "fp32"]


def _fp32_record(intervals: dict, detector: str) -> dict | None:
    return next((r for r in intervals.get("comparisons", []) if r["group"] == "detector"
                 and r.get("detector") == detector and r["bits"] == "fp32"), None)


def detector_rows(params: dict, intervals: dict) -> pd.DataFrame:
    """One row per (detector, model): its figures and the differences against its own FP32
    model, as fractions with 95% interval ends (results/tables/detectors.csv)."""
    figures = intervals.get("models", {})
    rows = []
    for role in study.students(params):
        fp32 = f"{role}-fp32"
        entries = [(fp32, None)] + [(r["treatment"][0], r) for r in _records(intervals, role)]
        for model, record in entries:
            if model not in figures:
                continue
            name = study.parse_model_name(model)
            row = {"detector": role, "model": model, "bits": name.bits_label, "stage": name.stage,
                   "method": name.method or "fp32", "runtime": name.runtime}
            for metric in ("P", "mPC", "rPC"):
                value = figures[model].get(metric) or {}
                row.update({metric: value.get("estimate"), f"{metric}_low": value.get("low"),
                            f"{metric}_high": value.get("high")})
            for metric in ("P", "mPC", "rPC"):
                d = (record or {}).get("differences", {}).get(metric) or {}
                row.update({f"d{metric}": d.get("estimate"), f"d{metric}_low": d.get("low"),
                            f"d{metric}_high": d.get("high")})
            rows.append(row)
    return pd.DataFrame(rows)


def _speedups(exports: dict[str, dict], role: str, bits: str) -> dict[str, dict[str, list[float]]]:
    """runtime -> {"ours": [...], "<peer>": [...]}: speed-ups over FP32 of a detector's integer
    exports at a bit width (ours: plain exports, one graph whatever the method)."""
    found: dict[str, dict[str, list[float]]] = {}
    for model, export in exports.items():
        name = study.parse_model_name(model)
        if name.role != role or name.bits_label != bits or name.seed is not None:
            continue
        if export.get("outlier_side_paths"):
            continue
        who = name.method if name.stage == "peer" else "ours"
        for runtime, value in (export.get("speedup_by_runtime") or {}).items():
            found.setdefault(runtime, {}).setdefault(who, []).append(value)
    return found


def _speed_sentence(exports: dict[str, dict], role: str, bits: str) -> str:
    by_runtime = _speedups(exports, role, bits)
    parts = []
    for runtime in sorted(by_runtime, key=lambda r: (r != "onnxruntime", r)):
        tools = by_runtime[runtime]
        ours = sorted(tools.get("ours", []))
        if not ours:
            continue
        text = (f"{RUNTIME_NAMES.get(runtime, runtime)} {statistics.median(ours):.2f}× FP32 "
                f"({len(ours)} export{'s' if len(ours) > 1 else ''}"
                + (f", {ours[0]:.2f}× to {ours[-1]:.2f}×" if len(ours) > 1 else "") + ")")
        peers = [f"`{p}` {statistics.median(v):.2f}×" for p, v in sorted(tools.items()) if p != "ours"]
        parts.append(text + ("; peer " + ", ".join(peers) if peers else ""))
    return "; ".join(parts)


def _best(intervals: dict, role: str, bits: str) -> str:
    """A detector's quantdet model (peers aside) with the highest mPC at a bit width."""
    figures = intervals.get("models", {})
    ours = [r["treatment"][0] for r in _records(intervals, role)
            if r["bits"] == bits and study.parse_model_name(r["treatment"][0]).stage != "peer"]
    if not ours:
        return "–"
    best = max(ours, key=lambda m: (figures[m].get("mPC") or {}).get("estimate", -1))
    name = study.parse_model_name(best)
    return (f"{name.stage} {name.method}: P {with_interval(figures[best].get('P'), 'P')}, "
            f"mPC {with_interval(figures[best].get('mPC'), 'mPC')}")


def _median_speedup(exports: dict[str, dict], role: str, bits: str, runtime: str, who: str = "ours") -> str:
    values = _speedups(exports, role, bits).get(runtime, {}).get(who)
    return f"{statistics.median(values):.2f}×" if values else "–"


def summary_table(params: dict, intervals: dict, exports: dict[str, dict]) -> str:
    """Per detector: FP32 P and mPC, the best W8A8 and W4A4 method (by mPC) with intervals, and
    the W8A8 integer export's speed-up over FP32 in onnxruntime and OpenVINO beside NNCF's
    model of the same detector (median over our plain exports, each timed beside its FP32)."""
    figures = intervals.get("models", {})
    bits = [f"W{b}A{b}" for b in (8, 4)]
    rows = []
    for role in study.students(params):
        f = figures.get(f"{role}-fp32", {})
        rows.append([f"`{role}`", with_interval(f.get("P"), "P"), with_interval(f.get("mPC"), "mPC"),
                     *(_best(intervals, role, b) for b in bits),
                     *(f"{_median_speedup(exports, role, 'W8A8', rt)} (NNCF {_median_speedup(exports, role, 'W8A8', rt, 'nncf')})"
                       for rt in ("onnxruntime", "openvino"))])
    return markdown_table(["detector", "FP32 P", "FP32 mPC", "best W8A8 (by mPC)", "best W4A4 (by mPC)",
                           "W8A8 speed-up, onnxruntime", "W8A8 speed-up, OpenVINO"], rows, align_right_from=1)


def scale_answers(intervals: dict) -> list[str]:
    """QRID's "the smaller model loses more", per pair of scales of one architecture (group
    "scale" of intervals.json): per quantization, the smaller detector's loss against its own
    FP32 model minus the larger one's, in P, mPC and rPC, with its interval; then how many
    quantizations say more, less or no measurable difference."""
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for record in intervals.get("comparisons", []):
        if record["group"] == "scale":
            by_pair.setdefault((record["smaller"], record["larger"]), []).append(record)
    lines = []
    for (small, large), records in by_pair.items():
        archs = records[0].get("archs") or ["", ""]
        items, tally = [], {m: {"more": 0, "less": 0, NO_DIFFERENCE: 0} for m in ("P", "mPC", "rPC")}
        for r in records:
            parts = []
            for metric in ("P", "mPC", "rPC"):
                d = r["differences"].get(metric)
                if not d:
                    continue
                says = {"higher": "more", "lower": "less"}.get(verdict(d), NO_DIFFERENCE)
                tally[metric][says] += 1
                parts.append(f"{metric} {with_interval(d, metric, signed=True)}")
            items.append(f"`{r['method']}` {r['bits']}: " + ", ".join(parts))
        counts = "; ".join(f"{metric}: more for {t['more']}, less for {t['less']}, no measurable difference for "
                           f"{t[NO_DIFFERENCE]}" for metric, t in tally.items() if sum(t.values()))
        lines.append(f"**Does the smaller model lose more (QRID)? `{small}` ({archs[0]}) against `{large}` ({archs[1]}).** "
                     f"Each quantization "
                     f"both have, the smaller detector's loss against its own FP32 model minus the larger one's (AP "
                     f"points, rPC in percentage points; positive: the smaller loses more), paired over the same image "
                     f"resamples. Of {len(records)}: {counts}. " + "; ".join(items) + ".")
    return lines


def detectors_section(params: dict, intervals: dict | None, exports: dict[str, dict]) -> str:
    """## Detectors side by side: empty where the study has one student detector."""
    roles = study.students(params)
    if len(roles) < 2 or not intervals:
        return ""
    from quantdet.report.markdown import _detector

    figures = intervals.get("models", {})
    lines = ["## Detectors side by side", "",
             "The study's detectors (`models.student` and `models.students`), each trained here (or imported) "
             "on the same data and measured on the same images and corrupted copies. Each quantized model is "
             "compared with its own FP32 detector, paired over the same image resamples; a difference is "
             "stated as higher or lower only where its 95% interval excludes zero. AP points; rPC and ΔrPC in "
             "percent / percentage points.", ""]
    rows = []
    for role in roles:
        model = f"{role}-fp32"
        f = figures.get(model, {})
        versus = _fp32_record(intervals, role)
        diff = "–" if versus is None else "; ".join(
            f"Δ{m} {with_interval(versus['differences'].get(m), m, signed=True)}" for m in ("P", "mPC"))
        rows.append([f"`{role}` (`{model}`)", _detector(study.model_params(params, role)),
                     with_interval(f.get("P"), "P"), with_interval(f.get("mPC"), "mPC"),
                     with_interval(f.get("rPC"), "rPC"), diff])
    lines += ["FP32 detectors:", "",
              markdown_table(["detector", "network", "P", "mPC", "rPC", "against `student-fp32`"], rows,
                             align_right_from=2), "",
              "Each detector's best quantized model and its integer speed-up over its own FP32 ONNX model "
              "(W8A8, the median over our exports of the detector, each timed beside its FP32 source; NNCF: the "
              "peer's model of the same detector, where the study runs it):", "",
              summary_table(params, intervals, exports), ""]
    rows, answers = [], []
    for role in roles:
        records = _records(intervals, role)
        for r in records:
            model = r["treatment"][0]
            f, d = figures.get(model, {}), r["differences"]
            rows.append([f"`{role}`", f"`{model}`", r["bits"], with_interval(f.get("P"), "P"),
                         with_interval(f.get("mPC"), "mPC"), with_interval(f.get("rPC"), "rPC"),
                         with_interval(d.get("mPC"), "mPC", signed=True),
                         with_interval(d.get("rPC"), "rPC", signed=True), verdict(d.get("rPC") or {})])
        for bits in dict.fromkeys(r["bits"] for r in records):
            at = [r for r in records if r["bits"] == bits]
            counts = {k: [r for r in at if verdict(r["differences"].get("rPC") or {}) == k]
                      for k in ("lower", "higher", NO_DIFFERENCE)}
            best = max(at, key=lambda r: (figures.get(r["treatment"][0], {}).get("mPC") or {}).get("estimate", -1))
            text = (f"**`{role}` at {bits}: does quantization lower rPC?** Of {len(at)} quantized models: lower for "
                    f"{len(counts['lower'])}, higher for {len(counts['higher'])}, no measurable difference for "
                    f"{len(counts[NO_DIFFERENCE])}. Highest mPC: `{best['treatment'][0]}` "
                    f"{with_interval(figures.get(best['treatment'][0], {}).get('mPC'), 'mPC')} "
                    f"(ΔmPC against its FP32 {with_interval(best['differences'].get('mPC'), 'mPC', signed=True)}).")
            speed = _speed_sentence(exports, role, bits)
            if speed:
                text += f" Integer speed-up over FP32: {speed}."
            answers.append(text)
    answers += scale_answers(intervals)
    lines += [f"- {a}" for a in answers] + ["", "Every quantized model against its own FP32 detector:", "",
                                            markdown_table(["detector", "model", "bits", "P", "mPC", "rPC", "ΔmPC",
                                                            "ΔrPC", "ΔrPC says"], rows, align_right_from=3)]
    evaluated = [m for m in study.evaluated_models(params) if study.parse_model_name(m).role in roles[1:]]
    lines += ["", f"Evaluated models of the detectors beside the student ({len(evaluated)}; the student's are in "
              "\"What this study is\"): " + ", ".join(f"`{m}`" for m in evaluated) + "."]
    return "\n".join(lines)
