"""Fixtures shared by test modules: the smoke study run once per test session (once for all of
`make test`'s worker processes), locally; and the order in which the long modules start."""
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"

# `make test` runs pytest on two processes (pytest-xdist, one test file at a time per process:
# module fixtures run once). The files that run studies start first, longest first, so that the
# short ones fill the end; the two first ones overlap the smoke study with the SLURM study, which
# needs it only for its last comparison.
FIRST = ["test_smoke_study.py", "test_cluster.py", "test_yolo_study.py", "test_torchvision_study.py",
         "test_faults.py", "test_dvc_study.py", "test_extend_study.py", "test_gpu_check.py",
         "test_own_detector.py", "test_checkpoint_import.py", "test_distributed.py", "test_peers.py",
         "test_docs_site.py"]


def pytest_collection_modifyitems(config, items):
    # A test module that imports ultralytics itself at collection leaves PIL's Image.open patched
    # for every later test of its process (an unreadable image becomes a pip install of a HEIF
    # plugin); quantdet imports it through detectors.yolo.ultralytics_imported, which undoes that.
    from PIL import Image

    if getattr(Image.open, "__module__", "") == "ultralytics.utils.patches":
        raise pytest.UsageError("a test module imported ultralytics at collection (PIL's Image.open is "
                                "patched): import it through quantdet.detectors.yolo.ultralytics_imported")
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))   # stable: the rest keep their order


def _run_smoke_study(workdir: Path) -> None:
    shutil.copy(SMOKE, workdir / "params.yaml")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                          "--cores", "2"], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        (workdir / "smoke-study-failed.txt").write_text(run.stderr[-5000:])


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The smoke study through `snakemake --cores 2` with a local MLflow store: the reference
    that other runs of it (SLURM, tracking server) are compared with. Read it, don't change it.
    Under pytest-xdist the first worker process that needs it runs it, under a file lock, in the
    session's shared temporary folder; the others wait for it and read the same folder."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        workdir = tmp_path_factory.mktemp("smoke")
        _run_smoke_study(workdir)
    else:
        workdir = tmp_path_factory.getbasetemp().parent / "smoke-study"
        built = workdir.with_name("smoke-study.built")
        with open(workdir.with_name("smoke-study.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not built.exists():
                shutil.rmtree(workdir, ignore_errors=True)   # what a worker that died left
                workdir.mkdir()
                _run_smoke_study(workdir)
                built.touch()
    failed = workdir / "smoke-study-failed.txt"
    assert not failed.exists(), failed.read_text()
    return workdir


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh folder as the working directory, tracked to its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("QUANTDET_TRACKING", "on")
    return tmp_path
