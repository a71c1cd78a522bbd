"""The report stage on a synthetic study: 4 models, 2 corruptions x 2 severities."""
import copy
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from quantdet.errors import QuantdetError
from quantdet.report.aggregate import write_study_report

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["teacher-fp32", "student-fp32", "student-ptq-percentile-w8a8", "student-ptq-percentile-w8a8-ort"]
CLEAN_AP = {"teacher-fp32": 0.50, "student-fp32": 0.40,
            "student-ptq-percentile-w8a8": 0.36, "student-ptq-percentile-w8a8-ort": 0.358}
# each corruption removes this fraction of the clean AP per severity step
DAMAGE = {"gaussian_noise": 0.20, "fog": 0.10}
# the students suffer more under noise than the teacher, the quantized ones most
EXTRA_DAMAGE = {"student-fp32": 0.02, "student-ptq-percentile-w8a8": 0.05, "student-ptq-percentile-w8a8-ort": 0.05}


def study_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["corruptions"]["names"] = list(DAMAGE)
    params["corruptions"]["severities"] = [1, 2]
    params["matrix"]["ptq"] = ["percentile"]
    params["matrix"]["runtimes"] = ["torch", "onnxruntime"]   # simulated and deployed
    params["matrix"]["repeat"]["seeds"] = []
    return params


def corrupted_ap(model: str, corruption: str, severity: int) -> float:
    damage = DAMAGE[corruption] + (EXTRA_DAMAGE.get(model, 0.0) if corruption == "gaussian_noise" else 0.0)
    return CLEAN_AP[model] * (1 - damage * severity)


def _metrics(ap: float) -> dict:
    return {"AP": ap, "AP50": min(1.0, 1.5 * ap), "AP75": 0.8 * ap, "AP_small": None,
            "AP_medium": 0.9 * ap, "AP_large": 1.1 * ap}


def write_synthetic_study(root: Path) -> tuple[list[Path], list[Path]]:
    eval_files = []
    for model in MODELS:
        runtime = "onnxruntime" if model.endswith("-ort") else "torch"
        for condition in ["clean", *DAMAGE]:
            severities = [0] if condition == "clean" else [1, 2]
            results = [{"severity": s, "num_images": 200, "seconds": 1.5,
                        "detections": f"results/eval/{model}/detections/{condition}-s{s}.json",
                        "metrics": _metrics(CLEAN_AP[model] if s == 0 else corrupted_ap(model, condition, s))}
                       for s in severities]
            path = root / "eval" / model / f"{condition}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"model": model, "condition": condition, "runtime": runtime,
                                        "results": results}))
            eval_files.append(path)
    export = root / "models" / "student-ptq-percentile-w8a8.export.json"
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_text(json.dumps({
        "model": "student-ptq-percentile-w8a8", "fp32_onnx": "a.onnx", "int8_onnx": "b.onnx",
        "size_bytes": {"fp32_onnx": 8_000_000, "int8_onnx": 2_100_000},
        "latency_ms": {"fp32_onnx": 40.0, "int8_onnx": 16.0, "batch": 8, "runs": 30, "threads": 2},
        "speedup_int8_vs_fp32": 2.5,
        "agreement": {"max_abs_diff": {"boxes": 0.12, "scores": 0.01}, "within_one_step_fraction": 0.998,
                      "detections_match_iou50": 0.97},
        "calibration": {"split": "calib", "images": 160},
    }))
    return eval_files, [export]


def expected_robustness(model: str) -> dict:
    p = CLEAN_AP[model]
    mpc = sum(corrupted_ap(model, c, s) for c in DAMAGE for s in (1, 2)) / 4
    return {"P": p, "mPC": mpc, "rPC": mpc / p}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    eval_files, export_files = write_synthetic_study(root)
    summary = write_study_report(eval_files, export_files, study_params(), out_root=root / "results")
    return root / "results", summary


