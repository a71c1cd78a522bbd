"""MLflow tracking: one parent run per study, one child run per job.

The tracking URI is MLFLOW_TRACKING_URI, or `sqlite:///mlflow.db` in the directory the study
runs in. With a SQLite store every interaction holds an exclusive file lock: parallel jobs
would otherwise race on the first table creation and on SQLite's single writer.
The study run carries the whole environment (environment.json and `quantdet.env.*` tags, see
environment.py); each job run carries its fingerprint and key versions as tags, and its own
environment.json where it differs from the study run's.
Set QUANTDET_TRACKING=off to skip tracking (the stage's files are written regardless).

When a job's run is logged (`tracking.log` in params.yaml, or QUANTDET_TRACKING=job|report):
* `job`: each job logs its own run as it ends. Importing MLflow and opening its store costs
  every job seconds on a small CPU machine (and saving an ONNX model more), which, over the
  default study's many short jobs, is minutes of the study's wall time.
* `report`: each job queues its run as a JSON record (results/tracking/pending/) and the
  report job, the study's last, logs the queue in one process (`quantdet track-flush` does it
  at any time). Runs carry the job's own start and end times either way; the study run and
  its environment are created up front (`track-study`).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

from quantdet import environment

EXPERIMENT = "quantdet"
STUDY_TAG = "quantdet.study"
ROLE_TAG = "quantdet.role"
ENV_TAG = "quantdet.env.fingerprint"
ENV_ARTIFACT = "environment.json"
JOB_TAG = "quantdet.job"

log = logging.getLogger(__name__)


PENDING = Path("results/tracking/pending")
MODES = ("job", "report")


def enabled() -> bool:
    return os.environ.get("QUANTDET_TRACKING", "on").lower() not in ("off", "0", "false", "no")


def mode(params: dict) -> str:
    """When a job's run is logged: `job` (as the job ends) or `report` (queued, logged by the
    report job). QUANTDET_TRACKING=job|report overrides params' tracking.log."""
    override = os.environ.get("QUANTDET_TRACKING", "").lower()
    if override in MODES:
        return override
    return (params.get("tracking") or {}).get("log", "job")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@contextlib.contextmanager
