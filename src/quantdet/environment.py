"""The environment a number was made in, recorded next to every result.

`environment()` is cheap: it reads package metadata (`importlib.metadata`, never an import of
the package itself), /proc/cpuinfo and the lock file. What only torch knows (its CPU kernel
level, CUDA, its thread pools) is read only when torch is already imported by the caller.

`fingerprint(env)` hashes the part that identifies an environment: Python, OS and libc,
package versions, the lock file and whether the installed packages match it, the CPU model and
its numerics-relevant features, and the GPUs. The `runtime` part (kernel release, core count,
thread settings, torch's runtime view) is recorded but not hashed: it differs from job to job
of one study without making it another environment.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

LOCK_FILE = "requirements.lock"

# name shown -> the distributions that provide it, first match wins
PACKAGES = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "pillow": ("pillow",),
    "pandas": ("pandas",),
    "opencv": ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
               "opencv-contrib-python-headless"),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxscript": ("onnxscript",),
    "pycocotools": ("pycocotools",),
    "faster-coco-eval": ("faster-coco-eval",),
    "scikit-image": ("scikit-image",),
    "scikit-learn": ("scikit-learn",),
    "imagecorruptions": ("imagecorruptions-imaug", "imagecorruptions"),
    "mlflow": ("mlflow",),
    "snakemake": ("snakemake",),
    "dvc": ("dvc",),
    "ultralytics": ("ultralytics",),   # the yolo detector family's networks, loss and checkpoints
}
# versions on every job run's tags (all of them are in the parent run's environment.json)
KEY_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scipy", "pillow", "opencv",
                "onnxruntime", "pycocotools", "faster-coco-eval", "ultralytics")

# /proc/cpuinfo flags that change which kernels run, hence the rounding of results
CPU_FEATURES = {
    "avx2": "256-bit vectors and FMA: the baseline vectorized fp32 kernels",
    "avx512f": "512-bit vectors: other kernels, other summation order in reductions",
    "avx512_vnni": "int8 dot products in one instruction (oneDNN and onnxruntime INT8 kernels)",
    "avx_vnni": "the same on 256-bit vectors; without either, onnxruntime's U8S8 kernels saturate",
    "avx512_bf16": "bf16 dot products (autocast and bf16 kernels)",
    "amx_bf16": "AMX tiles for bf16 matrix products",
    "amx_int8": "AMX tiles for int8 matrix products",
    "amx_tile": "AMX tile registers (needed by both of the above)",
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (`Pillow`, `ruamel.yaml` -> `ruamel-yaml`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """{canonical name: version} of the installed distributions, the first on sys.path winning.

    Read from the `<name>-<version>.dist-info` folder names (what pip writes), so no metadata
    file is opened (6 ms here for 235 packages; `importlib.metadata.distributions()`: 340 ms)."""
    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and "-" in name:
                dist, version = name[: -len(".dist-info")].rsplit("-", 1)
                out.setdefault(canonical(dist), version)
    return out


def _dist_version(candidates, found: dict[str, str]) -> tuple[str | None, str | None]:
    for dist in candidates:
        if canonical(dist) in found:
            return dist, found[canonical(dist)]
        try:  # installed some other way (an .egg-info, say)
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def lock_path() -> Path | None:
    """requirements.lock of the source tree this module runs from, else of the working directory."""
    for folder in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (folder / LOCK_FILE).is_file():
            return folder / LOCK_FILE
    return None


def read_lock(path: str | Path) -> dict[str, dict]:
    """{canonical name: {"version": ..., "hashes": [...]}} of a pip-compile lock file."""
    pins: dict[str, dict] = {}
    current = None
    for line in Path(path).read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if pin:
            current = canonical(pin.group(1))
            pins[current] = {"version": pin.group(2), "hashes": []}
        elif not line.startswith((" ", "\t")):
            current = None
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            if current:
                pins[current]["hashes"].append(digest)
    return pins


def lock_info(path: str | Path | None = None, found: dict[str, str] | None = None) -> dict | None:
    """The lock file's sha256 and every locked package whose installed version differs."""
    path = Path(path) if path else lock_path()
    if path is None or not path.is_file():
        return None
    pins = read_lock(path)
    have = installed() if found is None else found
    mismatches = sorted(f"{name} {have.get(name, 'missing')} (locked {pin['version']})"
                        for name, pin in pins.items() if have.get(name) != pin["version"])
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "packages": len(pins), "mismatches": mismatches}


def cpu_flags() -> set[str]:
    """This CPU's feature flags (/proc/cpuinfo), empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _cpuinfo() -> dict:
    fields = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features") and key not in fields:
            fields[key] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "features": {flag: flag in flags for flag in CPU_FEATURES}}


def _gpus() -> list[str]:
    """NVIDIA GPUs the driver sees (read from /proc, so without importing torch)."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    names.append(line.partition(":")[2].strip())
        except OSError:
            continue
    return names


def _torch_runtime() -> dict | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    out = {"num_threads": torch.get_num_threads(),
           "num_interop_threads": torch.get_num_interop_threads(),
           "cuda_build": torch.version.cuda}
    try:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        out["cpu_capability"] = None
    # Without creating a CUDA context in a stage that never uses the GPU (ptq, export,
    # evaluate on a GPU node): the device count comes from NVML where torch can, and the GPU's
    # name only where this process has initialised CUDA itself (the drivers' names: `gpus`).
    out["cuda_available"] = torch.cuda.device_count() > 0
    out["cuda_initialized"] = torch.cuda.is_initialized()
    out["gpu"] = (torch.cuda.get_device_name(torch.cuda.current_device())
                  if out["cuda_initialized"] else None)
    return out


