"""Fixtures shared by test modules: the smoke study run once per session, locally."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The smoke study through `snakemake --cores 2` with a local MLflow store: the reference
    that other runs of it (SLURM, tracking server) are compared with. Read it, don't change it."""
    workdir = tmp_path_factory.mktemp("smoke")
    shutil.copy(SMOKE, workdir / "params.yaml")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                          "--cores", "2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-5000:]
    return workdir


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh folder as the working directory, tracked to its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("QUANTDET_TRACKING", "on")
    return tmp_path
