"""`models.<role>.checkpoint` for quantdet's own family: a quantdet FP32 model file of another
study, or a plain state dict of the same network, is imported by `pretrain` (nothing trained),
with its sha256; a state dict of another network is refused naming the keys that do not fit."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from quantdet.config import load_params

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _pretrain(work: Path, checkpoint: Path):
    params = load_params(work / "params.yaml")
    params["models"]["student"]["checkpoint"] = str(checkpoint)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "off"}
    return subprocess.run([str(BIN / "quantdet"), "pretrain", "--role", "student", "--out", "imported.pt"],
                          capture_output=True, text=True, cwd=work, env=env)


@pytest.fixture
def work(smoke_study, tmp_path):
    work = tmp_path / "study"
    work.mkdir()
    shutil.copy(smoke_study / "params.yaml", work / "params.yaml")
    (work / "data").symlink_to(smoke_study / "data")
    return work


@pytest.mark.parametrize("kind", ["model file", "state dict"])
def test_a_quantdet_model_file_or_state_dict_is_imported_not_trained(smoke_study, work, kind):
    source = smoke_study / "results/models/student-fp32.pt"
    original = torch.load(source, map_location="cpu", weights_only=False)
    checkpoint = work / "mine.pt"
    if kind == "model file":
        shutil.copy(source, checkpoint)
    else:
        torch.save(original["state_dict"], checkpoint)
    run = _pretrain(work, checkpoint)
    assert run.returncode == 0, run.stderr[-3000:]
    imported = torch.load(work / "imported.pt", map_location="cpu", weights_only=False)
    assert imported["history"]["epochs"] == []
    assert imported["detector"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert all(torch.equal(imported["state_dict"][k], v) for k, v in original["state_dict"].items())


def test_a_state_dict_of_another_network_is_refused(smoke_study, work):
    state = torch.load(smoke_study / "results/models/teacher-fp32.pt", map_location="cpu",
                       weights_only=False)["state_dict"]
    checkpoint = work / "teacher.pt"
    torch.save(state, checkpoint)
    run = _pretrain(work, checkpoint)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{checkpoint}: a state dict that does not fit" in run.stderr
    assert not (work / "imported.pt").exists()
