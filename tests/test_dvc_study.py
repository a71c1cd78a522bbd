"""The smoke study through `dvc repro`: the same DAG as Snakemake, reproducible, incremental."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _run(cwd, *cmd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "off"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def dvc_study(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("dvc needs git")
    work = tmp_path_factory.mktemp("dvc")
    shutil.copy(ROOT / "dvc.yaml", work)
    shutil.copy(ROOT / "tests" / "smoke" / "params.yaml", work / "params.yaml")
    _run(work, "git", "init", "-q")
    _run(work, "git", "config", "user.email", "ci@example.invalid")
    _run(work, "git", "config", "user.name", "ci")
    _run(work, str(BIN / "dvc"), "init", "-q")
    _run(work, str(BIN / "dvc"), "repro")
    return work


def test_dvc_repro_completes_the_study(dvc_study):
    from quantdet import study
    from quantdet.config import load_params

    robustness = json.loads((dvc_study / "results/metrics/robustness.json").read_text())
    # every model of the study, deployed twins and repeat seeds included, as with Snakemake
    assert set(robustness) == set(study.evaluated_models(load_params(dvc_study / "params.yaml")))
    assert (dvc_study / "results/report.md").exists()
    shown = _run(dvc_study, str(BIN / "dvc"), "metrics", "show")
    assert "student-fp32" in shown


def test_second_repro_does_nothing_and_a_key_reruns_only_its_readers(dvc_study):
    assert "changed" not in _run(dvc_study, str(BIN / "dvc"), "status").lower()
    params = yaml.safe_load((dvc_study / "params.yaml").read_text())
    params["evaluate"]["nms_iou"] = 0.5
    (dvc_study / "params.yaml").write_text(yaml.safe_dump(params))
    status = _run(dvc_study, str(BIN / "dvc"), "status", "--json")
    stale = set(json.loads(status))
    assert stale, status
    prefixes = {s.split("@")[0] for s in stale}
    # evaluate.* is read by the export and evaluation stages only
    assert all(p.startswith(("export", "evaluate")) for p in prefixes), stale
