"""The smoke study as on a cluster: every job a SLURM job (workflow/profiles/slurm on a real
single-node SLURM on localhost, tests/local_slurm.py), tracked by an `mlflow server` over HTTP.

One run serves every test here. It is interrupted once (the student's pre-training job is
cancelled with scancel while it runs) and then resumed by a second `snakemake`, and must end
with the results of the local run (tests/conftest.py smoke_study): same seed, same numbers.
Where SLURM cannot start (no root, no apt-get) the SLURM tests skip with the reason, and the
study runs locally against the tracking server so that the tracking test still runs.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from quantdet import study
from quantdet.config import load_params
from tests.local_slurm import start_or_skip_reason
from tests.smoke_overlays import slurm_study

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
LOCAL_RULES = {"report"}  # the Snakefile's localrules (besides `all`)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on localhost with a SQLite store, stopped by its process (group) id."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group of the server we started
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster, reason = start_or_skip_reason(tmp_path_factory.mktemp("slurm"))
    if cluster is None:
        print(f"SLURM tests skipped: {reason}")
    yield cluster, reason
    if cluster is not None:
        cluster.stop()


def _squeue(cluster) -> list[dict]:
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%k|%T"],
                         capture_output=True, text=True, check=True, env={**os.environ, **cluster.env})
    return [dict(zip(("id", "comment", "state"), line.split("|"))) for line in out.stdout.split()]


def _cancel_when_running(cluster, comment: str, proc, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for job in _squeue(cluster):
            if job["comment"] == comment and job["state"] == "RUNNING":
                subprocess.run(["scancel", job["id"]], check=True, env={**os.environ, **cluster.env})
                return job["id"]
        time.sleep(0.5)
    raise AssertionError(f"no running SLURM job {comment} (snakemake exit {proc.poll()})")


def cluster_params(work) -> dict:
    return load_params(work / "params.yaml")


@pytest.fixture(scope="module")
def cluster_study(slurm, tracking_server, tmp_path_factory):
    cluster, reason = slurm
    work = tmp_path_factory.mktemp("cluster-study")
    (work / "params.yaml").write_text(yaml.safe_dump(slurm_study(), sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on",
           "MLFLOW_TRACKING_URI": tracking_server}
    snakemake = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile")]
    if cluster is None:
        run = subprocess.run([*snakemake, "--cores", "2"], cwd=work, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-5000:]
        return {"work": work, "cluster": None, "reason": reason, "tracking": tracking_server}

    # What a one-node cluster without GPUs or an accounting database needs: no GPUs, job states
    # from squeue (MinJobAge keeps finished jobs there), and a short first status check.
    env.update(cluster.env, QUANTDET_SLURM_GPUS="0")
    profile = [*snakemake, "--workflow-profile", str(PROFILE), "--slurm-status-command", "squeue",
               "--slurm-init-seconds-before-status-checks", "2"]
    with open(work / "first.log", "w") as log:
        first = subprocess.Popen([*profile, "--retries", "0"], cwd=work, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            cancelled = _cancel_when_running(cluster, "rule_pretrain_wildcards_student", first)
            first.wait(timeout=1200)
        finally:
            if first.poll() is None:
                first.terminate()
    after_first = {p.relative_to(work).as_posix() for p in (work / "results").rglob("*")}
    second = subprocess.run(profile, cwd=work, env=env, capture_output=True, text=True)
    assert second.returncode == 0, (work / "first.log").read_text()[-3000:] + second.stderr[-5000:]
    return {"work": work, "cluster": cluster, "tracking": tracking_server, "cancelled": cancelled,
            "first_exit": first.returncode, "after_first": after_first,
            "first_log": (work / "first.log").read_text(), "second_log": second.stderr}


def _needs_slurm(cluster_study):
    if cluster_study["cluster"] is None:
        pytest.skip(f"no local SLURM cluster: {cluster_study['reason']}")


def _job_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quantdet")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_results_equal_the_local_run_with_the_same_seed(cluster_study, request):
    work = cluster_study["work"]
    # asked for here, not as an argument: pytest would set the session fixture up first, and a
    # second test process would wait for the smoke study instead of running this one meanwhile
    smoke_study = request.getfixturevalue("smoke_study")
    ours = json.loads((work / "results/metrics/robustness.json").read_text())
    local = json.loads((smoke_study / "results/metrics/robustness.json").read_text())
    params = cluster_params(work)
    assert set(ours) == set(study.measured_models(params)) and "student-fp32" in ours
    # clean P alike; the mean over corruptions is over fewer of them here (tests/smoke_overlays.py),
    # so each condition's metrics are compared instead, below
    assert {m: ours[m]["P"] for m in ours} == {m: local[m]["P"] for m in ours}
    for model in study.evaluated_models(params):
        for condition in study.conditions(params):
            ours, local = (json.loads((root / study.eval_metrics_file(model, condition)).read_text())
                           for root in (work, smoke_study))
            assert [r["metrics"] for r in ours["results"]] == [r["metrics"] for r in local["results"]]


def test_every_job_but_the_local_rules_ran_as_a_slurm_job(cluster_study):
    _needs_slurm(cluster_study)
    runs = [r for r in _job_runs(cluster_study["tracking"]) if r.data.tags.get("quantdet.role") == "job"]
    stages = {r.data.tags["quantdet.stage"] for r in runs}
    assert stages >= {"prepare", "corrupt", "pretrain", "ptq", "qat", "export", "evaluate", "report"}
    slurm_ids = [r.data.tags.get("slurm_job_id") for r in runs if r.data.tags["quantdet.stage"] not in LOCAL_RULES]
    assert all(slurm_ids) and len(set(slurm_ids)) == len(slurm_ids)
    assert all("slurm_job_id" not in r.data.tags for r in runs if r.data.tags["quantdet.stage"] in LOCAL_RULES)
    states = {job["id"]: job["state"] for job in _squeue(cluster_study["cluster"])}
    assert all(states.get(i) == "COMPLETED" for i in slurm_ids), (slurm_ids, states)
    submitted = cluster_study["first_log"] + cluster_study["second_log"]
    assert submitted.count("has been submitted with SLURM jobid") == len(states)


def test_a_cancelled_job_leaves_no_output_and_the_rerun_picks_up(cluster_study):
    _needs_slurm(cluster_study)
    states = {job["id"]: job["state"] for job in _squeue(cluster_study["cluster"])}
    assert states[cluster_study["cancelled"]] == "CANCELLED"
    assert cluster_study["first_exit"] != 0
    after_first = cluster_study["after_first"]
    # keep-going finished what did not need the cancelled student; nothing of it, or of a model
    # made from it, was left behind
    assert "results/models/teacher-fp32.pt" in after_first
    params = cluster_params(cluster_study["work"])
    from_cancelled = {m for m in study.evaluated_models(params)
                      if study.parse_model_name(m).fp32_source == "student-fp32"}
    left = {p.split("/")[2].lstrip(".").split(".")[0] for p in after_first
            if p.startswith(("results/models/", "results/eval/")) and p.count("/") >= 2}
    assert not left & from_cancelled, sorted(left & from_cancelled)
    # the second run did not redo what the first finished: each FP32 model trained once
    runs = _job_runs(cluster_study["tracking"])
    pretrain = sorted(r.data.tags["quantdet.model"] for r in runs if r.data.tags.get("quantdet.stage") == "pretrain")
    assert pretrain == sorted(m for m in study.evaluated_models(params)
                              if study.parse_model_name(m).fp32)
    assert sum(r.data.tags.get("quantdet.stage") == "prepare" for r in runs) == 1


def test_jobs_log_to_the_tracking_server_over_http(cluster_study):
    from mlflow.tracking import MlflowClient

    runs = _job_runs(cluster_study["tracking"])
    parents = [r for r in runs if r.data.tags.get("quantdet.role") == "study"]
    children = [r for r in runs if r.data.tags.get("quantdet.role") == "job"]
    assert len(parents) == 1
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    params = cluster_params(cluster_study["work"])
    evaluations = [c for c in children if c.data.tags["quantdet.stage"] == "evaluate"]
    assert {c.data.tags["quantdet.model"] for c in evaluations} == set(study.evaluated_models(params))
    # artifacts go through the server too (mlflow-artifacts proxy)
    report = next(c for c in children if c.data.tags["quantdet.stage"] == "report")
    names = {a.path for a in MlflowClient(cluster_study["tracking"]).list_artifacts(report.info.run_id)}
    assert "report.md" in names
    assert not (cluster_study["work"] / "mlflow.db").exists()
