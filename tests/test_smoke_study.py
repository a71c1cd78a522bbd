"""The smoke study (tests/smoke/params.yaml) through Snakemake itself: every stage, tiny sizes."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantdet import study
from quantdet.config import load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _snakemake(workdir, *args, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                           *args], capture_output=True, text=True, env=env, check=check)


# smoke_study (tests/conftest.py): the study run once per session, shared with test_cluster.py


def test_report_and_metrics_cover_every_model(smoke_study):
    params = load_params(smoke_study / "params.yaml")
    robustness = json.loads((smoke_study / "results/metrics/robustness.json").read_text())
    # a deployment precision this machine cannot run is left out of the figures, said in the report
    assert set(robustness) == set(study.measured_models(params))
    for model, values in robustness.items():
        assert 0.0 <= values["P"] <= 1.0 and "mPC" in values, model
    report = (smoke_study / "results/report.md").read_text()
    for model in study.evaluated_models(params):
        assert model in report
    for plot in ("ap_vs_severity", "rpc_per_model", "ap_per_corruption", "accuracy_vs_robustness"):
        assert (smoke_study / f"results/plots/{plot}.png").stat().st_size > 1000


def test_every_evaluation_has_metrics_and_coco_detections(smoke_study):
    params = load_params(smoke_study / "params.yaml")
    for model in study.evaluated_models(params):
        for condition in study.conditions(params):
            result = json.loads((smoke_study / study.eval_metrics_file(model, condition)).read_text())
            if model in study.not_run_here(params):
                assert result["not_run"] and result["results"] == [], model
                continue
            assert [r["severity"] for r in result["results"]] == study.severities_of(condition, params)
            for r in result["results"]:
                detections = json.loads((smoke_study / r["detections"]).read_text())
                assert isinstance(detections, list)
                assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in detections)


def test_exports_record_latency_agreement_and_calibration(smoke_study):
    params = load_params(smoke_study / "params.yaml")
    for model in study.quantized_models(params):
        report = json.loads((smoke_study / f"results/models/{model}.export.json").read_text())
        assert report["speedup_int8_vs_fp32"] > 0
        assert report["graph"]["integer_weights"] > 10
        assert report["calibration"]["fingerprint"]
        # barely trained models have tiny output ranges, so one step is tiny: a loose bound.
        # oaqat requantizes each convolution to 8 bits ahead of its side path, then to the
        # layer's grid: values already on one grid hit near-ties of the next, which
        # onnxruntime's integer requantization breaks differently (tests/test_outlier.py
        # checks the graph is exact with onnxruntime's fusions off)
        bound = 0.7 if "-oaqat-" in model else 0.8
        assert min(report["agreement"]["within_one_step_fraction"].values()) > bound
        if "-oaqat-" in model:  # outlier-aware: the FP16 side paths' size and latency
            side = report["outlier_side_paths"]
            assert side["extra_bytes"] > 0 and side["weights_kept_fp16"] > 0
            assert side["latency_ms_with"] > 0 and side["latency_ms_without"] > 0


def test_mlflow_has_one_parent_and_a_child_per_job(smoke_study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smoke_study / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quantdet")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("quantdet.role") == "study"]
    children = [r for r in runs if r.data.tags.get("quantdet.role") == "job"]
    assert len(parents) == 1
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    stages = {c.data.tags["quantdet.stage"] for c in children}
    assert stages == {"prepare", "corrupt", "pretrain", "zeroshot_data", "ptq", "qat", "mimic", "peer",
                      "export", "precision", "evaluate", "intervals", "report"}
    params = load_params(smoke_study / "params.yaml")
    n_eval = len(study.evaluated_models(params))     # one evaluation job per model
    assert sum(c.data.tags["quantdet.stage"] == "evaluate" for c in children) == n_eval
    # every training job records what it computed with (device, autocast, TF32)
    training = [c for c in children if c.data.tags["quantdet.stage"] in ("pretrain", "qat", "mimic",
                                                                        "zeroshot_data")]
    assert training and all(c.data.tags.get("quantdet.numerics.device") in ("cpu", "cuda") and
                            c.data.tags.get("quantdet.numerics.tf32") in ("True", "False")
                            for c in training)


def test_second_run_does_nothing_and_one_key_reruns_only_its_readers(smoke_study):
    dry = _snakemake(smoke_study, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    params = yaml.safe_load((smoke_study / "params.yaml").read_text())
    params["evaluate"]["nms_iou"] = 0.5
    changed = smoke_study.parent / "changed"
    shutil.copytree(smoke_study, changed, symlinks=True,
                    ignore=shutil.ignore_patterns("mlflow.db"), copy_function=shutil.copy2)
    (changed / "params.yaml").write_text(yaml.safe_dump(params))
    dry = _snakemake(changed, "-n", "--cores", "1")
    rules = set(re.findall(r"^rule (\w+):", dry.stdout, re.M)) - {"all"}
    # the export and precision jobs compare detections (decoded with evaluate's settings)
    assert rules == {"evaluate", "export", "precision", "precision_onnx", "intervals", "report"}, dry.stdout[-3000:]


def test_every_figure_has_its_interval_and_the_study_table_is_written(smoke_study):
    params = load_params(smoke_study / "params.yaml")
    intervals = json.loads((smoke_study / "results/metrics/intervals.json").read_text())
    assert set(intervals["models"]) == set(study.measured_models(params))
    assert set(intervals.get("not_run", {})) == set(study.not_run_here(params))
    robustness = json.loads((smoke_study / "results/metrics/robustness.json").read_text())
    for values in robustness.values():  # DVC metrics carry the bounds
        assert 0.0 <= values["P_low"] <= values["P_high"] <= 1.0
    report = (smoke_study / "results/report.md").read_text()
    assert "## Answers, with 95% intervals" in report
    # the other degradation suites: written once, each model's mean and relative AP with intervals
    assert intervals["suites"] == {"qrid": {"corruptions": {"noisy_low": [1], "mixed_50pct": [1]},
                                            "figures": ["mPC_qrid", "rPC_qrid"]},
                                   "moire": {"corruptions": {"moire": [3]}, "figures": ["mPC_moire", "rPC_moire"]}}
    for model, figures in intervals["models"].items():
        for name in ("mPC_qrid", "mPC_moire", "rPC_qrid", "rPC_moire"):
            if name.startswith("rPC") and figures["P"]["estimate"] == 0:
                assert figures[name]["estimate"] is None, (model, name)   # no relative AP where P is 0
            else:
                assert figures[name]["low"] <= figures[name]["estimate"] <= figures[name]["high"], (model, name)
    assert (smoke_study / "data/corrupted/noisy_low/1/annotations.json").is_file()
    assert (smoke_study / "data/corrupted/moire/3/annotations.json").is_file()
    assert "## Other degradation suites" in report and "### qrid" in report and "### moire" in report
    fp32 = [c for c in intervals["comparisons"] if c["group"] == "fp32"]
    assert fp32 and all("rPC_qrid" in c["differences"] for c in fp32)
    # QRID's protocol: each model's figure per qrid set over P, and each comparison's difference of it
    assert all(set(f["relative"]) == {"noisy_low", "mixed_50pct", "moire"} for f in intervals["models"].values())
    assert all(set(c["relative_differences"]) == {"noisy_low", "mixed_50pct", "moire"} for c in fp32)
    assert "## QRID's protocol" in report and "**(a) Does static INT8 lose more than FP32 under noise?**" in report
    table = (smoke_study / "results/study.tsv").read_text().splitlines()
    assert len(table) == len(study.jobs(params)) + 1


def test_snakemake_html_report_embeds_the_plots(smoke_study):
    html = smoke_study / "results" / "report.html"
    _snakemake(smoke_study, "--report", str(html))
    text = html.read_text(errors="ignore")
    assert html.stat().st_size > 10000
    for plot in ("ap_vs_severity.png", "rpc_per_model.png", "ap_per_corruption.png"):
        assert plot in text