def test_every_output_is_written(report):
    out, summary = report
    for relative in ["metrics/robustness.json", "metrics/export.json", "tables/ap_by_condition.csv",
                     "tables/robustness.csv", "tables/quantization_drop.csv", "tables/ap_vs_severity.csv",
                     "tables/ap_vs_severity.json", "plots/ap_vs_severity.png", "plots/rpc_per_model.png",
                     "plots/ap_per_corruption.png", "report.md"]:
        assert (out / relative).is_file(), relative
    assert sorted(summary["models"]) == sorted(MODELS)   # the study's order, then the rest
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_robustness_metrics_match_hand_computation(report):
    out, summary = report
    metrics = json.loads((out / "metrics" / "robustness.json").read_text())
    assert set(metrics) == set(MODELS)
    for model in MODELS:
        expected = expected_robustness(model)
        for key in ("P", "mPC", "rPC"):
            assert metrics[model][key] == pytest.approx(expected[key])
            assert summary["robustness"][model][key] == pytest.approx(expected[key])
        assert metrics[model]["AP50_clean"] == pytest.approx(min(1.0, 1.5 * CLEAN_AP[model]))
    export = json.loads((out / "metrics" / "export.json").read_text())
    assert export["student-ptq-percentile-w8a8"]["speedup_int8_vs_fp32"] == 2.5


def test_report_names_each_model_and_the_drop(report):
    out, _ = report
    text = (out / "report.md").read_text()
    for model in MODELS:
        assert f"`{model}`" in text
    quantized, fp32 = expected_robustness("student-ptq-percentile-w8a8"), expected_robustness("student-fp32")
    assert f"{100 * (quantized['P'] - fp32['P']):+.1f}" in text
    assert f"{100 * (quantized['mPC'] - fp32['mPC']):+.1f}" in text
    assert f"{100 * (quantized['rPC'] - fp32['rPC']):+.1f}" in text
    assert "Does W8A8 quantization amplify the loss under corruption?" in text
    assert "rPC is lower for 1, higher for 0 and mixed across seeds for 0 of 1 methods" in text
    assert "## Methods ranked per bit width" in text
    assert ("Deployed (onnxruntime) matches simulated (PyTorch) within 0.5 AP points on P and mPC for 1 of 1"
            in text)                                                  # 0.2 points apart
    assert "Highest rPC: **teacher-fp32**" in text
    assert "](plots/ap_vs_severity.png)" in text


def test_tables_hold_the_study(report):
    import pandas as pd
    out, _ = report
    ap = pd.read_csv(out / "tables" / "ap_by_condition.csv")
    assert len(ap) == len(MODELS) * (1 + 2 * 2)
    drop = pd.read_csv(out / "tables" / "quantization_drop.csv")
    assert set(drop["model"]) == {"student-ptq-percentile-w8a8", "student-ptq-percentile-w8a8-ort"}
    assert drop["dP_points"].iloc[0] == pytest.approx(-4.0)
    curves = pd.read_csv(out / "tables" / "ap_vs_severity.csv")
    teacher = curves[curves["model"] == "teacher-fp32"].set_index("severity")["AP"]
    assert teacher[1] == pytest.approx((corrupted_ap("teacher-fp32", "gaussian_noise", 1)
                                        + corrupted_ap("teacher-fp32", "fog", 1)) / 2)


def test_plots_are_valid_images(report):
    out, _ = report
    for png in (out / "plots").glob("*.png"):
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 200


def test_missing_corruption_is_an_error_naming_the_model(tmp_path):
    eval_files, export_files = write_synthetic_study(tmp_path)
    eval_files = [p for p in eval_files if p != tmp_path / "eval" / "student-fp32" / "fog.json"]
    with pytest.raises(QuantdetError, match=r"student-fp32.*'fog', 1"):
        write_study_report(eval_files, export_files, study_params(), out_root=tmp_path / "results")


