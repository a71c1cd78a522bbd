"""The GPU check (tests/gpu/run_gpu_check.sh) dry-runs on the CPU: CUDA hidden, the smallest
form (--quick: what one QAT model's ONNX evaluation needs, the DDP job, the default study's
timed jobs scaled down). About 70 s on 2 cores."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_dry_run_of_the_gpu_check(tmp_path):
    evidence = tmp_path / "evidence"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "tests/gpu/run_gpu_check.sh"), str(evidence), "--dry-run",
                          "--quick", "--jobs", "2", "--no-pytest", "--work", str(tmp_path / "work")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = json.loads((evidence / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["dry_run_reason"].startswith("dry run: no CUDA")
    assert "dry run: no CUDA" in (evidence / "summary.md").read_text()
    # at most 8 flat files come back from the device tool
    assert sorted(p.name for p in evidence.iterdir()) == [
        "logs.tar.gz", "run.log", "summary.json", "summary.md", "system.txt"]

    tasks = {t["name"]: t for t in summary["tasks"]}
    assert all(t["status"] == "ok" and t["rc"] == 0 for t in tasks.values()), \
        [(t["name"], t["status"], t["rc"]) for t in tasks.values() if t["status"] != "ok"]
    assert summary["verdict"]["ok"] and summary["verdict"]["training_devices"] == ["cpu"]
    stages = {t["stage"] for t in tasks.values()}
    assert {"prepare", "corrupt", "pretrain", "qat", "ddp", "export", "evaluate"} <= stages

    # the commands are the dvc.yaml's, run as written
    dvc_yaml = (tmp_path / "work" / "smoke" / "dvc.yaml").read_text()
    for t in tasks.values():
        if t["group"] in ("smoke", "default"):
            assert f"cmd: {t['command']}\n" in dvc_yaml or t["group"] == "default", t["command"]
    training = [t for t in tasks.values() if t["stage"] in ("pretrain", "qat", "mimic", "ddp")]
    assert len(training) >= 5
    for t in training:
        assert t["numerics"]["device"] == "cpu" and t["numerics"]["gpu"] is None, t
    ddp = tasks["ddp/qat-student-qat-daqat-w8a8"]
    assert ddp["numerics"]["ddp"] is True and ddp["env"] == {"QUANTDET_FORCE_DDP": "1"}
    assert "-m torch.distributed.run --standalone --nproc_per_node 1 -m quantdet.cli qat" in ddp["command"]
    assert tasks["smoke/qat-student-qat-daqat-w8a8"]["numerics"]["ddp"] is False
    ort = tasks["smoke/evaluate-student-qat-daqat-w8a8-ort"]
    assert ort["clean"]["runtime"] == "onnxruntime"
    timed = [tasks["default/pretrain-student-fp32"], tasks["default/qat-student-qat-daqat-w8a8"]]
    assert all(t["seconds"] > 0 and t["train_seconds"] > 0 for t in timed)
    assert summary["default_study"]["scale"] == "small"
