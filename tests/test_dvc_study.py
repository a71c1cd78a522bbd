"""The smoke study through `dvc repro`: the same DAG as Snakemake, reproducible, incremental."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.smoke_overlays import one_job_per_stage

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
    # DVC reads params values itself: the smoke overlay composed into a complete params.yaml,
    # and the study's own dvc.yaml generated from it
    overlay = one_job_per_stage()
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    _run(work, str(BIN / "quantdet"), "compose", "overlay.yaml", "--out", "params.yaml")
    _run(work, str(BIN / "quantdet"), "dvc-yaml", "--params", "params.yaml", "--out", "dvc.yaml")
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
    # (less a deployment precision this machine cannot run: study.not_run_here)
    assert set(robustness) == set(study.measured_models(load_params(dvc_study / "params.yaml")))
    assert (dvc_study / "results/report.md").exists()
    shown = _run(dvc_study, str(BIN / "dvc"), "metrics", "show")
    assert "student-fp32" in shown


def test_second_repro_does_nothing_and_a_key_reruns_only_its_readers(dvc_study):
    assert "changed" not in _run(dvc_study, str(BIN / "dvc"), "status").lower()
    original = (dvc_study / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["nms_iou"] = 0.5
    (dvc_study / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        status = _run(dvc_study, str(BIN / "dvc"), "status", "--json")
    finally:
        (dvc_study / "params.yaml").write_text(original)
    stale = set(json.loads(status))
    assert stale, status
    prefixes = {s.split("-")[0] for s in stale}
    # evaluate.* is read by the export, precision and evaluation stages only
    assert all(p.startswith(("export", "precision", "evaluate")) for p in prefixes), stale


def test_appending_a_method_makes_dvc_status_list_only_the_new_stages(dvc_study):
    """After appending to the matrix and regenerating dvc.yaml, `dvc status` lists the new
    method's stages and the report, nothing else."""
    from quantdet import study
    from quantdet.config import load_params

    before = {j.name for j in study.jobs(load_params(dvc_study / "params.yaml"))}
    files = {f: (dvc_study / f).read_text() for f in ("params.yaml", "dvc.yaml")}
    params = yaml.safe_load(files["params.yaml"])
    params["matrix"]["ptq"].append("ema_minmax")
    (dvc_study / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        _run(dvc_study, str(BIN / "quantdet"), "dvc-yaml", "--params", "params.yaml")
        stale = set(json.loads(_run(dvc_study, str(BIN / "dvc"), "status", "--json")))
        after = {j.name for j in study.jobs(load_params(dvc_study / "params.yaml"))}
    finally:
        for name, text in files.items():
            (dvc_study / name).write_text(text)
    assert stale == (after - before) | {"intervals", "report"}, stale


def _commit(repo: Path, message: str) -> None:
    _run(repo, "git", "add", "-A")
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode:
        _run(repo, "git", "commit", "-q", "-m", message)


def test_push_to_a_shared_remote_and_pull_into_a_fresh_clone(dvc_study, tmp_path):
    """As on a cluster: outputs pushed to a remote on a shared file system, a fresh clone pulls
    them and has nothing to reproduce."""
    dvc = str(BIN / "dvc")
    _commit(dvc_study, "smoke study")
    remote = tmp_path / "shared" / "dvc-remote"
    _run(dvc_study, dvc, "remote", "add", "--force", "-d", "shared", str(remote))
    _commit(dvc_study, "shared remote")
    _run(dvc_study, dvc, "push")
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(dvc_study), str(clone))
    assert not (clone / "results/models/student-fp32.pt").exists()
    _run(clone, dvc, "pull")
    for path in ("results/models/student-fp32.pt", "results/models/student-ptq-dacal-w8a8.onnx",
                 "results/eval/teacher-fp32/clean/metrics.json", "results/metrics/robustness.json"):
        assert (clone / path).read_bytes() == (dvc_study / path).read_bytes(), path
    assert "up to date" in _run(clone, dvc, "status").lower()
    assert "up to date" in _run(clone, dvc, "repro").lower()  # nothing reruns


def test_exp_run_a_variant_and_diff_its_metrics(dvc_study):
    """`dvc exp run -S` changes one key and reruns its readers; `dvc metrics diff` compares."""
    dvc = str(BIN / "dvc")
    _commit(dvc_study, "smoke study")
    out = _run(dvc_study, dvc, "exp", "run", "-S", "quant.qat.epochs=2")
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    # only the QAT models' branches: training, export, evaluations; then intervals and report
    assert {"intervals", "report"} <= ran and any(s.startswith("qat-") for s in ran), out[-2000:]
    assert all("qat" in s for s in ran - {"intervals", "report"}), sorted(ran)
    diff = json.loads(_run(dvc_study, dvc, "metrics", "diff", "--json"))
    changed = diff["results/metrics/robustness.json"]
    assert changed, diff
    assert all(key.startswith("student-qat-") for key in changed), sorted(changed)
