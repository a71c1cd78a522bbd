"""Extending a finished smoke study: appending to the matrix (a PTQ method, a QAT recipe, a bit
width, a repeat seed) plans exactly the new jobs and the study-wide ones (intervals, report); changing one method's setting
reruns that method's chain only; a method of the user's own, from one file, runs end to end."""
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


def _snakemake(workdir, *args, env=None):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "off",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **(env or {})}
    return subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                           *args], capture_output=True, text=True, env=env, check=True)


def _copy(smoke_study, tmp_path, change) -> Path:
    """The finished smoke study in a new folder, its params changed by `change(params)`."""
    work = tmp_path / "extended"
    shutil.copytree(smoke_study, work, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db"),
                    copy_function=shutil.copy2)
    params = load_params(work / "params.yaml")  # the overlay merged: every key to change is there
    change(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def _planned(work, env=None) -> set[str]:
    """The study-table names of the jobs `snakemake -n` plans (by their first output)."""
    dry = _snakemake(work, "-n", "--cores", "1", env=env).stdout
    outputs = [line.split(",")[0].strip() for line in re.findall(r"^    output: (.*)$", dry, re.M)]
    by_output = {j.outputs[0]: j.name for j in study.jobs(load_params(work / "params.yaml"))}
    return {by_output[o] for o in outputs}


def _new_jobs(before: Path, after: Path) -> set[str]:
    old = {j.name for j in study.jobs(load_params(before / "params.yaml"))}
    return {j.name for j in study.jobs(load_params(after / "params.yaml"))} - old | {"intervals", "report"}


@pytest.mark.parametrize("change", [
    lambda p: p["matrix"]["ptq"].append("ema_minmax"),
    lambda p: p["matrix"]["qat"].append("fqn"),
    lambda p: p["matrix"].update(bits=[8, 4]),
    lambda p: p["matrix"]["repeat"]["seeds"].append(2),
    lambda p: p["matrix"]["mimic"].append("alone"),
    lambda p: p["matrix"]["peer"].append("ort_entropy"),
], ids=["ptq-method", "qat-recipe", "bit-width", "repeat-seed", "mimic-variant", "peer"])
def test_appending_to_the_matrix_plans_only_the_new_jobs(smoke_study, tmp_path, change):
    work = _copy(smoke_study, tmp_path, change)
    planned = _planned(work)
    assert planned == _new_jobs(smoke_study, work), planned ^ _new_jobs(smoke_study, work)
    assert len(planned) > 1


def _chain(jobs, changed: set[str]) -> set[str]:
    """The changed jobs and every job downstream of them."""
    by_output = {o: j.name for j in jobs for o in j.outputs}
    chain, grew = set(changed), True
    while grew:
        grew = False
        for job in jobs:
            if job.name not in chain and any(by_output.get(i) in chain for i in job.inputs):
                chain.add(job.name)
                grew = True
    return chain


def test_changing_one_methods_setting_reruns_only_its_chain(smoke_study, tmp_path):
    work = _copy(smoke_study, tmp_path,
                 lambda p: p["quant"]["qat"]["outlier"].update(loss_weight=0.5))
    jobs = study.jobs(load_params(work / "params.yaml"))
    expected = _chain(jobs, {j.name for j in jobs if "quant.qat.outlier" in j.reads})
    assert expected == {"qat-student-qat-oaqat-w8a8", "export-student-qat-oaqat-w8a8",
                        "evaluate-student-qat-oaqat-w8a8", "evaluate-student-qat-oaqat-w8a8-ort",
                        "intervals", "report"}
    assert _planned(work) == expected


def test_a_method_of_ones_own_runs_from_one_file(smoke_study, tmp_path):
    """tests/toy_method.py registers a PTQ method (and the observer it brings); listed in the
    matrix, it is calibrated, exported, evaluated and reported like the built-in ones, and
    `quantdet methods` lists it."""
    env = {"QUANTDET_METHODS": "tests.toy_method"}
    work = _copy(smoke_study, tmp_path, lambda p: p["matrix"]["ptq"].append("toy_shrunk_minmax"))
    _snakemake(work, "--cores", "2", env=env)
    robustness = json.loads((work / "results/metrics/robustness.json").read_text())
    for model in ("student-ptq-toy_shrunk_minmax-w8a8", "student-ptq-toy_shrunk_minmax-w8a8-ort"):
        assert 0.0 <= robustness[model]["P"] <= 1.0
    assert "toy: min/max ranges shrunk by 10%" in (work / "results/report.md").read_text()
    listed = subprocess.run([str(BIN / "quantdet"), "methods"], capture_output=True, text=True,
                            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}, check=True).stdout
    assert "toy_shrunk_minmax" in listed


def test_aciq_runs_end_to_end(smoke_study, tmp_path):
    """ACIQ (methods/aciq.py: one file, no other change) through the smoke study."""
    work = _copy(smoke_study, tmp_path, lambda p: p["matrix"]["ptq"].append("aciq"))
    _snakemake(work, "--cores", "2")
    robustness = json.loads((work / "results/metrics/robustness.json").read_text())
    assert 0.0 <= robustness["student-ptq-aciq-w8a8-ort"]["P"] <= 1.0
    export = json.loads((work / "results/models/student-ptq-aciq-w8a8.export.json").read_text())
    assert export["graph"]["integer_weights"] > 10


