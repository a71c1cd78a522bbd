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
from quantdet.study import ORT_SUFFIX, analysed_runtime, evaluated_models, parse_model_name


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
        record = {"model": model, "bits": name.bits_label, "runtime": name.runtime, "role": name.role,
                  "family": "fp32" if name.fp32 else name.stage,
                  "method": name.method or "fp32", "base": name.base,
                  "seed": name.run_seed(params),
                  # the model the study's comparisons use: FP32 in PyTorch, quantized in the
                  # analysed runtime (simulated where evaluated, else deployed)
                  "analysed": not name.precision
                  and name.compared_as == (analysed_runtime(params) if name.quantized else "torch")}
        for metric, suffix in (("AP", ""), ("AP50", "_AP50")):
            table = {(c, s): v for c, s, v in zip(group["condition"], group["severity"], group[metric])}
            try:
                summary = robustness_summary(float(clean[metric].iloc[0]), table, corruptions, severities)
            except (ValueError, TypeError) as err:
                raise QuantdetError(f"model {model}: {err} (is every eval/{model}/<corruption>.json "
                                    f"among the report inputs, with {metric}?)") from err
            record.update({f"P{suffix}": summary["P"], f"mPC{suffix}": summary["mPC"],
                           f"rPC{suffix}": summary["rPC"]})
        record.update(_corruption_groups(group, params))
        records.append(record)
    return pd.DataFrame(records)


def corruption_groups(params: dict) -> dict[str, list[str]]:
    """The corruptions behind each partial mean: `seen` are benchmark corruptions that the
    study's training-time degradations (DA-QAT, degradation-aware calibration) also apply,
    `unseen` the other benchmark ones, `heldout` the corruptions outside mPC."""
    benchmark = list(params["corruptions"]["names"])
    trained = set(params.get("quant", {}).get("degradations", {}).get("names", []))
    return {"seen": [c for c in benchmark if c in trained],
            "unseen": [c for c in benchmark if c not in trained],
            "heldout": list(params["corruptions"].get("heldout", []))}


def _corruption_groups(group: pd.DataFrame, params: dict) -> dict:
    """mPC restricted to each corruption group (NaN where the group is empty or not evaluated)."""
    severities = params["corruptions"]["severities"]
    out = {}
    for label, names in corruption_groups(params).items():
        cells = group[group["condition"].isin(names) & group["severity"].isin(severities)]
        complete = len(cells) == len(names) * len(severities) and len(names) > 0
        out[f"mPC_{label}"] = float(cells["AP"].mean()) if complete else math.nan
    return out


def analysed(robustness: pd.DataFrame) -> pd.Series:
    """Rows of the models the comparisons use (robustness_table's `analysed`; PyTorch ones in
    a frame without it)."""
    if "analysed" in robustness:
        return robustness["analysed"].astype(bool)
    return robustness["runtime"] == "torch"


def study_seed(robustness: pd.DataFrame) -> pd.Series:
    """Rows of the study seed's models (not a repeat)."""
    return robustness["model"].map(lambda m: parse_model_name(m).seed is None)


def method_ranking(robustness: pd.DataFrame) -> pd.DataFrame:
    """The study-seed models in the analysed runtime (peers included), grouped by bit width and
    ranked by mPC, with each one's change against the FP32 student in AP points."""
    main = robustness[analysed(robustness) & study_seed(robustness) & (robustness["role"] == "student")]
    fp32 = main[main["model"] == "student-fp32"]
    if fp32.empty:
        return pd.DataFrame()
    ref = fp32.iloc[0]
    frame = main[main["family"] != "fp32"].copy()
    for metric in ("P", "mPC", "mPC_heldout"):
        frame[f"d{metric}_points"] = 100 * (frame[metric] - ref[metric])
    frame["drPC_points"] = 100 * (frame["rPC"] - ref["rPC"])
    frame["rank"] = frame.groupby("bits")["mPC"].rank(ascending=False, method="min")
    bits_order = sorted(frame["bits"].unique(), key=lambda b: -int(b[1:].split("A")[0]))
    frame["bits"] = pd.Categorical(frame["bits"], bits_order, ordered=True)
    frame = frame.sort_values(["bits", "rank"]).reset_index(drop=True)
    frame["bits"] = frame["bits"].astype(str)
    return frame[["bits", "rank", "model", "family", "method", "P", "mPC", "rPC", "mPC_heldout",
                  "dP_points", "dmPC_points", "drPC_points", "dmPC_heldout_points"]]


def seed_spread(robustness: pd.DataFrame) -> pd.DataFrame:
    """Each analysed model evaluated under more than one seed: values per seed, mean and range."""
    torch_models = robustness[analysed(robustness)]
    records = []
    for base, group in torch_models.groupby("base", sort=False):  # base: the name without seed
        if len(group) < 2:
            continue
        record = {"model": base, "bits": group["bits"].iloc[0], "seeds": sorted(group["seed"].tolist())}
        for metric in ("P", "mPC", "rPC"):
            values = group.sort_values("seed")[metric]
            record.update({f"{metric}_mean": values.mean(), f"{metric}_min": values.min(),
                           f"{metric}_max": values.max()})
        records.append(record)
    return pd.DataFrame(records)


