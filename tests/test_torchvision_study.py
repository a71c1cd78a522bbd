"""The smoke study with torchvision's detectors: RetinaNet as student and teacher (FQN's and
mimic's detector family), FCOS and SSDlite as the detector axis' students, trained from
scratch, quantized (PTQ incl. the zero-shot ZeroQ, QAT incl. FQN, mimic), exported to integer
ONNX, evaluated simulated and deployed and reported, through Snakemake, reusing the smoke
study's prepared and corrupted data. One smoke config for the three families (CI keeps one per
family group)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from quantdet import study
from quantdet.config import load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

STUDENT = {"detector": "retinanet", "arch": "resnet18", "fpn_channels": 32}
TEACHER = {"detector": "retinanet", "arch": "resnet34", "fpn_channels": 32, "epochs": 2}
SMALL = {"ptq": ["minmax"], "qat": ["daqat"], "peer": []}
STUDENTS = {"yolo11n": None, "yolo26n": None,   # QAT on each family's own loss: RetinaNet's and SSDlite's
            "fcos": {"detector": "fcos", "arch": "resnet18", "fpn_channels": 32, "matrix": {**SMALL, "qat": []}},
            "ssdlite": {"detector": "ssdlite", "arch": "mobilenet_v3_small", "matrix": SMALL}}


@pytest.fixture(scope="module")
def tv_study(smoke_study, tmp_path_factory):
    work = tmp_path_factory.mktemp("torchvision") / "study"
    shutil.copytree(smoke_study, work, symlinks=True, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("mlflow.db", "models", "eval", "logs",
                                                  "checkpoints", "metrics", "report*", ".snakemake"))
    params = load_params(work / "params.yaml")
    params["study"]["name"] = "smoke-torchvision"
    params["models"].update(student=STUDENT, teacher=TEACHER, students=STUDENTS)
    params["corruptions"]["suites"] = ["imagecorruptions"]   # the smoke study evaluates the others
    params["corruptions"]["names"] = ["gaussian_noise"]     # and the held-out speckle_noise
    params["export"]["latency_runtimes"] = ["onnxruntime"]   # the smoke study times OpenVINO too
    params["matrix"].update(ptq=["minmax", "zeroq"], qat=["fqn"], peer=[],
                            mixed=[], repeat={"seeds": [], "ptq": [], "qat": []}, precisions={})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work),
                          "--cores", "2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-5000:]
    return work


def test_every_model_of_the_matrix_is_evaluated_and_reported(tv_study):
    params = load_params(tv_study / "params.yaml")
    models = set(study.evaluated_models(params))
    assert {"fcos-fp32", "ssdlite-qat-daqat-w8a8", "student-qat-fqn-w8a8", "student-mimic-qmimic-w8a8"} <= models
    robustness = json.loads((tv_study / "results/metrics/robustness.json").read_text())
    assert set(robustness) == models - set(study.not_run_here(params))
    for model, entry in robustness.items():
        assert 0.0 <= entry["P"] <= 1.0, model
    report = (tv_study / "results/report.md").read_text()
    for title in ("torchvision RetinaNet `resnet18`", "torchvision FCOS `resnet18`",
                  "torchvision SSDlite `mobilenet_v3_small`"):
        assert title in report
    # the detector axis' own plot: each detector's models, P against mPC
    assert (tv_study / "results/plots/detectors_accuracy_vs_robustness.png").stat().st_size > 0
    assert "plots/detectors_accuracy_vs_robustness.png" in report


@pytest.mark.parametrize("model,family,per_level", [("student-ptq-minmax-w8a8", "retinanet", 2),
                                                    ("fcos-ptq-minmax-w8a8", "fcos", 3),
                                                    ("ssdlite-ptq-minmax-w8a8", "ssdlite", 2)])
def test_the_model_files_are_torchvision_networks_with_raw_maps(tv_study, model, family, per_level):
    from quantdet.models.io import load_model

    network, payload = load_model(tv_study / f"results/models/{model}.pt")
    assert payload["detector"]["family"] == family
    with torch.no_grad():
        outputs = network(torch.rand(1, 3, 64, 64))
    levels = 6 if family == "ssdlite" else 5   # SSDlite's six maps; P3-P7
    assert len(outputs) == per_level * levels


@pytest.mark.parametrize("model", ["student-ptq-minmax-w8a8", "fcos-ptq-minmax-w8a8", "ssdlite-ptq-minmax-w8a8"])
def test_the_integer_export_runs_the_convolutions_as_integer_kernels(tv_study, model, tmp_path):
    """onnxruntime's optimised graph of the W8A8 export: convolutions run as QLinearConv (FCOS's
    head convs feed GroupNorm, which stays float: their inputs are still integer); anchors, box
    decoding and NMS are not in the graph; simulated and deployed agree on every output."""
    import onnx

    from quantdet.export.runner import OrtDetector

    path = tv_study / f"results/models/{model}.onnx"
    optimized = tmp_path / "optimized.onnx"
    OrtDetector(path, optimized_model_path=str(optimized))
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    integer, float_convs = ops.count("QLinearConv"), sum(op in ("Conv", "FusedConv") for op in ops)
    assert integer > 0 and float_convs == 0, sorted(set(ops))
    assert "NonMaxSuppression" not in ops and "TopK" not in ops
    report = json.loads((tv_study / f"results/models/{model}.export.json").read_text())
    within = report["agreement"]["within_one_step_fraction"]
    assert within and all(0.0 <= v <= 1.0 for v in within.values())