def test_a_peer_quantizer_is_evaluated_deployed_and_ranked(smoke_study):
    """onnxruntime's quantize_static (methods/ort_static.py, the smoke study's peer): an integer
    ONNX model from the FP32 ONNX one, on the same calibration images, evaluated deployed only,
    and compared in the report with each of our deployed models."""
    robustness = json.loads((smoke_study / "results/metrics/robustness.json").read_text())
    assert "student-peer-ort_minmax-w8a8-ort" in robustness
    assert "student-peer-ort_minmax-w8a8" not in robustness  # no PyTorch twin
    import onnx

    model = onnx.load(str(smoke_study / "results/models/student-peer-ort_minmax-w8a8.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    ptq = json.loads((smoke_study / "results/models/student-ptq-minmax-w8a8.export.json").read_text())
    assert meta["quantdet.calibration_fingerprint"] == ptq["calibration"]["fingerprint"]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    intervals = json.loads((smoke_study / "results/metrics/intervals.json").read_text())
    peer = [c for c in intervals["comparisons"] if c["group"] == "peer"]
    assert peer and all(c["baseline"] == ["student-peer-ort_minmax-w8a8-ort"] for c in peer)
    assert "**Does a quantdet method beat the best peer at W8A8?**" in (smoke_study / "results/report.md").read_text()


def test_the_other_tools_peers_run_end_to_end(smoke_study, tmp_path):
    """OpenVINO NNCF's nncf.quantize (methods/nncf_peer.py, mixed preset) and where installed
    NVIDIA ModelOpt's ONNX INT8 PTQ (methods/modelopt_peer.py), appended to the smoke study: made from the same FP32 model and
    calibration images as the onnxruntime peer, evaluated deployed on every condition, and
    ranked beside ours."""
    import importlib.util

    import onnx

    # nncf's default preset is the same code as nncf_mixed; pt2e runs in tests/test_yolo_study.py
    added = ["nncf_mixed"] + (["modelopt"] if importlib.util.find_spec("modelopt") else [])
    work = _copy(smoke_study, tmp_path, lambda p: p["matrix"]["peer"].extend(added))
    _snakemake(work, "--cores", "2")
    robustness = json.loads((work / "results/metrics/robustness.json").read_text())
    peers = [f"student-peer-{p}-w8a8-ort" for p in ["ort_minmax", *added]]
    ptq = json.loads((work / "results/models/student-ptq-minmax-w8a8.export.json").read_text())
    report = (work / "results/report.md").read_text()
    for peer in added:
        model = f"student-peer-{peer}-w8a8"
        assert 0.0 <= robustness[f"{model}-ort"]["P"] <= 1.0 and 0.0 <= robustness[f"{model}-ort"]["mPC"] <= 1.0
        assert model not in robustness  # no PyTorch twin
        meta = {p.key: p.value for p in onnx.load(str(work / f"results/models/{model}.onnx")).metadata_props}
        assert meta["quantdet.calibration_fingerprint"] == ptq["calibration"]["fingerprint"]
        conditions = {p.name for p in (work / f"results/eval/{model}-ort").iterdir()}
        assert conditions == {p.name for p in (work / "results/eval/student-fp32").iterdir()}
        assert f"{model}-ort" in report
    intervals = json.loads((work / "results/metrics/intervals.json").read_text())
    peer = [c for c in intervals["comparisons"] if c["group"] == "peer"]
    assert peer and all(c["baseline"][0] in peers for c in peer)
    assert "OpenVINO NNCF nncf.quantize (ONNX backend), mixed preset" in report


def test_openvino_is_a_second_runtime_for_the_same_onnx_models(smoke_study, tmp_path):
    """matrix.runtimes + openvino: exactly the OpenVINO evaluations of the exported models (ours
    and the peer's) are added; each is compared with the same file in onnxruntime."""
    work = _copy(smoke_study, tmp_path, lambda p: p["matrix"]["runtimes"].append("openvino"))
    planned = _planned(work)
    assert planned == _new_jobs(smoke_study, work)
    assert {"evaluate-student-ptq-minmax-w8a8-ov", "evaluate-student-peer-ort_minmax-w8a8-ov"} <= planned
    assert all(j.startswith("evaluate-") and j.endswith("-ov") for j in planned - {"intervals", "report"})
    _snakemake(work, "--cores", "2")
    metrics = json.loads((work / "results/eval/student-ptq-minmax-w8a8-ov/clean/metrics.json").read_text())
    assert metrics["runtime"] == "openvino" and metrics["runtime_info"]["precision_hint"] == "f32"
    intervals = json.loads((work / "results/metrics/intervals.json").read_text())
    runtime = {c["treatment"][0]: c for c in intervals["comparisons"] if c["group"] == "runtime"}
    assert runtime["student-ptq-minmax-w8a8-ov"]["baseline"] == ["student-ptq-minmax-w8a8-ort"]
    assert "student-peer-ort_minmax-w8a8-ov" in runtime
    assert "**OpenVINO against onnxruntime**" in (work / "results/report.md").read_text()
