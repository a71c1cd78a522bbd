#!/usr/bin/env python3
"""The GPU check's driver (tests/gpu/README.md); `run_gpu_check.sh` runs it.

    gpu_check.py run --evidence DIR [--dry-run] [--quick] [--jobs N] [--budget S] ...
    gpu_check.py wheels --out tests/gpu/wheels        (`make gpu-wheels`)

`run`:
1. installs, from the wheels brought along, the packages this Python lacks (into a folder of
   the work directory put first on PYTHONPATH: the machine's own environment is left alone);
2. runs every stage of the smoke study (tests/smoke/params.yaml with every QAT recipe and
   every mimic variant: tests/gpu/smoke_gpu.yaml) with the command lines of its generated
   dvc.yaml, the same as the Snakemake rules', in dependency order, several side by side;
   beside them: the default study's `prepare`, one QAT job through DDP at world size 1
   (torchrun, QUANTDET_FORCE_DDP=1: nccl on CUDA, gloo on a CPU) in a folder of its own, and
   `pytest tests/test_device.py`;
3. then, alone and timed, the default study's student pretraining and one QAT job
   (train.pretrain_processes: null on one GPU: tests/gpu/default_one_gpu.yaml), as long as
   the time budget lasts;
4. writes the evidence: summary.json and summary.md (every command, exit status, wall time,
   the `numerics` record of each training job), logs.tar.gz (every job's output, the params
   and dvc.yaml files). No more than a few files: the device tool brings back 8 at most.

Standard library only: it runs under whatever Python holds PyTorch on the GPU machine, and
reads yaml and model files in child processes, after the installs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "tests" / "gpu"
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"
SMOKE_OVERLAYS = (SMOKE, GPU / "smoke_gpu.yaml")
DEFAULT_OVERLAYS = (GPU / "default_one_gpu.yaml",)
DEFAULT_SMALL = GPU / "default_small.yaml"
WHEELS_DIR = GPU / "wheels"

TRAINING = ("pretrain", "qat", "mimic", "zeroshot_data")
# the GPU-trained QAT model whose ONNX export is evaluated on the CPU in --quick
QUICK_TARGETS = ("evaluate-student-qat-daqat-w8a8-ort",)
DDP_MODEL = "student-qat-daqat-w8a8"
DEFAULT_TIMED = ("pretrain-student-fp32", "qat-student-qat-daqat-w8a8")
# ready jobs start in this order: the training chain first (Snakemake's `priority: 10`)
PRIORITY = {"prepare": 0, "corrupt": 1, "pretrain": 0, "zeroshot_data": 1, "qat": 2, "mimic": 2,
            "ddp": 2, "ptq": 3, "peer": 4, "export": 4, "pytest": 5, "evaluate": 6}

# ---------------------------------------------------------------------------------------------
# wheels

# What the GPU machine's Python lacks of what the stages import (tests/gpu/README.md): the
# packages and their needs that are not in that image. Pinned by requirements.lock.
WHEELS = ("pycocotools", "faster-coco-eval", "imagecorruptions-imaug", "jsonschema",
          "jsonschema-specifications", "referencing", "rpds-py", "attrs", "typing-extensions")
# In the GPU machine's image (the device tool's package list), and so not brought along.
# opencv-python is there as opencv-python-headless: the same cv2, so imagecorruptions-imaug is
# installed without its dependencies (--no-deps, as every wheel here).
ON_MACHINE = {"numpy", "pillow", "scipy", "scikit-image", "numba", "llvmlite", "opencv-python",
              "opencv-python-headless", "torch", "torchvision", "timm", "onnx", "onnxruntime",
              "scikit-learn", "pandas", "matplotlib", "pyyaml", "tqdm", "psutil", "pytest",
              "packaging", "imageio", "tifffile", "lazy-loader", "networkx", "joblib",
              "threadpoolctl", "huggingface-hub", "safetensors", "protobuf", "ml-dtypes", "setuptools"}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: Path = ROOT / "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def wheel_metadata(path: Path) -> tuple[str, list[str], list[str]]:
    """(distribution name, Requires-Dist lines, top-level import names) of a wheel."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode()
        top = next((n for n in names if n.endswith(".dist-info/top_level.txt") and n.count("/") == 1), None)
        if top:
            modules = [m.strip() for m in z.read(top).decode().splitlines() if m.strip()]
        else:
            modules = sorted({n.split("/")[0].removesuffix(".py") for n in names
                              if n.endswith(".py") or "/" in n})
    dist = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
    requires = re.findall(r"^Requires-Dist: (.+)$", text, re.M)
    modules = [m for m in modules if m.isidentifier() and not m.startswith("_")]
    return dist, requires, modules