def test_missing_and_malformed_inputs_name_the_file(tmp_path):
    eval_files, export_files = write_synthetic_study(tmp_path)
    missing = tmp_path / "eval" / "teacher-fp32" / "snow.json"
    with pytest.raises(QuantdetError, match="snow.json"):
        write_study_report([*eval_files, missing], export_files, study_params(), out_root=tmp_path / "r")
    eval_files[0].write_text('{"model": "teacher-fp32", "condition": "clean", "results": [{"severity": 0}]}')
    with pytest.raises(QuantdetError, match=rf"{eval_files[0].name}.*metrics"):
        write_study_report(eval_files, export_files, study_params(), out_root=tmp_path / "r")
    eval_files[0].write_text("{not json")
    with pytest.raises(QuantdetError, match="not valid JSON"):
        write_study_report(eval_files, export_files, study_params(), out_root=tmp_path / "r")


def test_paired_comparisons_pair_seeds_and_claim_only_consistent_effects():
    import pandas as pd

    from quantdet.report import tables as t
    from quantdet.report.findings import _qrid_answers
    from quantdet.study import parse_model_name

    params = {"study": {"seed": 0}, "quant": {"degradations": {"names": ["gaussian_noise"]}},
              "corruptions": {"names": ["gaussian_noise", "fog"], "heldout": ["spatter"], "severities": [1]}}
    values = {  # model: (P, mPC)
        "student-fp32": (0.50, 0.30), "student-fp32-s1": (0.52, 0.30),
        "student-ptq-percentile-w8a8": (0.45, 0.25), "student-ptq-percentile-w8a8-s1": (0.47, 0.26),
        "student-ptq-dacal-w8a8": (0.44, 0.27), "student-ptq-dacal-w8a8-s1": (0.47, 0.25),
    }
    rows = []
    for model, (p, mpc) in values.items():
        name = parse_model_name(model)
        rows.append({"model": model, "bits": name.bits_label, "runtime": "torch", "role": "student",
                     "family": "fp32" if not name.quantized else name.stage, "method": name.method or "fp32",
                     "base": name.base, "seed": name.run_seed(params), "P": p, "mPC": mpc, "rPC": mpc / p,
                     "mPC_seen": mpc, "mPC_unseen": mpc, "mPC_heldout": mpc - 0.05})
    robustness = pd.DataFrame(rows)
    pairs = t.paired_comparisons(robustness)
    dacal = pairs[pairs["comparison"].str.startswith("degradation-aware")].sort_values("seed")
    assert dacal["seed"].tolist() == [0, 1]
    assert dacal["dmPC_points"].tolist() == pytest.approx([2.0, -1.0])   # dacal − percentile per seed
    summary = t.comparison_summary(pairs)
    row = summary[summary["comparison"].str.startswith("degradation-aware")].iloc[0]
    assert (row["dmPC_mean"], row["dmPC_min"], row["dmPC_max"]) == pytest.approx((0.5, -1.0, 2.0))
    text = " ".join(_qrid_answers(summary))
    assert "ΔmPC +0.5 points, no consistent direction (seeds: +2.0, -1.0)" in text
    # percentile lowers rPC against its own seed's FP32 student under both seeds; dacal only under one
    assert "rPC is lower for 1, higher for 0 and mixed across seeds for 1 of 2 methods" in text
    spread = t.seed_spread(robustness).set_index("model")
    assert spread.loc["student-fp32", "P_min"] == 0.50 and spread.loc["student-fp32", "P_max"] == 0.52