def _store_lock():
    uri = tracking_uri()
    if not uri.startswith("sqlite:"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client():
    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def _experiment_id(client) -> str:
    """The experiment's id, created on first use. With a tracking server (no store lock) two
    studies starting at once may both try to create it: the one that loses reads it."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp:
        return exp.experiment_id
    try:
        return client.create_experiment(EXPERIMENT)
    except MlflowException:
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _find_or_create_study_run(client, experiment_id: str, study: str) -> str:
    runs = _find_study_runs(client, experiment_id, study)
    if runs:
        return runs[0]
    run = client.create_run(experiment_id, run_name=f"study:{study}",
                            tags={STUDY_TAG: study, ROLE_TAG: "study"})
    # with a tracking server (no store lock) a job of the same study may have created one at
    # the same moment: the earliest is the study's, a later one is deleted by its creator
    first = _find_study_runs(client, experiment_id, study)[0]
    if first != run.info.run_id:
        client.delete_run(run.info.run_id)
    return first


def _find_study_runs(client, experiment_id: str, study: str) -> list[str]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'study'",
        max_results=100, order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
    return [r.info.run_id for r in runs]


def _record_environment(client, run_id: str, env: dict) -> None:
    from mlflow.entities import RunTag

    client.log_dict(run_id, env, ENV_ARTIFACT)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in environment.tags(env).items()])


def _study_environment(client, run_id: str, env: dict) -> str:
    """The study run's environment fingerprint; recorded from `env` if it has none yet."""
    recorded = client.get_run(run_id).data.tags.get(ENV_TAG)
    if recorded is None:
        _record_environment(client, run_id, env)
        recorded = environment.fingerprint(env)
    return recorded


def study_run(params: dict) -> str | None:
    """The study's parent run id, created on first use (idempotent, safe in parallel)."""
    if not enabled():
        return None
    env = environment.environment()
    with _store_lock():
        client = _client()
        run_id = _find_or_create_study_run(client, _experiment_id(client), params["study"]["name"])
        _study_environment(client, run_id, env)
        return run_id


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_job(params: dict, *, stage: str, model: str | None, params_read: dict, params_hash: str,
            metrics: dict | None = None, artifacts: list | None = None,
            onnx_models: dict | None = None, tags: dict | None = None,
            job: str | None = None) -> str | None:
    """Log one finished job as a child run of the study run (`tracking.log: job`; returns the
    run id), or queue it for the report job (`report`; returns the queued record's path).

    `job` names the job within its study (default `stage:model`): the study run holds one run
    per job, the last one logged. A job run again (after a kill cut it short, or a rerun) has its
    earlier runs deleted once its new run is complete (MLflow's soft delete: `mlflow gc` removes
    them for good, `MlflowClient.restore_run` brings one back).

    In a data-parallel job (torchrun) only rank 0 logs: one job, one run."""
    if not enabled() or os.environ.get("RANK", "0") != "0":
        return None
    record = {
        "study": params["study"]["name"], "stage": stage, "model": model,
        "job": job or ":".join(x for x in (stage, model) if x),
        "params": {k: str(v)[:6000] for k, v in _flatten(params_read).items()},
        "params_hash": params_hash,
        "metrics": {k: float(v) for k, v in _flatten(metrics or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v},
        "artifacts": [str(Path(a).resolve()) for a in artifacts or []],
        "onnx_models": {k: str(Path(v).resolve()) for k, v in (onnx_models or {}).items()},
        "tags": {k: str(v) for k, v in (tags or {}).items()},
        "git_commit": git_commit(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "environment": environment.environment(),
        "start_ms": _process_start_ms(), "end_ms": int(time.time() * 1000),
    }
    if mode(params) == "report":
        return str(_queue(record))
    with _store_lock():
        return _log_record(_client(), record)


def _process_start_ms() -> int:
    """When this job's process started (the run's start time), else now."""
    try:
        import psutil
        return int(psutil.Process().create_time() * 1000)
    except Exception:   # psutil missing or /proc unreadable: the run starts when it is logged
        return int(time.time() * 1000)


def _queue(record: dict) -> Path:
    import json
    import uuid

    from quantdet.io_utils import atomic_path

    PENDING.mkdir(parents=True, exist_ok=True)
    name = f"{record['end_ms']}-{record['stage']}-{record['model'] or 'study'}-{uuid.uuid4().hex[:8]}.json"
    path = PENDING / name.replace("/", "_")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record))
    return path


def flush(params: dict | None = None) -> list[str]:
    """Log every queued run (results/tracking/pending/), oldest first, in this one process;
    each record is removed once its run is logged. Returns the run ids."""
    import json

    if not enabled() or not PENDING.is_dir():
        return []
    records = sorted(PENDING.glob("*.json"))
    if not records:
        return []
    started = time.perf_counter()
    run_ids = []
    with _store_lock():
        client = _client()
        earlier = {}   # each study's job runs, looked up once for the whole queue
        for path in records:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:   # a record cut short (a killed job): kept, named
                log.warning("%s: not a queued run (%s); left in place", path, err)
                continue
            run_ids.append(_log_record(client, record, earlier))
            path.unlink()
    log.info("logged %d queued job runs to MLflow in %.1f s", len(run_ids), time.perf_counter() - started)
    return run_ids


def _job_runs(client, experiment_id: str, parent: str, stage: str | None = None,
              model: str | None = None) -> dict[str, list[str]]:
    """The ids of the study's job runs (not deleted) by job; those of one stage and model only
    if given (a job logging its own run asks only for its own)."""
    from mlflow.entities import ViewType

    query = f"tags.`mlflow.parentRunId` = '{parent}'"
    if stage is not None:
        query += f" and tags.`quantdet.stage` = '{stage}' and tags.`quantdet.model` = '{model or ''}'"
    runs, token = {}, None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=query,
            run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
        for run in page:
            key = run.data.tags.get(JOB_TAG) or ":".join(
                x for x in (run.data.tags.get("quantdet.stage"), run.data.tags.get("quantdet.model")) if x)
            runs.setdefault(key, []).append(run.info.run_id)
        token = page.token
        if not token:
            return runs


def _log_record(client, record: dict, earlier: dict | None = None) -> str:
    import mlflow
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    env = record["environment"]
    env_tags = environment.tags(env)
    exp = _experiment_id(client)
    parent = _find_or_create_study_run(client, exp, record["study"])
    differs = _study_environment(client, parent, env) != env_tags[ENV_TAG]
    stage, model = record["stage"], record["model"]
    job = record.get("job") or ":".join(x for x in (stage, model) if x)
    if earlier is None:   # one job's run: its own earlier runs only
        earlier = {parent: _job_runs(client, exp, parent, stage, model)}
    elif parent not in earlier:   # a queue of runs: the study's job runs, once
        earlier[parent] = _job_runs(client, exp, parent)
    replaced = earlier[parent].get(job, [])
    run_tags = {MLFLOW_PARENT_RUN_ID: parent, STUDY_TAG: record["study"],
                ROLE_TAG: "job", "quantdet.stage": stage, "quantdet.model": model or "",
                JOB_TAG: job,
                "quantdet.params_hash": record["params_hash"], "git_commit": record["git_commit"],
                **env_tags, "quantdet.env.differs_from_study": str(differs).lower(), **record["tags"]}
    if record.get("slurm_job_id"):
        run_tags["slurm_job_id"] = record["slurm_job_id"]
    name = f"{stage}:{model}" if model else stage
    run = client.create_run(exp, run_name=name, tags=run_tags, start_time=record["start_ms"])
    run_id = run.info.run_id
    if differs:  # another machine or venv than the study run's: keep its whole environment
        client.log_dict(run_id, env, ENV_ARTIFACT)
    client.log_batch(run_id,
                     metrics=[Metric(k, v, record["end_ms"], 0) for k, v in record["metrics"].items()],
                     params=[Param(k, v) for k, v in record["params"].items()])
    for path in record["artifacts"]:
        if Path(path).is_dir():
            client.log_artifacts(run_id, path, artifact_path=Path(path).name)
        elif Path(path).exists():
            client.log_artifact(run_id, path)
    if record["onnx_models"]:
        import onnx
        with mlflow.start_run(run_id=run_id):
            for artifact_name, path in record["onnx_models"].items():
                mlflow.onnx.log_model(onnx.load(path), name=artifact_name,
                                      pip_requirements=["onnx", "onnxruntime"])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=record["end_ms"])
    # only now, with the new run complete: a kill before this line leaves the earlier runs, and
    # the job's next run deletes them with this one
    for old in replaced:
        client.delete_run(old)
    if replaced:
        log.info("%s: replaced its earlier run%s %s", job, "s" if len(replaced) > 1 else "", ", ".join(replaced))
    earlier[parent][job] = [run_id]
    return run_id
