"""Deployment precisions (matrix.precisions) beside static INT8, in QRID's shape: rows
detectors, columns precisions, P / mPC / rPC each with its 95% interval; then each
precision against its own FP32 model (paired, group "precision" of intervals.json), what the
runtime ran, and its latency against FP32 in the same runtime.

Every figure comes from results/metrics/intervals.json and the precision jobs' records
(results/models/*.precision.json); nothing is recomputed here.
"""
from __future__ import annotations

import pandas as pd

from quantdet import study
from quantdet.report.answers import verdict, with_interval
from quantdet.report.formatting import markdown_table

TABLE = "results/tables/precisions.csv"
RUNTIME_LABELS = {"onnxruntime": "onnxruntime", "openvino": "OpenVINO", "torch": "PyTorch"}


def static_int8(params: dict, role: str, figures: dict) -> str | None:
    """The detector's static INT8 model in QRID's column: W8A8 min/max PTQ deployed in
    onnxruntime where the study runs it, else its first W8A8 PTQ method deployed."""
    methods = study.role_matrix(params, role)["ptq"]
    for method in (["minmax"] if "minmax" in methods else []) + list(methods):
        model = study.quantized_model_name(role, "ptq", method, 8, 8) + study.ORT_SUFFIX
        if model in figures:
            return model
    return None


def columns(params: dict, role: str, figures: dict) -> list[tuple[str, str]]:
    """(header, model) of a detector's row: FP32, each precision in each runtime, static INT8."""
    from quantdet.export.precision import label

    cols = [("FP32", f"{role}-fp32")]
    for precision, runtimes in (study.role_matrix(params, role).get("precisions") or {}).items():
        for runtime in runtimes or []:
            model = study.ModelName(role, study.PRECISION, precision, None, None, runtime).name
            cols.append((f"{label(precision)} ({RUNTIME_LABELS[runtime]})", model))
    static = static_int8(params, role, figures)
    if static:
        cols.append((f"INT8 static ({study.parse_model_name(static).method}, onnxruntime)", static))
    return cols


def _versus_fp32(intervals: dict, model: str, fp32: str) -> dict:
    """The paired difference of a model against its FP32 model, from any comparison group."""
    for record in intervals.get("comparisons", []):
        if record["treatment"] == [model] and record["baseline"] == [fp32]:
            return record["differences"]
    return {}


def _latency(model: str, records: dict[str, dict], exports: dict[str, dict]) -> tuple:
    """(runtime, ms, FP32 ms, speed-up over FP32 in that runtime) of a deployed model."""
    name = study.parse_model_name(model)
    if name.precision:
        r = records.get(model) or {}
        ms = r.get("latency_ms") or {}
        return name.runtime, ms.get(name.method), ms.get("fp32"), r.get("speedup_vs_fp32")
    export = exports.get(name.model) or {}
    ms = (export.get("latency_by_runtime") or {}).get("onnxruntime") or {}
    return "onnxruntime", ms.get("int8_onnx"), ms.get("fp32_onnx"), (export.get("speedup_by_runtime") or {}).get("onnxruntime")


def precision_rows(params: dict, intervals: dict, records: dict[str, dict], exports: dict[str, dict]) -> pd.DataFrame:
    """One row per (detector, column): figures and differences against FP32 as fractions with
    their interval ends, latency and what ran (results/tables/precisions.csv)."""
    figures = intervals.get("models", {})
    rows = []
    for role in study.students(params):
        fp32 = f"{role}-fp32"
        for header, model in columns(params, role, figures):
            if model not in figures:
                continue
            row = {"detector": role, "column": header, "model": model}
            for metric in ("P", "mPC", "rPC"):
                v = figures[model].get(metric) or {}
                row.update({metric: v.get("estimate"), f"{metric}_low": v.get("low"), f"{metric}_high": v.get("high")})
            d = _versus_fp32(intervals, model, fp32) if model != fp32 else {}
            for metric in ("P", "mPC", "rPC"):
                v = d.get(metric) or {}
                row.update({f"d{metric}": v.get("estimate"), f"d{metric}_low": v.get("low"),
                            f"d{metric}_high": v.get("high")})
            if model != fp32:
                runtime, ms, fp32_ms, speedup = _latency(model, records, exports)
                executed = (records.get(model) or {}).get("executed") or {}
                row.update({"runtime": runtime, "latency_ms": ms, "fp32_latency_ms": fp32_ms, "speedup": speedup,
                            "convolutions_by_precision": executed.get("convolutions_by_precision")})
            rows.append(row)
    return pd.DataFrame(rows)


def not_run(params: dict) -> list[str]:
    """The (precision, runtime) pairs of the study's precisions that it does not run, and why:
    quantdet's refusals, and what this machine's runtimes cannot run (quantdet.export.precision.probe)."""
    from quantdet.export.precision import PRECISIONS, probe

    listed = {}
    for role in study.students(params):
        for precision, runtimes in (study.role_matrix(params, role).get("precisions") or {}).items():
            listed.setdefault(precision, set()).update(runtimes or [])
    lines = []
    for precision, runtimes in listed.items():
        for runtime in ("onnxruntime", "openvino", "torch"):
            if runtime in runtimes:
                continue
            reason = probe(precision, runtime)
            if runtime in PRECISIONS[precision]["runtimes"]:
                reason = reason or "runs here; not listed in matrix.precisions"
            if reason:
                lines.append(f"{precision} in {runtime}: not run: {reason}")
    return lines


