"""The recorded environment: what it holds, its fingerprint, its report section, its MLflow
tags, the prepared data's fingerprints, and the lock file against requirements.txt."""
import copy
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import pytest
from packaging.requirements import Requirement

from quantdet import environment as E

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def test_environment_holds_the_real_versions_cpu_and_lock():
    env = E.environment()
    assert {"python", "platform", "packages", "lock", "cpu", "gpus", "runtime"} <= env.keys()
    assert env["python"] == platform.python_version()
    assert set(env["packages"]) == set(E.PACKAGES)
    for name in ("torch", "torchvision", "timm", "numpy", "scipy", "pillow", "pandas", "onnx",
                 "onnxruntime", "pycocotools", "faster-coco-eval", "scikit-image", "mlflow",
                 "snakemake", "dvc"):
        assert env["packages"][name] == metadata.version(name), name
    import numpy
    assert env["packages"]["numpy"] == numpy.__version__
    assert env["packages"]["imagecorruptions"] == metadata.version("imagecorruptions-imaug")
    assert env["lock"]["sha256"] == __import__("hashlib").sha256(LOCK.read_bytes()).hexdigest()
    assert set(env["cpu"]["features"]) == set(E.CPU_FEATURES)
    if Path("/proc/cpuinfo").exists():
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
        assert env["cpu"]["features"] == {f: f in flags for f in E.CPU_FEATURES}
        assert env["cpu"]["model"] == re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1).strip()
    json.dumps(env)  # it goes into MLflow as JSON


def test_environment_reads_versions_without_importing_the_packages():
    code = ("import sys; from quantdet import environment as E; env = E.environment(); "
            "heavy = [m for m in ('torch', 'numpy', 'mlflow', 'cv2', 'onnxruntime', 'snakemake') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert env['runtime']['torch'] is None; assert env['packages']['torch']")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_torch_runtime_is_read_once_torch_is_imported():
    import torch

    runtime = E.environment()["runtime"]["torch"]
    assert runtime["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert runtime["num_threads"] == torch.get_num_threads()
    assert runtime["cuda_available"] == torch.cuda.is_available()


def test_installed_agrees_with_importlib_metadata():
    slow = {}
    for dist in metadata.distributions():  # sys.path order: the first one found is imported
        slow.setdefault(E.canonical(dist.metadata["Name"]), dist.version)
    fast = E.installed()
    assert {"torch", "numpy", "mlflow", "pip"} <= fast.keys()
    assert {name: slow.get(name) for name in fast} == fast  # (slow also sees .egg-info folders)


def test_fingerprint_is_stable_and_follows_what_changes_numerics():
    env = E.environment()
    assert E.fingerprint(env) == E.fingerprint(E.environment())
    assert re.fullmatch(r"[0-9a-f]{16}", E.fingerprint(env))
    newer = copy.deepcopy(env)
    newer["packages"]["numpy"] = "0.0.1"
    assert E.fingerprint(newer) != E.fingerprint(env)
    amx = copy.deepcopy(env)
    amx["cpu"]["features"]["amx_bf16"] = not amx["cpu"]["features"]["amx_bf16"]
    assert E.fingerprint(amx) != E.fingerprint(env)
    relocked = copy.deepcopy(env)
    relocked["lock"]["sha256"] = "0" * 64
    assert E.fingerprint(relocked) != E.fingerprint(env)
    threads = copy.deepcopy(env)  # per-job settings are recorded, not part of the identity
    threads["runtime"]["thread_variables"] = {"OMP_NUM_THREADS": "1"}
    threads["runtime"]["usable_cpus"] = 99
    assert E.fingerprint(threads) == E.fingerprint(env)


def test_lock_mismatches_name_what_differs(tmp_path):
    numpy_version = metadata.version("numpy")
    good = tmp_path / "good.lock"
    good.write_text(f"numpy=={numpy_version} \\\n    --hash=sha256:{'a' * 64}\n    # via -r x\n")
    bad = tmp_path / "bad.lock"
    bad.write_text(f"numpy==0.0.1 \\\n    --hash=sha256:{'a' * 64}\nnot-a-package==1.0 \\\n"
                   f"    --hash=sha256:{'b' * 64}\n")
    assert E.lock_info(good)["mismatches"] == []
    assert E.lock_info(bad)["mismatches"] == [
        f"not-a-package missing (locked 1.0)", f"numpy {numpy_version} (locked 0.0.1)"]
    assert E.environment(bad)["lock"]["packages"] == 2


def test_environment_markdown_names_packages_cpu_features_lock_and_data():
    env = E.environment()
    summary = {"source": "embedded", "seed": 3, "splits": {"train": {"images": 12}, "val": {"images": 4}},
               "fingerprints": {"train": "1234abcd1234abcd", "val": "feedbeeffeedbeef"}}
    text = E.environment_markdown(env, summary)
    assert text.startswith("## Environment\n")
    for name, version in env["packages"].items():
        assert f"| {name} | {version or 'not installed'}" in text
    for flag, present in env["cpu"]["features"].items():
        assert f"| {flag} | {'yes' if present else 'no'} |" in text
    assert env["cpu"]["model"] in text
    assert env["lock"]["sha256"] in text and E.fingerprint(env) in text
    assert "| train | 12 | `1234abcd1234abcd` |" in text and "| val | 4 | `feedbeeffeedbeef` |" in text
    changed = copy.deepcopy(env)
    changed["cpu"]["features"]["amx_bf16"] = True
    changed["lock"]["mismatches"] = ["numpy 2.0.0 (locked 2.4.6)"]
    text = E.environment_markdown(changed, {"splits": {}})
    assert "| amx_bf16 | yes |" in text
    assert "numpy 2.0.0 (locked 2.4.6)" in text
    assert "no split fingerprints recorded" in text


# ------------------------------------------------------------------------------------- MLflow
def _runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quantdet")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, ([r for r in runs if r.data.tags.get("quantdet.role") == "study"],
                    [r for r in runs if r.data.tags.get("quantdet.role") == "job"])