def test_zero_shot_and_mimic_comparisons_and_report_sections(tmp_path):
    """Zero-shot models are compared with real-data PTQ of the same observer (the 1-point target
    at W8A8 only) and shown beside the best real-data PTQ; mimic variants with the student
    fine-tuned alone, with a λ sweep; the report gets a section for each, the grid image and
    the generators' losses."""
    import pandas as pd

    from quantdet.report import tables as t
    from quantdet.report.findings import _mimic_answers, _zero_shot_answers
    from quantdet.report.markdown import _mimic, _zero_shot
    from quantdet.study import parse_model_name

    params = {"study": {"seed": 0},
              "matrix": {"ptq": ["minmax", "kl", "zeroq"], "qat": ["ait"], "mimic": ["alone", "plain", "qmimic",
                                                                               "qmimic_l10"]},
              "quant": {"degradations": {"names": []}, "zeroshot": {"observer": "minmax"}},
              "distill": {"mimic": {"lambda": 1.0, "step": 0.25}},
              "corruptions": {"names": ["fog"], "heldout": [], "severities": [1]}}
    values = {"student-fp32": 0.50, "student-ptq-minmax-w8a8": 0.48, "student-ptq-zeroq-w8a8": 0.474,
              "student-qat-ait-w8a8": 0.46, "student-ptq-minmax-w4a4": 0.30, "student-ptq-kl-w4a4": 0.40,
              "student-ptq-zeroq-w4a4": 0.35, "student-mimic-alone-w8a8": 0.47,
              "student-mimic-plain-w8a8": 0.472, "student-mimic-qmimic-w8a8": 0.475,
              "student-mimic-qmimic_l10-w8a8": 0.44}
    rows = []
    for model, p in values.items():
        name = parse_model_name(model)
        rows.append({"model": model, "bits": name.bits_label, "runtime": "torch", "role": "student",
                     "family": "fp32" if not name.quantized else name.stage, "method": name.method or "fp32",
                     "base": name.base, "seed": 0, "P": p, "mPC": p / 2, "rPC": 0.5,
                     "mPC_seen": float("nan"), "mPC_unseen": p / 2, "mPC_heldout": float("nan")})
    robustness = pd.DataFrame(rows)
    summary = t.comparison_summary(t.paired_comparisons(robustness, t.study_comparisons(params)))
    by = summary.set_index(["comparison", "bits"])
    zeroq = by.loc[("zero-shot PTQ on zeroq images vs PTQ on real images (minmax)", "W8A8")]
    assert (zeroq["group"], zeroq["baseline"]) == ("zeroshot", "student-ptq-minmax-w8a8")
    assert zeroq["dP_mean"] == pytest.approx(-0.6)
    assert by.loc[("zero-shot PTQ on zeroq images vs PTQ on real images (minmax)", "W4A4"),
                  "dP_mean"] == pytest.approx(5.0)
    assert by.loc[("zero-shot ait QAT vs PTQ on real images (minmax)", "W8A8"), "dP_mean"] == pytest.approx(-2.0)
    assert by.loc[("quantization mimic vs plain mimic", "W8A8"), "dP_mean"] == pytest.approx(0.3)
    assert by.loc[("mimic variant qmimic vs the student fine-tuned alone", "W8A8"),
                  "dmPC_mean"] == pytest.approx(0.25)
    w8, w4 = _zero_shot_answers(summary)
    assert "at W8A8" in w8 and "1 of 2 meet it" in w8
    assert "`student-ptq-zeroq-w8a8` ΔP -0.6, ΔmPC -0.3 (within)" in w8
    assert "`student-qat-ait-w8a8` ΔP -2.0, ΔmPC -1.0 (outside)" in w8
    assert "at W4A4" in w4 and "no target" in w4 and "`student-ptq-zeroq-w4a4` ΔP +5.0, ΔmPC +2.5;" not in w4
    assert w4.endswith("`student-ptq-zeroq-w4a4` ΔP +5.0, ΔmPC +2.5.")  # no verdict without a target
    mimic_lines = _mimic_answers(summary, robustness, default_lambda=1.0)
    assert "mPC is higher for 3 and lower for 1" in mimic_lines[0]
    assert mimic_lines[1] == ("**λ sweep of quantization mimic** (λ 0 = fine-tuned alone; simulated, one seed): "
                              "W8A8 λ 0: P 47.0 mPC 23.5, λ 1: P 47.5 mPC 23.8, λ 10: P 44.0 mPC 22.0 "
                              "(best mPC at λ 1).")
    info = {"gdfq": {"images": 32, "seconds": 29.0, "bns_first": 18.4, "bns_last": 5.1,
                     "class_first": 2.5, "class_last": 2.1}}
    text = _zero_shot(robustness, summary, params, {"gdfq": "plots/generated_gdfq.png"}, info)
    assert "![gdfq images beside real ones](plots/generated_gdfq.png)" in text
    assert "zero-shot PTQ on zeroq images" in text
    assert "| gdfq | 32 | 29 | 18.4 → 5.1 | 2.5 → 2.1 |" in text
    # beside the best real-data PTQ of its width (kl at W4A4, not the minmax baseline)
    assert ("| `student-ptq-zeroq-w4a4` | W4A4 | 35.0 | 17.5 | 50.0% | `student-ptq-kl-w4a4` | 40.0 | 20.0 "
            "| -5.0 | -2.5 |") in text
    mimic_text = _mimic(robustness, summary, params)
    assert "`student-mimic-qmimic-w8a8`" in mimic_text and "quantization mimic vs plain mimic" in mimic_text



