"""The ready study files (workflow/studies/*.yaml): valid params, and a full job graph in a dry
run through the SLURM profile, as a user would start them on a cluster (docs/cluster.md)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantdet import study
from quantdet.config import load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STUDIES = sorted((ROOT / "workflow" / "studies").glob("*.yaml"))


def test_there_are_coco_and_voc_studies():
    sources = {load_params(path)["data"]["source"] for path in STUDIES}
    assert {"coco", "voc"} <= sources


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_params_are_valid_and_gpu_sized(path):
    params = load_params(path)
    assert params["models"]["input_size"] >= 512
    assert params["train"]["processes"] > 1
    assert params["train"]["batch_size"] % params["train"]["processes"] == 0
    assert params["study"]["name"] == path.stem


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_dry_run_lists_the_whole_job_graph(path, tmp_path):
    shutil.copy(path, tmp_path / "params.yaml")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_SLURM_GPUS": "4"}
    run = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
                          "--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    outputs = set(re.findall(r"^    output: (.*)$", out, re.M))
    outputs = {p.strip() for line in outputs for p in line.split(",")}
    params = load_params(path)
    corrupted = {study.corrupted_dir(c) for c in study.corruptions(params)}   # a job per corruption
    assert len(corrupted) == 15 + 4 and corrupted <= outputs   # benchmark + held-out
    models = {study.model_file(m) for m in study.evaluated_models(params)
              if study.parse_model_name(m).runtime == "torch"}
    # FP32 teacher and student, 6 PTQ (5 methods + mixed) and 5 QAT recipes at 2 bit widths
    # (mixed: one budget), zero-shot PTQ (zeroq, gdfq) and AIT, 5 mimic variants at 2 widths,
    # the student again with seed 1 and its 4 repeated methods at 2 widths
    assert len(models) == 2 + 5 * 2 + 1 + 5 * 2 + 3 * 2 + 5 * 2 + 1 + 4 * 2 and models <= outputs
    assert {study.synthetic_dir(g) for g in ("zeroq", "gdfq")} <= outputs
    assert {study.onnx_file(m) for m in study.quantized_models(params)} <= outputs
    evaluated = {m for m in study.evaluated_models(params)
                 if any(o.startswith(f"{study.EVAL}/{m}/") or o == f"{study.EVAL}/{m}" for o in outputs)}
    assert evaluated == set(study.evaluated_models(params))
    assert "results/report.md" in outputs
    # the training stages ask SLURM for GPUs from the profile
    assert re.search(r"rule pretrain:(?:\n    .*)*\n    resources: .*gpu=4", out)


LOCAL = sorted((ROOT / "workflow" / "studies" / "local").glob("*.yaml"))


@pytest.mark.parametrize("path", LOCAL, ids=lambda p: p.stem)
def test_local_study_overlays_validate_with_every_detector_checked(path):
    """Each overlay of workflow/studies/local composes onto params.yaml into valid params, every
    student's and the teacher's family accepting its arch (what `quantdet validate` checks), and
    plans an FP32 model for each detector it names."""
    params = load_params(path, check_backbones=True)
    assert params["study"]["name"]
    models = set(study.evaluated_models(params))
    assert "student-fp32" in models
    for name, student in (params["models"].get("students") or {}).items():
        if student is not None:
            assert f"{name}-fp32" in models, name


def test_the_detector_studies_name_the_families_they_promise():
    families = {path.stem: {params.get("detector", "centernet") for params in
                            [load_params(path)["models"]["student"],
                             *(load_params(path)["models"].get("students") or {}).values()] if params}
                for path in LOCAL}
    assert families["torchvision"] == {"retinanet", "fcos", "ssdlite"}
    assert families["yolo_scales"] == {"yolo"}
    scales = load_params(ROOT / "workflow/studies/local/yolo_scales.yaml")["models"]
    assert {scales["student"]["arch"], *(s["arch"] for s in scales["students"].values() if s)} == \
        {"yolo11n.yaml", "yolo11s.yaml", "yolo26n.yaml", "yolo26s.yaml"}


def test_the_qrid_study_holds_qrids_design():
    """workflow/studies/local/qrid.yaml: YOLO12n, YOLO12s and YOLO26n; FP32, FP16, dynamic and
    static INT8 (min/max, percentile), clean against degradation-aware calibration over at least
    3 calibration draws each, DA-QAT and Ultralytics' ONNX INT8; on QRID's sets and imagecorruptions."""
    params = load_params(ROOT / "workflow/studies/local/qrid.yaml")
    models = set(study.evaluated_models(params))   # FP16 too, where this machine cannot run it
    assert {r: params["models"]["students"][r]["arch"] for r in ("yolo12s", "yolo26n")} == \
        {"yolo12s": "yolo12s.yaml", "yolo26n": "yolo26n.yaml"} and params["models"]["student"]["arch"] == "yolo12n.yaml"
    assert params["corruptions"]["suites"] == ["imagecorruptions", "qrid"]
    assert set(params["corruptions"]["qrid"]["sets"]) == {"noisy_low", "noisy_medium", "blurry_low", "blurry_medium",
                                                          "contrast_low", "jpeg_heavy", "mixed_50pct"}
    for role in ("student", "yolo12s", "yolo26n"):
        for kind in ("fp32", "int8_dynamic-ort", "fp16-ov", "ptq-minmax-w8a8-ort", "ptq-percentile-w8a8-ort",
                     "ptq-dacal-w8a8-ort", "qat-daqat-w8a8-ort", "peer-ultralytics_onnx-w8a8-ort"):
            assert f"{role}-{kind}" in models, (role, kind)
    for method in ("minmax", "percentile", "dacal"):   # the study seed and the repeats: >= 3 draws
        draws = [m for m in models if m.startswith(f"student-ptq-{method}-w8a8")]
        assert len(draws) >= 3, method