def precisions_section(params: dict, intervals: dict | None, records: dict[str, dict],
                       exports: dict[str, dict]) -> str:
    """## Deployment precisions: empty where the study lists none."""
    if not intervals or not any(study.role_matrix(params, r).get("precisions") for r in study.students(params)):
        return ""
    figures = intervals.get("models", {})
    roles = study.students(params)
    lines = ["## Deployment precisions", "",
             "Each FP32 detector as deployed at lower precision (`matrix.precisions`), beside its static INT8 "
             "model: rows detectors, columns precisions (QRID's table), each figure with its 95% interval "
             "(AP points; rPC in percent). FP16 and BF16 in OpenVINO run the FP32 ONNX model at that inference "
             "precision, BF16 in PyTorch under `torch.autocast`, INT8 dynamic is onnxruntime's `quantize_dynamic` "
             "at its defaults; each was checked to run at the precision it names (its convolutions, as the "
             "runtime compiled them).", ""]
    for metric in ("P", "mPC", "rPC"):
        headers = list(dict.fromkeys(h for role in roles for h, _ in columns(params, role, figures)))
        rows = []
        for role in roles:
            cells = dict(columns(params, role, figures))
            rows.append([f"`{role}`"] + [with_interval(figures.get(cells.get(h), {}).get(metric), metric)
                                         if h in cells else "–" for h in headers])
        lines += [f"**{metric}**", "", markdown_table(["detector", *headers], rows), ""]
    rows = []
    for role in roles:
        fp32 = f"{role}-fp32"
        for header, model in columns(params, role, figures)[1:]:
            if model not in figures:
                continue
            d = _versus_fp32(intervals, model, fp32)
            runtime, ms, fp32_ms, speedup = _latency(model, records, exports)
            executed = (records.get(model) or {}).get("executed") or {}
            ran = ", ".join(f"{v} {k}" for k, v in (executed.get("convolutions_by_precision") or {}).items())
            macs = ((records.get(model) or {}).get("conversion") or {}).get("multiply_accumulates") or {}
            if macs.get("integer_share") is not None:   # dynamic INT8: how much of the network ran in integer
                ran += f"; {100 * macs['integer_share']:.1f}% of multiply-accumulates in integer"
            rows.append([f"`{role}`", header, f"`{model}`", with_interval(d.get("P"), "P", signed=True),
                         with_interval(d.get("mPC"), "mPC", signed=True),
                         with_interval(d.get("rPC"), "rPC", signed=True), verdict(d.get("mPC") or {}),
                         ran or "integer graph (export)",
                         "–" if ms is None else f"{ms:.1f} ms vs {fp32_ms:.1f} ms",
                         "–" if not speedup else f"{speedup:.2f}×"])
    lines += ["Against each detector's own FP32 model (paired over the same image resamples; a difference is "
              "stated only where its interval excludes zero), with what the runtime ran (convolutions by the "
              "precision they ran in) and its latency against the FP32 model in the same runtime (each timed in "
              "its own process; static INT8: onnxruntime, from its export):", "",
              markdown_table(["detector", "precision", "model", "ΔP", "ΔmPC", "ΔrPC", "mPC vs FP32", "ran",
                              "latency", "× FP32"], rows, align_right_from=3), ""]
    skipped = [f"`{m}`: {r.get('precision')} in {r.get('runtime')}: not run on this machine "
               f"({(r.get('machine') or {}).get('cpu', 'CPU unknown')}): {r['not_run']}"
               for m, r in records.items() if r.get("not_run")] + not_run(params)
    if skipped:
        lines += ["Not run:", ""] + [f"- {line}" for line in skipped] + [""]
    return "\n".join(lines)


def plot_latency_vs_robustness(rows: pd.DataFrame, path) -> object:
    """The deployment trade-off: latency against mPC, one point per deployed model of the
    precision table (its 95% interval as the vertical bar), one panel per detector; FP32 is
    drawn in each runtime it was timed in, at its own mPC. Latency: batch and threads of
    `export`, each model timed in its own process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantdet.report.plots import _save

    markers = {"onnxruntime": "o", "openvino": "s", "torch": "^"}
    detectors = list(dict.fromkeys(rows["detector"])) if len(rows) else []
    fig, axes = plt.subplots(1, max(1, len(detectors)), figsize=(6 * max(1, len(detectors)), 5), squeeze=False)
    for ax, detector in zip(axes[0], detectors):
        own = rows[rows["detector"] == detector]
        fp32 = own[own["column"] == "FP32"].iloc[0] if (own["column"] == "FP32").any() else None
        points = []
        for r in own.itertuples():
            if r.column == "FP32" or pd.isna(getattr(r, "latency_ms", None)):
                continue
            points.append((r.column, r.runtime, r.latency_ms, r.mPC, r.mPC_low, r.mPC_high))
            if fp32 is not None and not pd.isna(r.fp32_latency_ms):
                points.append((f"FP32 ({RUNTIME_LABELS.get(r.runtime, r.runtime)})", r.runtime, r.fp32_latency_ms,
                               fp32["mPC"], fp32["mPC_low"], fp32["mPC_high"]))
        seen = {}
        for label, runtime, ms, mpc, low, high in points:
            seen.setdefault((label, runtime), []).append(ms)
        for (label, runtime), times in seen.items():
            match = next(p for p in points if p[0] == label and p[1] == runtime)
            ms = sorted(times)[len(times) // 2]   # FP32 timed beside several models: their median
            _, _, _, mpc, low, high = match
            ax.errorbar(ms, 100 * mpc, yerr=[[100 * (mpc - low)], [100 * (high - mpc)]],
                        fmt=markers.get(runtime, "o"), capsize=2, elinewidth=0.8,
                        mfc="white" if label.startswith("FP32") else None, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency per batch (ms, log scale)")
        ax.set_ylabel("mPC: mean AP under corruption (points)")
        ax.set_title(f"{detector}: latency and robustness")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    return _save(fig, path)