def _artifact(client, run_id, tmp_path):
    return json.loads(Path(client.download_artifacts(run_id, "environment.json", str(tmp_path))).read_text())


def _log(stage):
    from quantdet import tracking

    return tracking.log_job({"study": {"name": "env"}}, stage=stage, model="student-fp32",
                            params_read={"x": 1}, params_hash="h", metrics={"AP": 0.5})


def test_log_job_records_the_environment(store, monkeypatch):
    env = E.environment()
    first = _log("evaluate")
    client, (parents, children) = _runs(store)
    assert len(parents) == 1 and [c.info.run_id for c in children] == [first]
    job, parent = children[0].data.tags, parents[0].data.tags
    assert job["quantdet.env.fingerprint"] == E.fingerprint(env) == parent["quantdet.env.fingerprint"]
    assert job["quantdet.env.torch"] == metadata.version("torch")
    assert job["quantdet.env.numpy"] == metadata.version("numpy")
    assert job["quantdet.env.lock_sha256"] == env["lock"]["sha256"][:16]
    assert job["quantdet.env.cpu"] == env["cpu"]["model"]
    assert job["quantdet.env.differs_from_study"] == "false"
    recorded = _artifact(client, parents[0].info.run_id, store / "parent")
    assert recorded["packages"] == env["packages"] and recorded["cpu"] == env["cpu"]
    assert not [a for a in client.list_artifacts(first) if a.path == "environment.json"]

    # a job on another machine or venv keeps its own environment beside the study's
    other = copy.deepcopy(env)
    other["packages"]["numpy"] = "0.0.1"
    monkeypatch.setattr(E, "environment", lambda lock=None: other)
    second = _log("ptq")
    client, (parents, children) = _runs(store)
    job = next(c for c in children if c.info.run_id == second).data.tags
    assert job["quantdet.env.differs_from_study"] == "true"
    assert job["quantdet.env.numpy"] == "0.0.1"
    assert parents[0].data.tags["quantdet.env.fingerprint"] == E.fingerprint(env)
    assert _artifact(client, second, store / "job")["packages"]["numpy"] == "0.0.1"


# ------------------------------------------------------------------------------- prepared data
def test_prepare_summary_has_each_splits_fingerprint(tmp_path):
    from quantdet.data.prepare import prepare_dataset
    from quantdet.stages import split_fingerprint
    from tests.test_data_prepare import shrunk_params

    summary = prepare_dataset(shrunk_params(), tmp_path / "prepared")
    fingerprints = summary["fingerprints"]
    assert set(fingerprints) == {"train", "val", "calib"}
    for split, digest in fingerprints.items():
        assert digest == split_fingerprint(tmp_path / "prepared" / split)
    assert len(set(fingerprints.values())) == 3
    assert json.loads((tmp_path / "prepared" / "summary.json").read_text())["fingerprints"] == fingerprints


# ---------------------------------------------------------------------------------- the lock
def _requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def test_lock_pins_requirements_txt_with_hashes():
    pins = E.read_lock(LOCK)
    assert len(pins) > len(_requirements())
    for req in _requirements():
        name = E.canonical(req.name)
        assert name in pins, f"{req.name} is in requirements.txt but not in the lock: run make lock"
        assert req.specifier.contains(pins[name]["version"], prereleases=True), (req, pins[name])
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            assert pins[name]["version"] == exact[0], req
    for name, pin in pins.items():
        assert pin["hashes"], f"{name} has no --hash=sha256: in the lock"
    # the packages torch's CUDA build pulls in are locked too
    assert any(name.startswith("nvidia-") for name in pins)
    assert "setuptools" in pins and "pip" in pins  # what builds and installs the package


def test_lock_has_the_hash_of_every_local_file_pip_may_take():
    """pip here also reads local indexes (pip.conf); whatever file it takes for a locked
    version, from there or from PyPI, its sha256 must be in the lock or --require-hashes fails."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout
    roots = [Path(urlparse(url).path) for url in re.findall(r"file://\S+?(?=['\s])", config)]
    roots = [root for root in roots if root.is_dir()]
    if not roots:
        pytest.skip("pip has no local index on this machine")
    pins = E.read_lock(LOCK)
    checked = set()
    for root in roots:
        for name, pin in pins.items():
            page = root / name / "index.html"
            if not page.exists():
                continue
            for filename, digest in re.findall(r'href="[^"]*/([^"/#]+)#sha256=([0-9a-f]{64})"',
                                               page.read_text()):
                version = (filename.split("-")[1] if filename.endswith(".whl") else
                           filename.removesuffix(".tar.gz").rsplit("-", 1)[-1])
                if version == pin["version"]:
                    assert digest in pin["hashes"], (name, filename)
                    checked.add(name)
    if any((root / "torch").is_dir() for root in roots):
        assert {"torch", "torchvision"} <= checked, checked
    assert checked
