"""The smoke study with Ultralytics YOLO detectors (the yolo family) as student and teacher:
the methods whose code meets the family's network (the calibration with degraded images, the
zero-shot generators that read its BatchNorm statistics, the QAT recipes that change its
layers or train on its loss, mimic on its feature taps) and the peers that quantize the PyTorch
network or are YOLO's own (Ultralytics' ONNX INT8 recipe), trained, quantized, exported to
integer ONNX, evaluated and reported (deployed in onnxruntime; the smoke study's yolo11n
student covers the simulated evaluation and the deployment precisions), through Snakemake,
reusing the smoke study's prepared and corrupted data. One smoke config for the family (CI
keeps one per family): the other observers and ONNX peers are the same code on every family
(the smoke study runs them), and so are DA-QAT and FQN (the smoke study's yolo11n student runs
DA-QAT, which shares their training loop) and ModelOpt, which quantizes the ONNX graph. The
corrupted conditions: one corruption and the held-out one (the smoke study evaluates the rest)."""
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

STUDENT = {"detector": "yolo", "arch": "yolov8n.yaml"}
TEACHER = {"detector": "yolo", "arch": "yolov8s.yaml", "epochs": 2}
# litert: LiteRT's own INT8 (its converter in .venv-litert, which `make test` installs), run in LiteRT
LITERT = __import__("quantdet.export.litert", fromlist=["x"]).unavailable() is None
PEERS = ["ultralytics_onnx", "pt2e"] + (["litert"] if LITERT else [])
PTQ = ["minmax", "dacal", "zeroq"]
QAT = ["oaqat", "ait"]

@pytest.fixture(scope="module")
def yolo_study(smoke_study, tmp_path_factory):
    work = tmp_path_factory.mktemp("yolo") / "study"
    shutil.copytree(smoke_study, work, symlinks=True, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("mlflow.db", "models", "eval", "logs",
                                                  "checkpoints", "metrics", "report*", ".snakemake"))
    params = load_params(work / "params.yaml")
    params["study"]["name"] = "smoke-yolo"
    params["models"]["student"] = STUDENT
    params["models"]["teacher"] = TEACHER
    # the smoke study runs a YOLO student (yolo11n) simulated and deployed, with deployment
    # precisions and repeat seeds: here each method's models are evaluated deployed only
    params["models"]["students"] = None
    params["corruptions"]["suites"] = ["imagecorruptions"]   # the smoke study evaluates the others
    params["corruptions"]["names"] = ["gaussian_noise"]     # and the held-out speckle_noise
    params["export"]["latency_runtimes"] = ["onnxruntime"]   # the smoke study times OpenVINO too
    params["matrix"].update(peer=PEERS, ptq=PTQ, qat=QAT, runtimes=["onnxruntime"], precisions={},
                            repeat={"seeds": [], "ptq": [], "qat": []})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on",
           "HOME": str(work / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work),
                          "--cores", "2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-5000:]
    return work


def test_every_model_of_the_matrix_is_evaluated_and_reported(yolo_study):
    params = load_params(yolo_study / "params.yaml")
    robustness = json.loads((yolo_study / "results/metrics/robustness.json").read_text())
    assert set(robustness) == set(study.measured_models(params))
    for model, entry in robustness.items():
        assert 0.0 <= entry["P"] <= 1.0, model
    report = (yolo_study / "results/report.md").read_text()
    assert "Ultralytics YOLO `yolov8n.yaml`" in report


def test_the_model_files_are_yolo_networks_rebuilt_offline(yolo_study):
    from quantdet.models.io import load_model

    model, payload = load_model(yolo_study / "results/models/student-ptq-minmax-w8a8.pt")
    assert payload["detector"]["family"] == "yolo" and payload["detector"]["arch"] == "yolov8n.yaml"
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 64, 64))
    assert len(outputs) == 6  # box and class maps of three levels, never concatenated