# The comparisons the study answers (QRID): (label, treatment method, baseline method).
COMPARISONS = (
    ("degradation-aware calibration vs clean calibration", ("ptq", "dacal"), ("ptq", "percentile")),
    ("DA-QAT vs the same QAT on clean batches (FQN)", ("qat", "daqat"), ("qat", "fqn")),
)


def study_comparisons(params: dict) -> list[tuple[str, str, tuple, tuple]]:
    """(group, label, treatment, baseline) for every paired comparison the study's models allow:
    the QRID ones; each zero-shot model against real-data PTQ with the same observer (so only
    the calibration data differs); each mimic variant against the student fine-tuned alone,
    and quantization mimic against plain mimic."""
    from quantdet.methods import get_method

    comparisons = [("qrid", label, treat, base) for label, treat, base in COMPARISONS]
    matrix = params["matrix"]
    observer = params["quant"]["zeroshot"]["observer"]
    for method in matrix["ptq"]:
        if get_method("ptq", method).generated:
            comparisons.append(("zeroshot", f"zero-shot PTQ on {method} images vs PTQ on real images ({observer})",
                                ("ptq", method), ("ptq", observer)))
    for method in matrix["qat"]:
        if get_method("qat", method).generated:
            comparisons.append(("zeroshot", f"zero-shot {method} QAT vs PTQ on real images ({observer})",
                                ("qat", method), ("ptq", observer)))
    variants = matrix["mimic"]
    if "alone" in variants:
        comparisons += [("mimic", f"mimic variant {v} vs the student fine-tuned alone", ("mimic", v),
                         ("mimic", "alone")) for v in variants if v != "alone"]
    if "plain" in variants and "qmimic" in variants:
        comparisons.append(("mimic", "quantization mimic vs plain mimic", ("mimic", "qmimic"), ("mimic", "plain")))
    return comparisons


def paired_comparisons(robustness: pd.DataFrame, comparisons=None) -> pd.DataFrame:
    """Treatment − baseline per (comparison, bit width, seed), on P, mPC, rPC and the corruption
    groups; also every quantized model against the FP32 student of the same seed
    ("quantization vs FP32", group `fp32`). Only PyTorch (simulated) students, so that seeds
    pair up. ``comparisons``: quadruples of `study_comparisons` (default: the QRID ones)."""
    if comparisons is None:
        comparisons = [("qrid", label, treat, base) for label, treat, base in COMPARISONS]
    torch_models = robustness[analysed(robustness) & (robustness["role"] == "student")]
    by_key = {(r.family, r.method, r.bits, r.seed): r for r in torch_models.itertuples()}
    pairs = []
    for (family, method, bits, seed), row in by_key.items():
        if family == "fp32":
            continue
        ref = by_key.get(("fp32", "fp32", "fp32", seed))
        if ref is not None:
            pairs.append(("fp32", f"{family} {method} vs FP32", bits, seed, row, ref))
    for group, label, (tf, tm), (bf, bm) in comparisons:
        for (family, method, bits, seed), row in by_key.items():
            base = by_key.get((bf, bm, bits, seed))
            if (family, method) == (tf, tm) and base is not None:
                pairs.append((group, label, bits, seed, row, base))
    records = []
    for group, label, bits, seed, row, base in pairs:
        record = {"group": group, "comparison": label, "bits": bits, "seed": seed, "treatment": row.model,
                  "baseline": base.model}
        for metric in ("P", "mPC", "rPC", "mPC_seen", "mPC_unseen", "mPC_heldout"):
            record[f"d{metric}_points"] = 100 * (getattr(row, metric) - getattr(base, metric))
        records.append(record)
    return pd.DataFrame(records)


def comparison_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (comparison, bits): mean difference over seeds, its range, and a verdict that only
    claims an effect when every seed agrees on its sign."""
    if pairs.empty:
        return pd.DataFrame()
    records = []
    for (label, bits), group in pairs.groupby(["comparison", "bits"], sort=False):
        record = {"group": group["group"].iloc[0], "comparison": label, "bits": bits, "seeds": len(group),
                  "treatment": group["treatment"].iloc[0], "baseline": group["baseline"].iloc[0]}
        for metric in ("P", "mPC", "rPC", "mPC_seen", "mPC_unseen", "mPC_heldout"):
            values = group.sort_values("seed")[f"d{metric}_points"].dropna()
            record[f"d{metric}_seeds"] = values.tolist()
            record[f"d{metric}_mean"] = values.mean() if len(values) else math.nan
            record[f"d{metric}_min"] = values.min() if len(values) else math.nan
            record[f"d{metric}_max"] = values.max() if len(values) else math.nan
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
