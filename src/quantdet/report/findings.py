"""'What the numbers say': sentences computed from the study's tables, so the report never
claims more (or other) than its own numbers show."""
from __future__ import annotations

import pandas as pd

from quantdet.report.formatting import ap_points, percent, signed_points

# Simulated and deployed models count as matching when they agree this closely (AP points).
DEPLOYMENT_TOLERANCE_POINTS = 0.5


def study_findings(ap: pd.DataFrame, robustness: pd.DataFrame, drop: pd.DataFrame,
                   sim_dep: pd.DataFrame, export: pd.DataFrame, corruptions: list[str]) -> list[str]:
    return [line for line in (
        _robustness_ranking(robustness),
        _quantization_overview(drop),
        *_quantization_effects(drop),
        *_deployment_fidelity(sim_dep),
        _hardest_corruption(ap, corruptions),
        _export_speed(export),
    ) if line]


def _robustness_ranking(robustness: pd.DataFrame) -> str:
    ranked = robustness.dropna(subset=["rPC"]).sort_values("rPC", ascending=False)
    if ranked.empty:
        return "No model has a defined rPC (every clean AP is 0)."
    best, worst = ranked.iloc[0], ranked.iloc[-1]
    line = f"Highest rPC: **{best['model']}** ({percent(best['rPC'])}, mPC {ap_points(best['mPC'])})."
    if len(ranked) > 1:
        line += f" Lowest: **{worst['model']}** ({percent(worst['rPC'])})."
    top_mpc = robustness.sort_values("mPC", ascending=False).iloc[0]
    line += f" Highest mPC: **{top_mpc['model']}** ({ap_points(top_mpc['mPC'])} AP points)."
    return line


def _quantization_overview(drop: pd.DataFrame) -> str:
    changes = drop["drPC_points"].dropna()
    if changes.empty:
        return ""
    lowered = changes[changes <= -0.05]
    line = f"Quantization lowered rPC for {len(lowered)} of {len(changes)} quantized models"
    if len(lowered):
        line += f" (by {abs(lowered.max()):.1f} to {abs(lowered.min()):.1f} points)"
    return line + f"; the mean change is {signed_points(changes.mean())} rPC points against the FP32 source."


def _quantization_effects(drop: pd.DataFrame) -> list[str]:
    lines = []
    for _, row in drop.iterrows():
        if pd.isna(row["drPC_points"]):
            effect = "rPC is undefined for one of the two"
        elif abs(row["drPC_points"]) < 0.05:
            effect = "quantization left rPC unchanged"
        else:
            direction = "lowered" if row["drPC_points"] < 0 else "raised"
            effect = f"quantization {direction} rPC by {abs(row['drPC_points']):.1f} points"
        lines.append(
            f"{row['model']} ({row['runtime']}) against {row['fp32_source']}: P {ap_points(row['P'])} vs "
            f"{ap_points(row['P_fp32'])} ({signed_points(row['dP_points'])}), mPC {ap_points(row['mPC'])} vs "
            f"{ap_points(row['mPC_fp32'])} ({signed_points(row['dmPC_points'])}); {effect} "
            f"({percent(row['rPC'])} vs {percent(row['rPC_fp32'])}).")
    return lines


def _deployment_fidelity(sim_dep: pd.DataFrame) -> list[str]:
    lines = []
    for _, row in sim_dep.iterrows():
        gap = max(abs(row["dP_points"]), abs(row["dmPC_points"]))
        verdict = ("matches" if gap <= DEPLOYMENT_TOLERANCE_POINTS else "does not match")
        lines.append(
            f"Deployed (onnxruntime) {verdict} simulated (PyTorch) for {row['model']} within "
            f"{DEPLOYMENT_TOLERANCE_POINTS} AP points: P {signed_points(row['dP_points'])}, "
            f"mPC {signed_points(row['dmPC_points'])} points (deployed − simulated).")
    return lines


def _hardest_corruption(ap: pd.DataFrame, corruptions: list[str]) -> str:
    corrupted = ap[ap["condition"].isin(corruptions)]
    if corrupted.empty:
        return ""
    per_corruption = corrupted.groupby("condition")["AP"].mean().sort_values()
    clean = ap[ap["condition"] == "clean"]["AP"].mean()
    hardest, easiest = per_corruption.index[0], per_corruption.index[-1]
    return (f"Hardest corruption across all models: **{hardest}** (mean AP {ap_points(per_corruption.iloc[0])} "
            f"over models and severities, against a mean clean AP of {ap_points(clean)}); mildest: **{easiest}** "
            f"({ap_points(per_corruption.iloc[-1])}).")


def _export_speed(export: pd.DataFrame) -> str:
    speedups = export.dropna(subset=["speedup_int8_vs_fp32"])
    if speedups.empty:
        return ""
    low, high = speedups["speedup_int8_vs_fp32"].min(), speedups["speedup_int8_vs_fp32"].max()
    span = f"{low:.2f}×" if round(low, 2) == round(high, 2) else f"{low:.2f}× to {high:.2f}×"
    slower = speedups[speedups["speedup_int8_vs_fp32"] < 1]["model"].tolist()
    line = f"INT8 ONNX against FP32 ONNX in onnxruntime: speed-up {span}."
    if slower:
        line += f" Slower than FP32: {', '.join(slower)}."
    return line