def test_the_integer_export_runs_every_conv_as_an_integer_kernel(yolo_study, tmp_path):
    """onnxruntime's optimised graph of the W8A8 export: every convolution of backbone, neck and
    head is a QLinearConv (none left as a float Conv); the decode is not in the graph."""
    import onnx

    from quantdet.export.runner import OrtDetector

    path = yolo_study / "results/models/student-ptq-minmax-w8a8.onnx"
    optimized = tmp_path / "optimized.onnx"
    OrtDetector(path, optimized_model_path=str(optimized))
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    convs = sum(op in ("Conv", "FusedConv") for op in ops)
    assert ops.count("QLinearConv") > 0 and convs == 0, sorted(set(ops))
    report = json.loads((yolo_study / "results/models/student-ptq-minmax-w8a8.export.json").read_text())
    within = report["agreement"]["within_one_step_fraction"]
    assert set(within) == {f"p{level}_{kind}" for level in (3, 4, 5) for kind in ("box", "cls")}


def test_nothing_is_written_outside_the_study(yolo_study):
    """Ultralytics keeps its settings in the study (results/.ultralytics), not under HOME, and
    its MLflow callback never ran (quantdet's runs only)."""
    assert not (yolo_study / "home" / ".config" / "Ultralytics").exists()
    assert not (yolo_study / "runs").exists()


def test_ultralytics_own_onnx_int8_is_a_peer_of_the_same_network(yolo_study):
    """Ultralytics' recipe, run by its own function: the convolutions quantized (QDQ, per
    tensor), every other node left in float; evaluated in the same table as our methods."""
    import onnx

    model = "student-peer-ultralytics_onnx-w8a8-ort"
    report = json.loads((yolo_study / f"results/models/{model[:-4]}.export.json").read_text())
    settings = report["settings"]
    assert settings["tool"] == "ultralytics" and settings["function"].endswith("onnx_int8_quantize")
    graph = onnx.load(str(yolo_study / f"results/models/{model[:-4]}.onnx")).graph
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in {o for d in graph.node if d.op_type == "DequantizeLinear"
                                        for o in d.output} for n in convs)
    assert dequantized and settings["nodes_kept_float"] > 0
    robustness = json.loads((yolo_study / "results/metrics/robustness.json").read_text())
    assert 0.0 <= robustness[model]["P"] <= 1.0
    assert "Ultralytics' ONNX INT8" in (yolo_study / "results/report.md").read_text()


@pytest.mark.skipif(not LITERT, reason="LiteRT's converter environment is not installed (make venv-litert)")
def test_litert_own_int8_is_a_peer_deployed_in_litert(yolo_study):
    """LiteRT's PT2E INT8 of the YOLO student: a full-integer .tflite model (every convolution on
    int8 inputs), evaluated in LiteRT on every condition, timed against the FP32 model the same
    tool converts, and reported with the other peers."""
    model = "student-peer-litert-w8a8-lrt"
    record = json.loads((yolo_study / "results/models/student-peer-litert-w8a8.export.json").read_text())
    assert record["runtime"] == "litert" and record["settings"]["tool"] == "litert-torch"
    assert set(record["operators"]["int8"]["convolutions_by_input_type"]) == {"int8"}
    assert record["latency_by_runtime"]["litert"]["int8_onnx"] > 0
    assert record["detector"]["arch"] == "yolov8n.yaml"
    assert (yolo_study / "results/models/student-peer-litert-w8a8.tflite").stat().st_size > 0
    robustness = json.loads((yolo_study / "results/metrics/robustness.json").read_text())
    assert 0.0 <= robustness[model]["P"] <= 1.0
    metrics = json.loads((yolo_study / f"results/eval/{model}/clean/metrics.json").read_text())
    assert metrics["results"]
    report = (yolo_study / "results/report.md").read_text()
    assert f"`{model}`" in report and "LiteRT ms" in report
