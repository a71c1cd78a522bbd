"""docs/detectors.md, "Your own detector", as a new user runs it: a checkpoint trained by Ultralytics' own
`yolo train` on an Ultralytics dataset, and a quantdet study on the same data.yaml with that
checkpoint as its student: imported (not trained), quantized, exported, evaluated, reported,
with the checkpoint's sha256 in the model file, MLflow and the report."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.detectors.test_yolo import train_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data.yaml, best.pt): `YOLO("yolov8n.yaml").train(...)` offline, 3 epochs on 6 images."""
    best = train_checkpoint(tmp_path_factory.mktemp("yolo-train"), "yolov8n.yaml")
    return best.parents[3] / "data.yaml", best


def _study(folder: Path, data_yaml: Path, checkpoint: Path) -> Path:
    folder.mkdir(parents=True)
    params = {
        "study": {"name": "own-yolo"},
        "matrix": {"bits": [8], "ptq": ["minmax"], "qat": [], "peer": [], "mixed": [], "mimic": [],
                   "runtimes": ["onnxruntime"], "repeat": {"seeds": [], "ptq": [], "qat": []}},
        "data": {"source": "yolo", "yolo": {"data_yaml": str(data_yaml)}, "calib_size": 4},
        "corruptions": {"names": ["gaussian_noise"], "heldout": [], "severities": [3], "images": None},
        "models": {"input_size": 64, "student": {"detector": "yolo", "checkpoint": str(checkpoint)},
                   "students": None},
        "quant": {"ptq": {"calib_batches": 1, "calib_batch_size": 4}},
        "export": {"latency_batch": 2, "latency_runs": 3, "threads": 1},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def _run(folder: Path, *args, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on",
           "HOME": str(folder / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=folder, check=check)


def test_a_yolo_train_checkpoint_runs_through_a_study(trained, tmp_path):
    data_yaml, checkpoint = trained
    work = _study(tmp_path / "study", data_yaml, checkpoint)
    run = _run(work, str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--cores", "2", check=False)
    assert run.returncode == 0, run.stderr[-5000:]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    import torch
    payload = torch.load(work / "results/models/student-fp32.pt", map_location="cpu", weights_only=False)
    assert payload["detector"]["family"] == "yolo" and payload["detector"]["checkpoint_sha256"] == digest
    assert payload["history"]["imported"]["sha256"] == digest and payload["history"]["epochs"] == []
    assert payload["classes"]["names"] == ["square", "bar"]
    robustness = json.loads((work / "results/metrics/robustness.json").read_text())
    assert {"student-fp32", "student-ptq-minmax-w8a8-ort"} <= set(robustness)
    assert digest in (work / "results/report.md").read_text()
    assert not (work / "home" / ".config" / "Ultralytics").exists()  # its settings stay in the study
    assert list((work / "results" / ".ultralytics").rglob("settings.json"))

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`quantdet.stage` = 'pretrain'")
    assert list(runs["tags.quantdet.checkpoint.sha256"]) == [digest]


def test_a_checkpoint_of_other_classes_is_refused_naming_both_lists(trained, tmp_path):
    data_yaml, checkpoint = trained
    other = tmp_path / "other.yaml"
    spec = yaml.safe_load(data_yaml.read_text())
    spec["names"] = {0: "square", 1: "circle"}
    other.write_text(yaml.safe_dump(spec))
    work = _study(tmp_path / "study", other, checkpoint)
    prepared = _run(work, str(BIN / "quantdet"), "prepare", check=False)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    run = _run(work, str(BIN / "quantdet"), "pretrain", "--role", "student", check=False)
    assert run.returncode == 2
    assert str(checkpoint) in run.stderr and "['square', 'bar']" in run.stderr and "['square', 'circle']" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (work / "results/models/student-fp32.pt").exists()
