"""The `report` stage: every evaluation and export of a study into metrics, tables, plots and
results/report.md. Metrics and tables keep AP as fractions; the report shows AP points."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from quantdet.report import tables as t
from quantdet.report.files import atomic_write, atomic_write_json, atomic_write_text, finite_numbers
from quantdet.report.inputs import read_evaluation_rows, read_exports, read_json
from quantdet.report.markdown import render_study_report
from quantdet.report.plots import (plot_accuracy_vs_robustness, plot_ap_per_corruption, plot_ap_vs_severity,
                                   plot_detectors_accuracy_vs_robustness, plot_rpc_per_model)
from quantdet.study import PREPARED, ROLES, parse_model_name

ROBUSTNESS_METRICS = {"P": "P", "mPC": "mPC", "rPC": "rPC",
                      "P_AP50": "AP50_clean", "mPC_AP50": "mPC_AP50", "rPC_AP50": "rPC_AP50"}


def write_study_report(eval_files, export_files, params: dict, out_root="results",
                       mixed_bits: dict[str, dict] | None = None,
                       generated_grids: dict[str, Path] | None = None,
                       generated_info: dict[str, dict] | None = None,
                       intervals: dict | None = None, environment: str = "",
                       ablation: dict | None = None, precision_records: dict[str, dict] | None = None) -> dict:
    """Write metrics/, tables/, plots/ and report.md under ``out_root``; return a summary
    (per-model P/mPC/rPC and the paths written) for the CLI to log.

    The metrics and the robustness and AP tables hold every model of the study; the report's
    sections and plots the student's and teacher's, and "Detectors side by side" the detector
    axis (models.students: quantdet.report.detectors), each detector against its own FP32."""
    out = Path(out_root)
    every_row = read_evaluation_rows(eval_files)
    every_export = read_exports(export_files)
    primary = {m for m in {r["model"] for r in every_row} | set(every_export)   # deployment precisions:
               if parse_model_name(m).role in ROLES and not parse_model_name(m).precision}   # their section
    rows = [r for r in every_row if r["model"] in primary]
    exports = {m: e for m, e in every_export.items() if m in primary}

    ap = t.ap_by_condition(rows, params)
    robustness = t.robustness_table(ap, params)
    every_ap = t.ap_by_condition(every_row, params)
    every_robustness = t.robustness_table(every_ap, params)
    if intervals:  # the 95% interval of every figure, beside it
        from quantdet.report.answers import interval_columns

        robustness = robustness.merge(interval_columns(intervals), on="model", how="left")
        every_robustness = every_robustness.merge(interval_columns(intervals), on="model", how="left")
    order = list(robustness["model"])
    tables = {
        "ap_by_condition": ap,
        "robustness": robustness,
        "quantization_drop": t.quantization_drop(robustness),
        "simulated_vs_deployed": t.simulated_vs_deployed(robustness),
        "ap_vs_severity": t.ap_vs_severity(ap, params),
        "export": t.export_table(exports, order),
        "method_ranking": t.method_ranking(robustness),
        "seed_spread": t.seed_spread(robustness),
    }
    tables["paired_comparisons"] = t.paired_comparisons(robustness, t.study_comparisons(params))
    tables["comparison_summary"] = t.comparison_summary(tables["paired_comparisons"])

    written = {
        "robustness_metrics": atomic_write_json(out / "metrics" / "robustness.json",
                                                _robustness_metrics(every_robustness)),
        "export_metrics": atomic_write_json(out / "metrics" / "export.json",
                                            _export_metrics(t.export_table(every_export, list(every_robustness["model"])),
                                                            every_export)),
    }
    written["ap_by_condition_table"] = _write_csv(every_ap, out / "tables" / "ap_by_condition.csv")
    written["robustness_table"] = _write_csv(every_robustness, out / "tables" / "robustness.csv")
    for name in ("quantization_drop", "ap_vs_severity", "method_ranking",
                 "paired_comparisons", "seed_spread"):
        written[f"{name}_table"] = _write_csv(tables[name], out / "tables" / f"{name}.csv")
    from quantdet.report.detectors import detector_rows, detectors_section

    detectors_frame = detector_rows(params, intervals or {})
    written["detectors_table"] = _write_csv(detectors_frame, out / "tables" / "detectors.csv")
    from quantdet.report.precisions import precision_rows, precisions_section

    precision_table = precision_rows(params, intervals or {}, precision_records or {}, every_export)
    written["precisions_table"] = _write_csv(precision_table, out / "tables" / "precisions.csv")
    from quantdet.report.losses import collapse_section, loss_rows, losses_section

    written["losses_table"] = _write_csv(loss_rows(intervals or {}), out / "tables" / "losses.csv")
    written["ap_vs_severity_json"] = atomic_write_json(out / "tables" / "ap_vs_severity.json",
                                                       _wide_curves(tables["ap_vs_severity"], order))

    plots_dir = out / "plots"
    plots = {
        "Mean AP over corruptions vs severity": plot_ap_vs_severity(tables["ap_vs_severity"],
                                                                    plots_dir / "ap_vs_severity.png", intervals),
        "rPC per model": plot_rpc_per_model(robustness, plots_dir / "rpc_per_model.png"),
        "AP per corruption": plot_ap_per_corruption(t.ap_per_corruption(ap), plots_dir / "ap_per_corruption.png"),
        "Accuracy against robustness (P vs mPC, 95% intervals)":
            plot_accuracy_vs_robustness(robustness, plots_dir / "accuracy_vs_robustness.png"),
    }
    if not detectors_frame.empty and detectors_frame["detector"].nunique() > 1:   # the detector axis
        plots["Each detector's models: accuracy against robustness (P vs mPC, 95% intervals)"] = \
            plot_detectors_accuracy_vs_robustness(detectors_frame, plots_dir / "detectors_accuracy_vs_robustness.png")
    if precision_records:   # the deployment trade-off, where the study has deployment precisions
        from quantdet.report.precisions import plot_latency_vs_robustness

        plots["Latency against robustness (deployed models, 95% intervals of mPC)"] = plot_latency_vs_robustness(
            precision_table, plots_dir / "latency_vs_robustness.png")
    written.update({f"{p.stem}_plot": p for p in plots.values()})
    grids = {}
    for generator, source in (generated_grids or {}).items():  # zero-shot images beside real ones
        target = plots_dir / f"generated_{generator}.png"
        written[f"generated_{generator}_plot"] = atomic_write(
            target, lambda tmp, source=source: tmp.write_bytes(Path(source).read_bytes()))
        grids[generator] = target

    report = out / "report.md"
    sections = "\n\n".join(filter(None, [detectors_section(params, intervals, every_export),
                                           precisions_section(params, intervals, precision_records or {},
                                                              every_export),
                                           losses_section(intervals)]))
    relative = {title: Path(os.path.relpath(p, report.parent)).as_posix() for title, p in plots.items()}
    grids = {g: Path(os.path.relpath(p, report.parent)).as_posix() for g, p in grids.items()}
    num_images = [r["num_images"] for r in rows if isinstance(r.get("num_images"), int)]
    written["report"] = atomic_write_text(report, render_study_report(params, tables, exports, relative, num_images,
                                                                      mixed_bits or {}, grids,
                                                                      generated_info or {}, _dataset_classes(),
                                                                      intervals, environment, ablation,
                                                                      sections,
                                                                      collapse_section(intervals, every_export)))

    return {"models": list(every_robustness["model"]),
            "robustness": {r.model: {"P": r.P, "mPC": r.mPC, "rPC": r.rPC} for r in every_robustness.itertuples()},
            "outputs": {key: str(path) for key, path in written.items()}}


def _dataset_classes() -> list[str] | None:
    """The classes `prepare` found (a VOC `auto` list, a YOLO data.yaml's names), where the
    study's prepared data is at hand: params alone do not say them."""
    path = Path(PREPARED) / "summary.json"
    if not path.is_file():
        return None
    classes = read_json(path).get("classes")
    return classes if isinstance(classes, list) else None


INTERVAL_METRICS = ("P_low", "P_high", "mPC_low", "mPC_high", "rPC_low", "rPC_high")


def _robustness_metrics(robustness: pd.DataFrame) -> dict:
    """DVC metrics: each figure, and the ends of its 95% interval where measured."""
    columns = {**ROBUSTNESS_METRICS, **{c: c for c in INTERVAL_METRICS if c in robustness}}
    return {row["model"]: finite_numbers({name: row[column] for column, name in columns.items()})
            for _, row in robustness.iterrows()}


def _export_metrics(export: pd.DataFrame, exports: dict[str, dict]) -> dict:
    metrics = {}
    for _, row in export.iterrows():
        agreement = exports[row["model"]].get("agreement") or {}
        by_runtime = exports[row["model"]].get("latency_by_runtime") or {}
        speedups = exports[row["model"]].get("speedup_by_runtime") or {}
        metrics[row["model"]] = finite_numbers({
            **row.drop(["model", "latency_batch", "latency_threads"]).to_dict(),
            **{f"latency_ms_int8_{runtime}": ms.get("int8_onnx") for runtime, ms in by_runtime.items()},
            **{f"speedup_{runtime}": value for runtime, value in speedups.items()},
            "within_one_step_fraction": agreement.get("within_one_step_fraction"),
            "detections_match_iou50": agreement.get("detections_match_iou50"),
        })
    return metrics


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _wide_curves(curves: pd.DataFrame, order: list[str]) -> list[dict]:
    """One record per severity with one AP column per model: the shape `dvc plots` draws
    as one line per model (y: the model names)."""
    wide = curves.pivot(index="severity", columns="model", values="AP")
    wide = wide[[m for m in order if m in wide.columns]].reset_index()
    return [finite_numbers(record) | {"severity": int(record["severity"])} for record in wide.to_dict("records")]
