"""MLflow tracking: one parent run per study, one child run per job.

The tracking URI is MLFLOW_TRACKING_URI, or `sqlite:///mlflow.db` in the directory the study
runs in. With a SQLite store every interaction holds an exclusive file lock: parallel jobs
would otherwise race on the first table creation and on SQLite's single writer.
The study run carries the whole environment (environment.json and `quantdet.env.*` tags, see
environment.py); each job run carries its fingerprint and key versions as tags, and its own
environment.json where it differs from the study run's.
Set QUANTDET_TRACKING=off to skip tracking (the stage's files are written regardless).
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

log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get("QUANTDET_TRACKING", "on").lower() not in ("off", "0", "false", "no")


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
    exp = client.get_experiment_by_name(EXPERIMENT)
    return exp.experiment_id if exp else client.create_experiment(EXPERIMENT)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _find_or_create_study_run(client, experiment_id: str, study: str) -> str:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'study'",
        max_results=1, order_by=["attributes.start_time ASC"])
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"study:{study}",
                            tags={STUDY_TAG: study, ROLE_TAG: "study"})
    return run.info.run_id


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
            onnx_models: dict | None = None, tags: dict | None = None) -> str | None:
    """Log one finished job as a child run of the study run. Returns the child run id.

    In a data-parallel job (torchrun) only rank 0 logs: one job, one run."""
    if not enabled() or os.environ.get("RANK", "0") != "0":
        return None
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    env = environment.environment()
    env_tags = environment.tags(env)
    with _store_lock():
        client = _client()
        exp = _experiment_id(client)
        parent = _find_or_create_study_run(client, exp, params["study"]["name"])
        differs = _study_environment(client, parent, env) != env_tags[ENV_TAG]
        run_tags = {MLFLOW_PARENT_RUN_ID: parent, STUDY_TAG: params["study"]["name"],
                    ROLE_TAG: "job", "quantdet.stage": stage, "quantdet.model": model or "",
                    "quantdet.params_hash": params_hash, "git_commit": git_commit(),
                    **env_tags, "quantdet.env.differs_from_study": str(differs).lower(),
                    **{k: str(v) for k, v in (tags or {}).items()}}
        slurm_job = os.environ.get("SLURM_JOB_ID")
        if slurm_job:
            run_tags["slurm_job_id"] = slurm_job
        name = f"{stage}:{model}" if model else stage
        run = client.create_run(exp, run_name=name, tags=run_tags)
        run_id = run.info.run_id
        if differs:  # another machine or venv than the study run's: keep its whole environment
            client.log_dict(run_id, env, ENV_ARTIFACT)
        flat = {k: str(v)[:6000] for k, v in _flatten(params_read).items()}
        numeric = {k: float(v) for k, v in _flatten(metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        client.log_batch(run_id,
                         metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in numeric.items()],
                         params=[Param(k, v) for k, v in flat.items()])
        for path in artifacts or []:
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=Path(path).name)
            elif Path(path).exists():
                client.log_artifact(run_id, str(path))
        if onnx_models:
            import onnx
            with mlflow.start_run(run_id=run_id):
                for artifact_name, path in onnx_models.items():
                    mlflow.onnx.log_model(onnx.load(str(path)), name=artifact_name,
                                          pip_requirements=["onnx", "onnxruntime"])
        client.set_terminated(run_id)
        return run_id
