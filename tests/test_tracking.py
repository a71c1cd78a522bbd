"""MLflow: one study parent run, child runs under it, no races between parallel jobs."""
import subprocess
import sys

import pytest

JOB = """
import sys
from quantdet import tracking
params = {"study": {"name": "race"}}
tracking.log_job(params, stage="evaluate", model="student-m" + sys.argv[1], params_read={"evaluate": {"i": sys.argv[1]}},
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


def _active_job_runs(tmp_path):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quantdet")
    runs = client.search_runs([exp.experiment_id], max_results=1000, run_view_type=ViewType.ALL)
    jobs = [r for r in runs if r.data.tags.get("quantdet.role") == "job"]
    return [r for r in jobs if r.info.lifecycle_stage == "active"], [r for r in jobs if r.info.lifecycle_stage == "deleted"]


def test_a_job_run_again_keeps_one_run_and_a_run_cut_short_is_replaced(store):
    """A job killed after it logged (or while it logged: a run left RUNNING) and run again, as
    Snakemake's rerun-incomplete and DVC do: the study holds its run once, the last one; other
    jobs, and the generators of one zero-shot stage, keep theirs."""
    from mlflow.tracking import MlflowClient

    from quantdet import tracking

    params = {"study": {"name": "again"}}

    def log(model, hash_, job=None):
        return tracking.log_job(params, stage="qat", model=model, params_read={"qat": {"x": 1}},
                                params_hash=hash_, metrics={"AP": 0.1}, job=job)

    first = log("student-qat-daqat-w8a8", "h1")
    other = log("student-qat-lsq-w8a8", "h1")
    # a kill while a run was being logged: created, never terminated
    client = MlflowClient(tracking.tracking_uri())
    parent = tracking.study_run(params)
    exp = client.get_experiment_by_name("quantdet").experiment_id
    cut = client.create_run(exp, tags={"mlflow.parentRunId": parent, "quantdet.role": "job",
                                       "quantdet.stage": "qat", "quantdet.model": "student-qat-daqat-w8a8",
                                       tracking.JOB_TAG: "qat:student-qat-daqat-w8a8"}).info.run_id
    last = log("student-qat-daqat-w8a8", "h1")
    active, deleted = _active_job_runs(store)
    assert sorted(r.info.run_id for r in active) == sorted([other, last])
    assert sorted(r.info.run_id for r in deleted) == sorted([first, cut])
    assert all(r.info.status == "FINISHED" for r in active)
    # one stage, two jobs told apart by their generator
    a = log(None, "h2", job="zeroshot_data:gdfq")
    b = log(None, "h2", job="zeroshot_data:zeroq")
    active, _ = _active_job_runs(store)
    assert {a, b} <= {r.info.run_id for r in active}


def test_a_queued_run_logged_twice_is_kept_once(store, monkeypatch):
    """The report job killed after it logged a queued run but before it removed the record: the
    next flush logs it again and the study keeps one run of that job."""
    import shutil

    from quantdet import tracking

    params = {"study": {"name": "queued-again"}, "tracking": {"log": "report"}}
    monkeypatch.delenv("QUANTDET_TRACKING", raising=False)
    record = tracking.log_job(params, stage="ptq", model="student-ptq-minmax-w8a8", params_read={},
                              params_hash="h")
    shutil.copy(record, store / "kept.json")
    [first] = tracking.flush(params)
    shutil.copy(store / "kept.json", record)            # as if the unlink never happened
    [second] = tracking.flush(params)
    active, deleted = _active_job_runs(store)
    assert [r.info.run_id for r in active] == [second] and [r.info.run_id for r in deleted] == [first]
