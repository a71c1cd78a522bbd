"""The study's tables, all derived from one long table of AP per (model, condition, severity).

AP values stay fractions in [0, 1] here; `_points` columns are differences in AP points
(x100) and `_rel` columns are differences relative to the FP32 value.
"""
from __future__ import annotations

import math

import pandas as pd

from quantdet.errors import QuantdetError
from quantdet.evaluation.coco_metrics import BOX_METRICS
from quantdet.evaluation.robustness import robustness_summary
from quantdet.study import ORT_SUFFIX, evaluated_models, parse_model_name


def model_order(models, params: dict) -> list[str]:
    """The study's own order (FP32 first, each quantized model beside its ONNX twin),
    then anything else the evaluation files hold, sorted."""
    present = set(models)
    ordered = [m for m in evaluated_models(params) if m in present]
    return ordered + sorted(present - set(ordered))


def ap_by_condition(rows: list[dict], params: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["model", "runtime", "condition", "severity", *BOX_METRICS])
    order = model_order(frame["model"].unique(), params)
    conditions = ["clean", *params["corruptions"]["names"]]
    conditions += sorted(set(frame["condition"]) - set(conditions))   # e.g. held-out corruptions
    frame["model"] = pd.Categorical(frame["model"], order, ordered=True)
    frame["condition"] = pd.Categorical(frame["condition"], conditions, ordered=True)
    frame = frame.sort_values(["model", "condition", "severity"]).reset_index(drop=True)
    frame["model"] = frame["model"].astype(str)
    frame["condition"] = frame["condition"].astype(str)
    return frame


def robustness_table(ap: pd.DataFrame, params: dict) -> pd.DataFrame:
    """P, mPC, rPC per model on AP@[.5:.95], and the same on AP50 (the VOC convention)."""
    corruptions, severities = params["corruptions"]["names"], params["corruptions"]["severities"]
    records = []
    for model, group in ap.groupby("model", sort=False):
        clean = group[group["condition"] == "clean"]
        if clean.empty:
            raise QuantdetError(f"model {model}: no clean evaluation (eval/{model}/clean.json) among the report inputs")
        name = parse_model_name(model)
        record = {"model": model, "bits": name.bits_label, "runtime": name.runtime}
        for metric, suffix in (("AP", ""), ("AP50", "_AP50")):
            table = {(c, s): v for c, s, v in zip(group["condition"], group["severity"], group[metric])}
            try:
                summary = robustness_summary(float(clean[metric].iloc[0]), table, corruptions, severities)
            except (ValueError, TypeError) as err:
                raise QuantdetError(f"model {model}: {err} (is every eval/{model}/<corruption>.json "
                                    f"among the report inputs, with {metric}?)") from err
            record.update({f"P{suffix}": summary["P"], f"mPC{suffix}": summary["mPC"],
                           f"rPC{suffix}": summary["rPC"]})
        records.append(record)
    return pd.DataFrame(records)


def quantization_drop(robustness: pd.DataFrame) -> pd.DataFrame:
    """Each quantized model (simulated and deployed) against the FP32 model it came from."""
    by_model = robustness.set_index("model")
    records = []
    for model in robustness["model"]:
        name = parse_model_name(model)
        if not name.quantized:
            continue
        if name.fp32_source not in by_model.index:
            raise QuantdetError(f"model {model}: its FP32 source {name.fp32_source} has no evaluation "
                                "among the report inputs")
        ours, source = by_model.loc[model], by_model.loc[name.fp32_source]
        record = {"model": model, "bits": name.bits_label, "runtime": name.runtime, "fp32_source": name.fp32_source}
        for metric in ("P", "mPC", "rPC"):
            delta = ours[metric] - source[metric]
            record.update({f"{metric}_fp32": source[metric], metric: ours[metric],
                           f"d{metric}_points": 100 * delta,
                           f"d{metric}_rel": delta / source[metric] if source[metric] else math.nan})
        records.append(record)
    columns = ["model", "bits", "runtime", "fp32_source"] + [
        column for m in ("P", "mPC", "rPC") for column in (f"{m}_fp32", m, f"d{m}_points", f"d{m}_rel")]
    return pd.DataFrame(records, columns=columns)