def test_report_names_the_dataset_and_its_prepared_classes(tmp_path, monkeypatch):
    eval_files, export_files = write_synthetic_study(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "summary.json").write_text(json.dumps({"classes": ["ring", "spot"]}))
    monkeypatch.chdir(tmp_path)  # a study folder: the report finds data/prepared there
    params = study_params()
    params["data"].update(source="yolo", yolo={"data_yaml": "data/raw/shapes/data.yaml"})
    write_study_report(eval_files, export_files, params, out_root=tmp_path / "results")
    text = (tmp_path / "results" / "report.md").read_text()
    assert "- **Dataset**: YOLO-format data (`data/raw/shapes/data.yaml`), 2 classes (ring, spot); evaluated" in text


def test_the_detector_plot_has_a_panel_per_detector_with_each_model_and_its_intervals(tmp_path, monkeypatch):
    """plot_detectors_accuracy_vs_robustness: one visible panel per detector of detectors.csv,
    a point per model (FP32 square, W8A8 circle, W4A4 triangle) with both interval bars."""
    import pandas as pd

    from quantdet.report import plots
    from quantdet.study import parse_model_name

    def row(detector, model, bits, stage, method, p, mpc):
        assert bits == parse_model_name(model).bits_label
        return {"detector": detector, "model": model, "bits": bits, "stage": stage, "method": method,
                "P": p, "P_low": p - 0.02, "P_high": p + 0.01, "mPC": mpc, "mPC_low": mpc - 0.01,
                "mPC_high": mpc + 0.02}

    # bits as detector_rows writes them (quantdet.study's bits_label)
    rows = pd.DataFrame([row("student", "student-fp32", "fp32", "fp32", "fp32", 0.40, 0.17),
                         row("student", "student-qat-daqat-w8a8-ort", "W8A8", "qat", "daqat", 0.38, 0.18),
                         row("student", "student-qat-daqat-w4a4-ort", "W4A4", "qat", "daqat", 0.20, 0.10),
                         row("yolo26n", "yolo26n-fp32", "fp32", "fp32", "fp32", 0.31, 0.13),
                         row("yolo26n", "yolo26n-ptq-minmax-w8a8-ort", "W8A8", "ptq", "minmax", 0.30, 0.12)])
    seen = {}

    def keep(fig, path):
        seen["axes"] = [ax for ax in fig.axes if ax.get_visible()]
        return path
    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_detectors_accuracy_vs_robustness(rows, tmp_path / "d.png")
    axes = seen["axes"]
    assert [ax.get_title() for ax in axes] == ["student", "yolo26n"]
    for ax, models in zip(axes, (3, 2)):
        handles, labels = ax.get_legend_handles_labels()
        assert len(handles) == models
        assert all(h.has_xerr and h.has_yerr for h in handles)
    _, labels = axes[0].get_legend_handles_labels()
    assert labels == ["fp32", "qat daqat W8A8", "qat daqat W4A4"]
    markers = [h.lines[0].get_marker() for h in axes[0].get_legend_handles_labels()[0]]
    assert markers == ["s", "o", "^"]