def source_commit() -> dict | None:
    """The git commit of the quantdet source that runs (where it is a git checkout), and
    whether it has uncommitted changes."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment(lock: str | Path | None = None) -> dict:
    """Where and with what this process computes: see the module docstring."""
    found = installed()
    packages, distributions = {}, {}
    for name, candidates in PACKAGES.items():
        dist, version = _dist_version(candidates, found)
        packages[name] = version
        if dist and canonical(dist) != name:
            distributions[name] = dist
    libc, libc_version = platform.libc_ver()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": {"system": platform.system(), "machine": platform.machine(),
                     "libc": f"{libc} {libc_version}".strip() or None},
        "packages": packages,
        "distributions": distributions,
        "lock": lock_info(lock, found),
        "cpu": _cpuinfo(),
        "gpus": _gpus(),
        "runtime": {
            "kernel": platform.release(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": usable,
            "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
            "torch": _torch_runtime(),
            "source": source_commit(),
        },
    }


def fingerprint(env: dict) -> str:
    """16 hex digits identifying the environment (everything but its `runtime` part)."""
    stable = {k: v for k, v in env.items() if k != "runtime"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def present_features(env: dict) -> list[str]:
    return [flag for flag, present in env["cpu"]["features"].items() if present]


def tags(env: dict) -> dict[str, str]:
    """The compact record on every MLflow job run: fingerprint, key versions, CPU, lock."""
    out = {"quantdet.env.fingerprint": fingerprint(env),
           "quantdet.env.python": env["python"],
           "quantdet.env.cpu": env["cpu"]["model"],
           "quantdet.env.cpu_features": ",".join(present_features(env)) or "none"}
    for name in KEY_PACKAGES:
        out[f"quantdet.env.{name}"] = env["packages"].get(name) or "not installed"
    lock = env.get("lock")
    out["quantdet.env.lock_sha256"] = lock["sha256"][:16] if lock else "no lock file"
    if lock:
        out["quantdet.env.matches_lock"] = "true" if not lock["mismatches"] else "false"
    if env["gpus"]:
        out["quantdet.env.gpus"] = ", ".join(env["gpus"])
    torch_rt = env["runtime"].get("torch")
    if torch_rt:
        out["quantdet.env.torch_cpu_capability"] = str(torch_rt["cpu_capability"])
        out["quantdet.env.torch_threads"] = str(torch_rt["num_threads"])
        if torch_rt["gpu"]:
            out["quantdet.env.cuda_gpu"] = torch_rt["gpu"]
    return out


def environment_markdown(env: dict, data_summary: dict | None) -> str:
    """The report's "Environment" section: packages, CPU and its features, lock, data identity.

    `data_summary` is data/prepared/summary.json (the prepare stage's summary)."""
    lines = ["## Environment", ""]
    plat = env["platform"]
    lines.append(f"Python {env['python']} ({env['implementation']}) on {plat['system']} "
                 f"{plat['machine']}" + (f" ({plat['libc']})" if plat.get("libc") else "")
                 + f"; environment fingerprint `{fingerprint(env)}`.")
    lock = env.get("lock")
    if lock is None:
        lines.append("No lock file was found: the package versions below are all that is known.")
    else:
        state = ("every installed package matches it" if not lock["mismatches"] else
                 f"{len(lock['mismatches'])} installed package(s) differ from it: "
                 + "; ".join(lock["mismatches"]))
        lines.append(f"Dependencies: `{lock['file']}` ({lock['packages']} packages), sha256 "
                     f"`{lock['sha256']}`; {state}.")
    lines += ["", "| Package | Version |", "|---|---|"]
    for name, version in env["packages"].items():
        dist = env.get("distributions", {}).get(name)
        shown = f"{version} ({dist})" if version and dist else (version or "not installed")
        lines.append(f"| {name} | {shown} |")

    runtime = env.get("runtime", {})
    cpus = runtime.get("usable_cpus")
    lines += ["", f"CPU: {env['cpu']['model']}" + (f", {cpus} usable cores" if cpus else "")
              + ". Features that change which kernels run, hence the rounding of results:", "",
              "| Feature | Present | What it changes |", "|---|---|---|"]
    for flag, present in env["cpu"]["features"].items():
        lines.append(f"| {flag} | {'yes' if present else 'no'} | {CPU_FEATURES.get(flag, '')} |")
    torch_rt = runtime.get("torch")
    extra = []
    if torch_rt:
        extra.append(f"torch's CPU kernels: {torch_rt['cpu_capability']}, "
                     f"{torch_rt['num_threads']} intra-op threads")
        if torch_rt.get("gpu"):
            extra.append(f"CUDA device: {torch_rt['gpu']}")
    extra.append("GPUs: " + (", ".join(env["gpus"]) if env["gpus"] else "none"))
    if runtime.get("thread_variables"):
        extra.append("thread settings: " + ", ".join(f"{k}={v}" for k, v in
                                                      sorted(runtime["thread_variables"].items())))
    lines += ["", "; ".join(extra) + "."]

    lines += ["", "Prepared data:"]
    fingerprints = (data_summary or {}).get("fingerprints")
    if not fingerprints:
        lines.append("no split fingerprints recorded (data/prepared was made before the prepare "
                     "stage recorded them; rerun it to record them).")
    else:
        splits = (data_summary or {}).get("splits", {})
        lines.append(f"source `{data_summary.get('source')}`, seed {data_summary.get('seed')}.")
        lines += ["", "| Split | Images | Fingerprint |", "|---|---|---|"]
        for split, digest in fingerprints.items():
            images = splits.get(split, {}).get("images", "")
            lines.append(f"| {split} | {images} | `{digest}` |")
    return "\n".join(lines) + "\n"