def simulated_vs_deployed(robustness: pd.DataFrame) -> pd.DataFrame:
    """Fake-quantized PyTorch (simulated) beside its onnxruntime export (deployed)."""
    by_model = robustness.set_index("model")
    records = []
    for model in robustness["model"]:
        deployed = model + ORT_SUFFIX
        if parse_model_name(model).runtime != "torch" or deployed not in by_model.index:
            continue
        sim, dep = by_model.loc[model], by_model.loc[deployed]
        record = {"model": model, "bits": sim["bits"]}
        for metric in ("P", "mPC"):
            record.update({f"{metric}_simulated": sim[metric], f"{metric}_deployed": dep[metric],
                           f"d{metric}_points": 100 * (dep[metric] - sim[metric])})
        records.append(record)
    return pd.DataFrame(records, columns=["model", "bits", "P_simulated", "P_deployed", "dP_points",
                                          "mPC_simulated", "mPC_deployed", "dmPC_points"])


def ap_vs_severity(ap: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Mean AP over the study's corruptions at each severity; severity 0 is the clean AP."""
    corrupted = ap[ap["condition"].isin(params["corruptions"]["names"])
                   & ap["severity"].isin(params["corruptions"]["severities"])]
    means = corrupted.groupby(["model", "runtime", "severity"], sort=False)[["AP", "AP50"]].mean().reset_index()
    clean = ap[ap["condition"] == "clean"][["model", "runtime", "severity", "AP", "AP50"]]
    frame = pd.concat([clean, means], ignore_index=True)
    order = {m: i for i, m in enumerate(ap["model"].unique())}
    return (frame.assign(_order=frame["model"].map(order)).sort_values(["_order", "severity"])
            .drop(columns="_order").reset_index(drop=True))


def ap_per_corruption(ap: pd.DataFrame) -> pd.DataFrame:
    """Mean AP over severities for each (model, condition); clean keeps its single value."""
    return ap.groupby(["model", "condition"], sort=False)["AP"].mean().reset_index()


def corruption_severity_grid(ap: pd.DataFrame, model: str) -> pd.DataFrame:
    """AP of one model, corruptions as rows and severities as columns, with the row mean."""
    group = ap[(ap["model"] == model) & (ap["condition"] != "clean")]
    grid = group.pivot(index="condition", columns="severity", values="AP")
    grid = grid.reindex([c for c in ap["condition"].unique() if c in grid.index])
    grid["mean"] = grid.mean(axis=1)
    return grid


def export_table(exports: dict[str, dict], order: list[str]) -> pd.DataFrame:
    """Latency, speed-up and size per exported model; absent fields stay empty."""
    records = []
    for model in sorted(exports, key=lambda m: order.index(m) if m in order else len(order)):
        export = exports[model]
        latency, size = export.get("latency_ms") or {}, export.get("size_bytes") or {}
        records.append({
            "model": model,
            "latency_ms_fp32": latency.get("fp32_onnx"), "latency_ms_int8": latency.get("int8_onnx"),
            "speedup_int8_vs_fp32": export.get("speedup_int8_vs_fp32"),
            "size_bytes_fp32": size.get("fp32_onnx"), "size_bytes_int8": size.get("int8_onnx"),
            "latency_batch": latency.get("batch"), "latency_threads": latency.get("threads"),
        })
    return pd.DataFrame(records, columns=["model", "latency_ms_fp32", "latency_ms_int8", "speedup_int8_vs_fp32",
                                          "size_bytes_fp32", "size_bytes_int8", "latency_batch", "latency_threads"])
