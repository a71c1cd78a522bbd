"""MLflow: one study parent run, child runs under it, no races between parallel jobs."""
import subprocess
import sys

import pytest

JOB = """
import sys
from quantdet import tracking
params = {"study": {"name": "race"}}
tracking.log_job(params, stage="evaluate", model="student-fp32", params_read={"evaluate": {"i": sys.argv[1]}},
                 params_hash="h" + sys.argv[1], metrics={"AP": float(sys.argv[1]) / 10},
                 tags={"condition": "clean"})
"""


def _runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quantdet")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_parallel_jobs_share_one_parent_run_without_racing(store):
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(i)], cwd=store,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    runs = _runs(store)
    parents = [r for r in runs if r.data.tags.get("quantdet.role") == "study"]
    children = [r for r in runs if r.data.tags.get("quantdet.role") == "job"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0].info.run_id
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.tags["quantdet.stage"] == "evaluate"
        assert child.data.tags["git_commit"]
        assert child.data.params["evaluate.i"] in {str(i) for i in range(4)}
        assert "AP" in child.data.metrics
    assert {c.data.tags["quantdet.params_hash"] for c in children} == {f"h{i}" for i in range(4)}


def test_study_run_is_created_once(store):
    from quantdet import tracking

    params = {"study": {"name": "once"}}
    assert tracking.study_run(params) == tracking.study_run(params)


def test_tracking_can_be_switched_off(store, monkeypatch):
    from quantdet import tracking

    monkeypatch.setenv("QUANTDET_TRACKING", "off")
    assert tracking.study_run({"study": {"name": "x"}}) is None
    assert not (store / "mlflow.db").exists()


def test_queued_runs_are_logged_by_one_flush(store, monkeypatch):
    """tracking.log: report: a job writes its run as a record; the report job's flush logs
    every record with the job's own times, and removes it; a record cut short stays, named."""
    from quantdet import tracking

    params = {"study": {"name": "queued"}, "tracking": {"log": "report"}}
    monkeypatch.delenv("QUANTDET_TRACKING", raising=False)   # the params decide
    metrics_file = store / "metrics.json"
    metrics_file.write_text('{"AP": 0.5}')
    queued = [tracking.log_job(params, stage="evaluate", model=f"student-m{i}", params_read={"evaluate": {"i": i}},
                               params_hash=f"h{i}", metrics={"AP": i / 10, "by": {"x": 1}},
                               artifacts=[metrics_file], tags={"condition": "clean"}) for i in range(3)]
    assert all(p.endswith(".json") for p in queued)
    assert not (store / "mlflow.db").exists()             # nothing logged by the jobs themselves
    broken = store / tracking.PENDING / "0-broken.json"
    broken.write_text('{"study": ')
    run_ids = tracking.flush(params)
    assert len(run_ids) == 3
    assert [p.name for p in (store / tracking.PENDING).iterdir()] == ["0-broken.json"]
    children = [r for r in _runs(store) if r.data.tags.get("quantdet.role") == "job"]
    assert sorted(c.data.tags["quantdet.model"] for c in children) == ["student-m0", "student-m1", "student-m2"]
    for child in children:
        assert child.info.status == "FINISHED" and child.info.start_time <= child.info.end_time
        assert child.data.metrics["by.x"] == 1 and child.data.params["evaluate.i"] in {"0", "1", "2"}
    assert tracking.flush(params) == []                    # nothing left to log twice
    monkeypatch.setenv("QUANTDET_TRACKING", "job")          # the environment overrides params
    assert tracking.mode(params) == "job"