def unmet_requirements(folder: Path) -> list[str]:
    """Requirements of the folder's wheels (for the GPU machine's Python) met neither by a wheel
    beside them nor by a package of the machine's image."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
    have = {canonical(wheel_metadata(w)[0]) for w in folder.glob("*.whl")}
    unmet = []
    for wheel in sorted(folder.glob("*.whl")):
        dist, requires, _ = wheel_metadata(wheel)
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(dict(TARGET)):
                continue
            name = canonical(req.name)
            if name not in have and name not in ON_MACHINE:
                unmet.append(f"{dist} needs {line}")
    return unmet


def download_wheels(out: Path, extra: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    pins = lock_pins()
    specs = [f"{p}=={pins[canonical(p)]}" if canonical(p) in pins else p for p in WHEELS] + list(extra)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(out), *specs]
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    done = subprocess.run(cmd)
    if done.returncode:
        return done.returncode
    wanted = {canonical(s.split("==")[0].split("[")[0]) for s in specs}
    for wheel in out.glob("*.whl"):  # one version of each: two stop the whole install
        if canonical(wheel_metadata(wheel)[0]) not in wanted:
            print(f"removing {wheel.name}: not in the list (an older download?)")
            wheel.unlink()
    unmet = unmet_requirements(out)
    size = sum(w.stat().st_size for w in out.glob("*.whl"))
    for wheel in sorted(out.glob("*.whl")):
        print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"{out}: {len(list(out.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB "
          f"(the device tool carries 64 MiB at most, the repository included)")
    if unmet:
        print("unmet on the GPU machine:\n  " + "\n  ".join(unmet), file=sys.stderr)
        return 1
    return 0


def install_missing(folder: Path, site: Path, force: bool = False) -> dict:
    """Install each wheel of `folder` whose modules this Python cannot find (all with `force`)
    into `site`, without dependencies and without an index: the folder is the closure."""
    import importlib.util

    record = {"wheels": str(folder), "site": str(site), "present": [], "installed": [], "log": ""}
    if not folder.is_dir() or not list(folder.glob("*.whl")):
        record["log"] = f"{folder}: no wheels (make gpu-wheels; the device tool must carry it)"
        return record
    todo = []
    for wheel in sorted(folder.glob("*.whl")):
        dist, _, modules = wheel_metadata(wheel)
        try:
            found = bool(modules) and all(importlib.util.find_spec(m) is not None for m in modules)
        except (ImportError, ValueError):
            found = False
        (record["present"] if found and not force else record["installed"]).append(
            {"dist": dist, "wheel": wheel.name, "modules": modules})
        if force or not found:
            todo.append(str(wheel))
    if todo:
        site.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--upgrade",
               "--target", str(site), *todo]
        done = subprocess.run(cmd, capture_output=True, text=True)
        record["command"] = " ".join(shlex.quote(c) for c in cmd)
        record["rc"] = done.returncode
        record["log"] = (done.stdout + done.stderr)[-4000:]
        if done.returncode:  # no usable pip: a wheel is a zip of what goes into site-packages
            for wheel in todo:
                with zipfile.ZipFile(wheel) as z:
                    z.extractall(site)
            record["fallback"] = "pip failed: the wheels were unzipped into the folder instead"
            record["rc"] = 0
    return record


# ---------------------------------------------------------------------------------------------
# the environment

MODULES = ("yaml", "jsonschema", "timm", "tqdm", "scipy", "skimage", "sklearn", "cv2", "numba",
           "imagecorruptions", "pycocotools", "faster_coco_eval", "onnx", "onnxruntime", "pandas",
           "matplotlib", "psutil", "pytest")
OPTIONAL = ("openvino", "mlflow", "snakemake", "dvc", "tensorrt")  # not needed by the check

PROBE = r"""
import importlib, json, os, platform, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}, "optional": {}}
for name in MODULES:  # imported: a module present but broken (a missing need) shows here
    try:
        m = importlib.import_module(name)
        out["modules"][name] = {"ok": True, "version": str(getattr(m, "__version__", "")),
                                "file": str(getattr(m, "__file__", ""))}
    except Exception as e:
        out["modules"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
import importlib.util
for name in OPTIONAL:  # only whether it is there
    out["optional"][name] = importlib.util.find_spec(name) is not None
import torch
cuda = torch.cuda.is_available()
out["torch"] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                "cuda_available": cuda, "device_count": torch.cuda.device_count() if cuda else 0,
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
if cuda:
    p = torch.cuda.get_device_properties(0)
    out["torch"].update({"device_name": torch.cuda.get_device_name(0),
                         "capability": list(torch.cuda.get_device_capability(0)),
                         "memory_gib": round(p.total_memory / 2**30, 1),
                         "cudnn": torch.backends.cudnn.version(),
                         "nccl": ".".join(map(str, torch.cuda.nccl.version()))
                                 if hasattr(torch.cuda, "nccl") else None})
out["torch"]["distributed_nccl"] = torch.distributed.is_nccl_available()
out["torch"]["distributed_gloo"] = torch.distributed.is_gloo_available()
out["cpus"] = os.cpu_count()
out["platform"] = platform.platform()
import quantdet
out["quantdet"] = quantdet.__file__
print(json.dumps(out))
"""


def probe(env: dict) -> dict:
    code = f"MODULES = {MODULES!r}\nOPTIONAL = {OPTIONAL!r}\n" + PROBE
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": done.stderr[-3000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# Read in a child process: yaml and torch may exist only after the installs.
READ_STAGES = r"""
import json, sys, yaml
stages = yaml.safe_load(open(sys.argv[1]))["stages"]
print(json.dumps([{"name": n, "cmd": s["cmd"], "deps": s.get("deps", []),
                   "outs": [next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", [])]
                          + [next(iter(o)) if isinstance(o, dict) else o for o in s.get("metrics", [])]}
                  for n, s in stages.items()]))
"""

READ_NUMERICS = r"""
import json, sys, torch
payload = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
history = payload.get("history") or {}
epochs = history.get("epochs") or []
print(json.dumps({"numerics": history.get("numerics"), "epochs": len(epochs),
                  "train_seconds": round(sum(e.get("seconds", 0) for e in epochs), 2),
                  "last_epoch": {k: v for k, v in (epochs[-1] if epochs else {}).items()
                                 if isinstance(v, (int, float))}}, default=str))
"""


# ---------------------------------------------------------------------------------------------
# jobs


class Task:
    def __init__(self, name, group, stage, command, cwd, deps=(), rule_command=None, env=None,
                 timeout=None, setup=None, target=None, out=None, phase=1):
        self.name, self.group, self.stage, self.command = name, group, stage, command
        self.rule_command = rule_command
        self.cwd, self.deps, self.env, self.timeout = Path(cwd), list(deps), env or {}, timeout
        self.setup, self.target, self.out, self.phase = setup, target, out, phase
        self.status = None   # ok | failed | timeout | skipped
        self.rc = self.seconds = self.started = self.reason = None
        self.proc = self.log = self.t0 = None
        self.details: dict = {}

    def record(self) -> dict:
        row = {"name": self.name, "group": self.group, "stage": self.stage, "target": self.target,
               "command": self.command, "cwd": str(self.cwd), "status": self.status, "rc": self.rc,
               "seconds": self.seconds, "started_s": self.started}
        if self.rule_command and self.rule_command != self.command:
            row["rule_command"] = self.rule_command
        if self.reason:
            row["reason"] = self.reason
        if self.env:
            row["env"] = self.env
        row.update(self.details)
        return row


def option(command: str, name: str) -> str | None:
    parts = shlex.split(command)
    return parts[parts.index(name) + 1] if name in parts else None


def stage_dependencies(stages: list[dict]) -> dict[str, set[str]]:
    """A stage depends on the stages whose outputs it reads (a folder: everything under it)."""
    def covers(dep, out):
        return dep == out or out.startswith(dep.rstrip("/") + "/") or dep.startswith(out.rstrip("/") + "/")
    needs = {}
    for s in stages:
        needs[s["name"]] = {o["name"] for o in stages if o is not s
                            and any(covers(d, out) for d in s["deps"] for out in o["outs"])}
    return needs


def ancestors(names, needs) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(needs[n])
    return seen


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.evidence = Path(args.evidence).resolve()
        self.work = Path(args.work).resolve()
        self.logs = self.work / "logs"
        self.summary: dict = {"check": "quantdet GPU check (tests/gpu/run_gpu_check.sh)",
                              "started": datetime.datetime.now().isoformat(timespec="seconds"),
                              "argv": sys.argv[1:], "repository": str(ROOT), "work": str(self.work)}
        self.tasks: list[Task] = []
        self.studies: dict[str, Path] = {}

    # -- helpers ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.args.budget - self.elapsed()

    def say(self, msg: str) -> None:
        print(f"[gpu-check {self.elapsed():6.0f}s] {msg}", flush=True)

    def quantdet(self, *args, cwd) -> None:
        """A setup command (compose, dvc-yaml), logged; raises on failure."""
        cmd = ["quantdet", *map(str, args)]
        done = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True)
        with open(self.logs / "setup.log", "a") as f:
            f.write(f"$ (cd {cwd}) {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-3000:]}")

    def study(self, key: str, overlays) -> list[dict]:
        """A work folder with the composed params.yaml and its generated dvc.yaml: the stages."""
        folder = self.work / key
        folder.mkdir(parents=True, exist_ok=True)
        self.quantdet("compose", *overlays, "--out", "params.yaml", cwd=folder)
        self.quantdet("dvc-yaml", "--params", "params.yaml", "--out", "dvc.yaml", cwd=folder)
        self.studies[key] = folder
        done = subprocess.run([sys.executable, "-c", READ_STAGES, str(folder / "dvc.yaml")],
                              env=self.env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    def write_summary(self) -> None:
        self.summary["seconds"] = round(self.elapsed(), 1)
        self.summary["tasks"] = [t.record() for t in self.tasks]
        self.summary["verdict"] = self.verdict()
        write_atomic(self.evidence / "summary.json", json.dumps(self.summary, indent=2, default=str))
        write_atomic(self.evidence / "summary.md", self.markdown())

    def pack_logs(self) -> None:
        tmp = self.evidence / ".logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            if self.logs.exists():
                tar.add(self.logs, arcname="logs")
            for key, folder in self.studies.items():
                for name in ("params.yaml", "dvc.yaml", "results/report.md", "results/metrics"):
                    if (folder / name).exists():
                        tar.add(folder / name, arcname=f"{key}/{name}")
        tmp.replace(self.evidence / "logs.tar.gz")

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        self.evidence.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        site, shim = self.work / "site", self.work / "bin"
        install = install_missing(Path(self.args.wheels), site, force=self.args.force_install)
        self.summary["install"] = install
        if install.get("rc"):
            self.say(f"installing wheels failed:\n{install['log']}")
        # `quantdet` on the PATH runs this Python on the repository's source: the dvc.yaml
        # commands run as written, without installing the package
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "quantdet").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m quantdet.cli "$@"\n')
        (shim / "quantdet").chmod(0o755)
        env = dict(os.environ)
        paths = ([str(site)] if install["installed"] else []) + [str(ROOT / "src")]
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
        env["QUANTDET_TRACKING"] = "off"   # no MLflow on the GPU machine; every file is written anyway
        env["PYTHONUNBUFFERED"] = "1"
        env["MPLBACKEND"] = "Agg"
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("QUANTDET_FORCE_DDP", None)
        if self.args.dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.env = env
        info = probe(env)
        self.summary["environment"] = info
        cuda = bool(info.get("torch", {}).get("cuda_available"))
        self.cuda = cuda
        self.summary["cuda"] = cuda
        self.summary["dry_run"] = not cuda
        if not cuda:
            self.summary["dry_run_reason"] = ("dry run: no CUDA (--dry-run: CUDA_VISIBLE_DEVICES='')"
                                              if self.args.dry_run else "dry run: no CUDA")
        missing = [m for m, r in info.get("modules", {}).items() if not r["ok"]]
        self.summary["missing_modules"] = missing
        self.say(f"python {info.get('python')} torch {info.get('torch', {}).get('version')} "
                 f"cuda {cuda} {info.get('torch', {}).get('device_name', '')}; "
                 f"installed from wheels: {[w['dist'] for w in install['installed']]}; "
                 f"missing modules: {missing or 'none'}")
        if "error" in info:
            raise RuntimeError(f"probing the environment failed:\n{info['error']}")

    def plan(self) -> None:
        a = self.args
        gpu_timeout = a.job_timeout or (300 if self.cuda else 3600)
        # the smoke study: every stage, or (--quick) those that a QAT model's ONNX evaluation needs
        stages = self.study("smoke", SMOKE_OVERLAYS)
        needs = stage_dependencies(stages)
        chosen = ancestors(QUICK_TARGETS, needs) if a.quick else {s["name"] for s in stages}
        smoke = self.studies["smoke"]
        for s in stages:
            if s["name"] in chosen:
                stage = s["name"].split("-")[0]
                self.tasks.append(Task(f"smoke/{s['name']}", "smoke", stage, s["cmd"], smoke,
                                       [f"smoke/{d}" for d in sorted(needs[s["name"]])],
                                       rule_command=s["cmd"], timeout=gpu_timeout, target=option(s["cmd"], "--model")
                                       or option(s["cmd"], "--role") or option(s["cmd"], "--generator")
                                       or option(s["cmd"], "--corruption"), out=option(s["cmd"], "--out")))
        self.summary["smoke"] = {"overlays": [str(p.relative_to(ROOT)) for p in SMOKE_OVERLAYS],
                                 "stages_in_dvc_yaml": len(stages), "stages_run": len(chosen),
                                 "quick": a.quick}
        # DDP at world size 1 through torchrun, in its own folder (own checkpoint and output)
        if not a.no_ddp:
            rule = next(s["cmd"] for s in stages if s["name"] == f"qat-{DDP_MODEL}")
            parts = shlex.split(rule)
            if "--log" in parts:  # torchrun's parser takes --log for an abbreviation of its options
                i = parts.index("--log")
                del parts[i:i + 2]
            command = " ".join([shlex.quote(sys.executable), "-m", "torch.distributed.run", "--standalone",
                                "--nproc_per_node", "1", "-m", "quantdet.cli", *map(shlex.quote, parts[1:])])
            ddp = self.work / "ddp"
            pre = [f"smoke/{n}" for n in sorted(needs[f"qat-{DDP_MODEL}"])]
            self.tasks.append(Task("ddp/qat-" + DDP_MODEL, "ddp", "ddp", command, ddp, pre,
                                   rule_command=rule, env={"QUANTDET_FORCE_DDP": "1"}, timeout=gpu_timeout,
                                   setup=lambda: link_inputs(smoke, ddp, ["params.yaml", "data",
                                                                          "results/models/student-fp32.pt"]),
                                   target=DDP_MODEL, out=option(rule, "--out")))
        # the default study: prepare beside the smoke study, pretraining and one QAT job timed after it
        scale = a.default
        if scale == "auto":
            scale = "full" if self.cuda else "small"
        self.summary["default_study"] = {"scale": scale, "overrides": {
            "train.pretrain_processes": "null (one GPU: 2 processes would relaunch under torchrun "
                                        "and need 2 GPUs; tests/gpu/default_one_gpu.yaml)"}}
        if scale != "skip":
            overlays = DEFAULT_OVERLAYS + ((DEFAULT_SMALL,) if scale == "small" else ())
            if scale == "small":
                self.summary["default_study"]["overrides"]["scaled down"] = str(DEFAULT_SMALL.relative_to(ROOT))
            self.summary["default_study"]["overlays"] = [str(p.relative_to(ROOT)) for p in overlays]
            dstages = {s["name"]: s for s in self.study("default", overlays)}
            dneeds = stage_dependencies(list(dstages.values()))
            wanted = ancestors(DEFAULT_TIMED, dneeds)
            if wanted != {"prepare", *DEFAULT_TIMED}:
                raise RuntimeError(f"the default study's timed jobs need more than prepare: {sorted(wanted)}")
            folder = self.studies["default"]
            self.tasks.append(Task("default/prepare", "default", "prepare", dstages["prepare"]["cmd"],
                                   folder, rule_command=dstages["prepare"]["cmd"], timeout=gpu_timeout,
                                   out=option(dstages["prepare"]["cmd"], "--out")))
            previous = "default/prepare"
            for name in DEFAULT_TIMED:
                cmd = dstages[name]["cmd"]
                self.tasks.append(Task(f"default/{name}", "default", name.split("-")[0], cmd, folder,
                                       [previous], rule_command=cmd, timeout=None, phase=2,
                                       target=option(cmd, "--model") or option(cmd, "--role"),
                                       out=option(cmd, "--out")))
                previous = f"default/{name}"
        else:
            self.summary["default_study"]["skipped"] = "--default skip"
        if not a.no_pytest:
            self.tasks.append(Task("pytest/test_device", "pytest", "pytest",
                                   f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider "
                                   "tests/test_device.py", ROOT, timeout=gpu_timeout))

    # -- running ------------------------------------------------------------------------------
    def start(self, t: Task) -> None:
        if t.setup:
            t.setup()
        t.cwd.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{t.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t.log = open(log, "w")
        t.log.write(f"$ cd {t.cwd}\n$ {' '.join(f'{k}={v}' for k, v in t.env.items())} {t.command}\n")
        t.log.flush()
        t.started = round(self.elapsed(), 1)
        t.t0 = time.monotonic()
        t.proc = subprocess.Popen(["bash", "-c", t.command], cwd=t.cwd, env={**self.env, **t.env},
                                  stdout=t.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.say(f"start {t.name}")

    def finish(self, t: Task, rc: int | None, status: str, reason: str | None = None) -> None:
        t.seconds = round(time.monotonic() - t.t0, 2) if t.t0 else None
        t.rc, t.status, t.reason = rc, status, reason
        if t.log:
            t.log.write(f"\n# exit {rc} ({status}{': ' + reason if reason else ''}) after {t.seconds} s\n")
            t.log.close()
        if status == "ok":
            try:
                t.details.update(self.evidence_of(t))
            except Exception as e:  # a missing record is a finding, not a crash of the check
                t.details["evidence_error"] = f"{type(e).__name__}: {e}"
        self.say(f"{status:7s} {t.name} rc={rc} {t.seconds}s" + (f" ({reason})" if reason else ""))
        self.write_summary()
        self.pack_logs()

    def kill(self, t: Task) -> None:
        try:
            os.killpg(t.proc.pid, signal.SIGTERM)
            try:
                t.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(t.proc.pid, signal.SIGKILL)
                t.proc.wait()
        except ProcessLookupError:
            pass

    def run_phase(self, tasks: list[Task], jobs: int) -> None:
        by_name = {t.name: t for t in self.tasks}
        order = {t.name: i for i, t in enumerate(tasks)}
        pending = sorted(tasks, key=lambda t: (PRIORITY.get(t.stage, 9), order[t.name]))
        running: list[Task] = []
        while pending or running:
            for t in list(pending):
                deps = [by_name[d] for d in t.deps if d in by_name]
                failed = [d.name for d in deps if d.status not in (None, "ok")]
                if failed:
                    pending.remove(t)
                    self.finish(t, None, "skipped", f"needs {', '.join(failed)}")
                    continue
                if any(d.status is None for d in deps) or len(running) >= jobs:
                    continue
                if self.remaining() <= 0:
                    pending.remove(t)
                    self.finish(t, None, "skipped", f"time budget ({self.args.budget:.0f} s) spent")
                    continue
                pending.remove(t)
                self.start(t)
                running.append(t)
            time.sleep(0.2)
            for t in list(running):
                rc = t.proc.poll()
                took = time.monotonic() - t.t0
                if rc is not None:
                    running.remove(t)
                    self.finish(t, rc, "ok" if rc == 0 else "failed")
                elif (t.timeout and took > t.timeout) or self.remaining() <= 0:
                    self.kill(t)
                    running.remove(t)
                    why = (f"job timeout {t.timeout:.0f} s" if t.timeout and took > t.timeout
                           else f"time budget ({self.args.budget:.0f} s) spent")
                    self.finish(t, t.proc.returncode, "timeout", why)

    # -- evidence -----------------------------------------------------------------------------
    def evidence_of(self, t: Task) -> dict:
        out = {}
        if t.stage == "pretrain" and t.out:
            record = json.loads((t.cwd / t.out).with_suffix(".train.json").read_text())
            history = record.get("history", {})
            out["numerics"] = history.get("numerics")
            out["train_seconds"] = record.get("seconds")
            out["epochs"] = len(history.get("epochs", []))
            if history.get("epochs"):
                out["last_epoch"] = {k: v for k, v in history["epochs"][-1].items() if isinstance(v, (int, float))}
        elif t.stage in ("qat", "mimic", "ddp") and t.out:
            done = subprocess.run([sys.executable, "-c", READ_NUMERICS, str(t.cwd / t.out)], env=self.env,
                                  capture_output=True, text=True, check=True)
            out.update(json.loads(done.stdout.strip().splitlines()[-1]))
        elif t.stage == "zeroshot_data" and t.out:
            record = json.loads((t.cwd / t.out / "summary.json").read_text())
            out["numerics"] = record.get("numerics")
            out["generate_seconds"] = record.get("seconds")
        elif t.stage == "evaluate" and t.target and t.out:
            record = json.loads((t.cwd / t.out / "clean" / "metrics.json").read_text())
            first = record["results"][0]
            out["clean"] = {"runtime": record.get("runtime"), "runtime_info": record.get("runtime_info"),
                            "AP": first["metrics"].get("AP"), "AP50": first["metrics"].get("AP50")}
        elif t.stage == "pytest":
            text = (self.logs / f"{t.name}.log").read_text()
            lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
            out["result"] = lines[-1].strip("= ") if lines else None
        return out

    def verdict(self) -> dict:
        problems = []
        for t in self.tasks:
            if t.status not in (None, "ok"):
                problems.append(f"{t.name}: {t.status}" + (f" ({t.reason})" if t.reason else "")
                                + (f", exit {t.rc}" if t.rc not in (None, 0) else ""))
            numerics = t.details.get("numerics")
            if t.status == "ok" and (t.stage in TRAINING or t.stage == "ddp"):
                if not numerics:
                    problems.append(f"{t.name}: no numerics record")
                elif self.cuda and numerics.get("device") != "cuda":
                    problems.append(f"{t.name}: trained on {numerics.get('device')}, not cuda")
            if t.stage == "ddp" and t.status == "ok" and (numerics or {}).get("ddp") is not True:
                problems.append(f"{t.name}: numerics.ddp is not true")
        not_run = [t.name for t in self.tasks if t.status is None]
        compare = {}
        ddp = next((t for t in self.tasks if t.stage == "ddp" and t.status == "ok"), None)
        single = next((t for t in self.tasks if ddp and t.group == "smoke" and t.target == ddp.target
                       and t.status == "ok"), None)
        if ddp and single:
            compare = {"model": ddp.target, "loss_ddp": ddp.details.get("last_epoch", {}).get("loss"),
                       "loss_single_process": single.details.get("last_epoch", {}).get("loss")}
        devices = sorted({(t.details.get("numerics") or {}).get("device") for t in self.tasks
                          if t.details.get("numerics")} - {None})
        return {"ok": not problems and not not_run, "problems": problems, "not_run": not_run,
                "tasks": len(self.tasks), "ok_tasks": sum(t.status == "ok" for t in self.tasks),
                "training_devices": devices, "ddp_vs_single_process": compare}

    def markdown(self) -> str:
        s, v = self.summary, self.verdict()
        env = s.get("environment", {})
        torch_info = env.get("torch", {})
        lines = ["# quantdet GPU check", ""]
        if s.get("dry_run"):
            lines += [f"**{s.get('dry_run_reason', 'dry run: no CUDA')}**: every stage ran on the CPU.", ""]
        lines += [f"- verdict: {'OK' if v['ok'] else 'PROBLEMS'} ({v['ok_tasks']}/{v['tasks']} jobs ok, "
                  f"{s.get('seconds')} s); training devices: {', '.join(v['training_devices']) or '-'}",
                  f"- python {env.get('python')} ({env.get('executable')}), torch {torch_info.get('version')} "
                  f"(CUDA build {torch_info.get('cuda_build')}), CUDA available: {torch_info.get('cuda_available')}"
                  + (f", {torch_info.get('device_name')} (cc {torch_info.get('capability')}, "
                     f"{torch_info.get('memory_gib')} GiB, cuDNN {torch_info.get('cudnn')}, NCCL {torch_info.get('nccl')})"
                     if torch_info.get("cuda_available") else ""),
                  f"- installed from wheels: {', '.join(w['dist'] for w in s.get('install', {}).get('installed', [])) or 'none'}; "
                  f"modules still missing: {', '.join(s.get('missing_modules', [])) or 'none'}",
                  f"- smoke study: {s.get('smoke', {}).get('stages_run')} of "
                  f"{s.get('smoke', {}).get('stages_in_dvc_yaml')} dvc.yaml stages "
                  f"({', '.join(s.get('smoke', {}).get('overlays', []))})",
                  f"- default study: {s.get('default_study', {}).get('scale')}; overrides: "
                  + "; ".join(f"{k}: {val}" for k, val in s.get('default_study', {}).get('overrides', {}).items()),
                  "- tracking off (QUANTDET_TRACKING=off): no MLflow on the GPU machine; TensorRT is not part of the check",
                  ""]
        ddp = next((t for t in self.tasks if t.stage == "ddp"), None)
        if ddp is not None:
            c = v.get("ddp_vs_single_process") or {}
            lines[-1:-1] = [f"- DDP at world size 1 (torchrun, QUANTDET_FORCE_DDP=1, "
                            f"{'nccl' if self.cuda else 'gloo'}): {ddp.status or 'not run'}, numerics.ddp = "
                            f"{(ddp.details.get('numerics') or {}).get('ddp')}; last-epoch loss "
                            f"{c.get('loss_ddp')} (single process: {c.get('loss_single_process')})"]
        if v["problems"] or v["not_run"]:
            lines += ["## Problems", ""] + [f"- {p}" for p in v["problems"]] + \
                     [f"- not run: {n}" for n in v["not_run"]] + [""]
        timed = [t for t in self.tasks if t.group == "default" and t.phase == 2]
        if timed:
            lines += ["## Default study, timed (alone)", "", "| job | status | wall s | train s | epochs | images/s | device |",
                      "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
            for t in timed:
                last = t.details.get("last_epoch", {})
                lines.append(f"| {t.name} | {t.status}{' (' + t.reason + ')' if t.reason else ''} | {t.seconds} | "
                             f"{t.details.get('train_seconds', '')} | {t.details.get('epochs', '')} | "
                             f"{round(last['images_per_s'], 1) if 'images_per_s' in last else ''} | "
                             f"{(t.details.get('numerics') or {}).get('device', '')} |")
            lines.append("")
        lines += ["## Jobs", "", "| job | exit | status | wall s | numerics (device, gpu, autocast, tf32, ddp) | command |",
                  "| --- | ---: | --- | ---: | --- | --- |"]
        for t in self.tasks:
            n = t.details.get("numerics")
            num = (f"{n.get('device')}, {n.get('gpu')}, {n.get('autocast')}, {n.get('tf32')}, {n.get('ddp', '-')}"
                   if n else "")
            extra = t.details.get("clean") or t.details.get("result") or ""
            if isinstance(extra, dict):
                extra = f"clean AP {extra.get('AP'):.4f} in {extra.get('runtime')}"
            env = " ".join(f"{k}={val}" for k, val in t.env.items())
            lines.append(f"| {t.name} | {t.rc if t.rc is not None else ''} | {t.status or 'not run'}"
                         f"{' (' + t.reason + ')' if t.reason else ''} | {t.seconds if t.seconds is not None else ''} | "
                         f"{num or extra} | `{(env + ' ') if env else ''}{t.command}` |")
        return "\n".join(lines) + "\n"

    # -- main ---------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.setup()
            self.plan()
        except Exception as e:
            self.summary["error"] = f"{type(e).__name__}: {e}"
            self.say(self.summary["error"])
            self.write_summary()
            self.pack_logs()
            return 1
        self.write_summary()
        jobs = self.args.jobs or (min(8, max(1, (os.cpu_count() or 2) // 2)))
        self.summary["jobs_side_by_side"] = jobs
        self.say(f"{len(self.tasks)} jobs, {jobs} side by side, budget {self.args.budget:.0f} s")
        self.run_phase([t for t in self.tasks if t.phase == 1], jobs)
        self.run_phase([t for t in self.tasks if t.phase == 2], 1)   # alone: timed
        self.summary["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        self.write_summary()
        self.pack_logs()
        v = self.verdict()
        self.say(f"{'OK' if v['ok'] else 'PROBLEMS'}: {v['ok_tasks']}/{v['tasks']} jobs ok; evidence in {self.evidence}")
        for p in v["problems"]:
            self.say(f"  {p}")
        return 0 if v["ok"] else 1


def link_inputs(src: Path, dst: Path, paths) -> None:
    """`dst` reads `src`'s inputs through links: its own outputs and checkpoints stay apart."""
    for rel in paths:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".yaml"):
            shutil.copy(src / rel, target)
        elif not target.exists():
            target.symlink_to(src / rel)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the check")
    r.add_argument("--evidence", required=True, help="folder the evidence is written to")
    r.add_argument("--work", help="work folder (default: a new folder under $TMPDIR)")
    r.add_argument("--wheels", default=str(WHEELS_DIR), help="wheels of the missing packages")
    r.add_argument("--force-install", action="store_true", help="install every wheel, present or not")
    r.add_argument("--dry-run", action="store_true", help="hide CUDA (CUDA_VISIBLE_DEVICES='')")
    r.add_argument("--quick", action="store_true",
                   help="of the smoke study, only what one QAT model's ONNX evaluation needs")
    r.add_argument("--jobs", type=int, default=0, help="jobs side by side (default: cores/2, at most 8)")
    r.add_argument("--budget", type=float, default=0,
                   help="seconds after which no job starts and running ones stop (default: 420 with "
                        "CUDA, 7200 without)")
    r.add_argument("--job-timeout", type=float, default=0, help="seconds per smoke job (default 300 with CUDA)")
    r.add_argument("--default", choices=("auto", "full", "small", "skip"), default="auto",
                   help="the default study's timed jobs: full settings, scaled down "
                        "(tests/gpu/default_small.yaml), or skipped; auto: full with CUDA, small without")
    r.add_argument("--no-ddp", action="store_true")
    r.add_argument("--no-pytest", action="store_true")
    w = sub.add_parser("wheels", help="download the wheels the GPU machine lacks")
    w.add_argument("--out", default=str(WHEELS_DIR))
    w.add_argument("extra", nargs="*", help="more requirements (name==version)")
    args = p.parse_args(argv)
    if args.command == "wheels":
        return download_wheels(Path(args.out), args.extra)
    if not args.work:
        args.work = tempfile.mkdtemp(prefix="quantdet-gpu-check-")
    if not args.budget:
        cuda = False
        if not args.dry_run and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
            cuda = shutil.which("nvidia-smi") is not None
        args.budget = 420.0 if cuda else 7200.0
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
