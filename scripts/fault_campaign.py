"""The fault campaign: a study killed again and again, its tracking server stopped, its disk
filled, its files damaged; after each, the command the README gives finishes it, and what it
made is compared with an uninterrupted run of the same study.

Faults, each injected from outside, as a cluster or a user would:
* `kill-snakemake`: N times (seeded), `snakemake --cores 2` is started (again) and, at a random
  moment, SIGKILL goes to a randomly chosen running job: to its process tree (the job dies,
  Snakemake sees it fail) or to Snakemake's whole process group (a dead node, `kill -9` of the
  study). Then the same command again, until the study ends.
* `kill-dvc`: the same with `dvc repro` (its own study folder, a git repository).
* `tracking-server`: the study logged to an MLflow server (`mlflow server`) that is stopped in
  the middle of the study and started again a little later.
* `full-disk`: `results/` on a file system too small for the study (a tmpfs in a private mount
  namespace, `unshare`); the job that fills it must say so and keep no partial output; the file
  system is then enlarged and the same command finishes the study.
* `two-studies`: two studies (`dvc repro`, each its own folder and study name) at once, sharing
  one MLflow server and one DVC cache: each study's runs only under its own parent, every
  cache entry's content matching its hash.
* `damaged-files`: scripts/fault_damage.py (params files cut at every length; flipped bytes in a
  checkpoint, an ONNX model and a cached image).

Compared with the uninterrupted run (`--reference`, or run first): every model's weights
(bytes, else exact tensors), every ONNX model (bytes, else graph and initializers), every
evaluation's metrics, every corrupted split's checksums; no temporary output left behind; the
MLflow store holds each job of the study exactly once (none lost, none duplicated).

    python scripts/fault_campaign.py --work /tmp/faults                     # make faults
    python scripts/fault_campaign.py --work /tmp/f --kills 6 --faults kill-snakemake
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"
FAULTS = ("kill-snakemake", "kill-dvc", "tracking-server", "full-disk", "two-studies", "damaged-files")
LEFTOVER = re.compile(r"~\d+@[^~/]+~|\.partial-\d+")


# ---------------------------------------------------------------------------- running a study
def _env(**extra) -> dict:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def snakemake_command(work: Path) -> list[str]:
    return [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2"]


def setup_snakemake(work: Path, params: Path = SMOKE, overlay: dict | None = None) -> list[str]:
    """The study `params` (a file), or `overlay` where given, in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    if overlay is None:
        shutil.copy(params, work / "params.yaml")
    else:
        import yaml

        (work / "params.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    return snakemake_command(work)


def dvc_overlay() -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.smoke_overlays import one_job_per_stage

    return one_job_per_stage()


def tiny_overlay() -> dict:
    """The smallest study with a quantized model: the student, minmax W8A8, simulated and
    deployed (CI's two-studies trial: what it tests is the sharing, not the methods)."""
    overlay = dvc_overlay()
    overlay["matrix"].update(ptq=["minmax"], qat=[], peer=[], mixed=[], mimic=[], precisions={})
    return overlay


def setup_dvc(work: Path, overlay: dict | None = None) -> list[str]:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay or dvc_overlay(), sort_keys=False))
    for cmd in ([str(BIN / "quantdet"), "compose", "overlay.yaml", "--out", "params.yaml"],
                [str(BIN / "quantdet"), "dvc-yaml", "--params", "params.yaml", "--out", "dvc.yaml"],
                ["git", "init", "-q"], ["git", "config", "user.email", "ci@example.invalid"],
                ["git", "config", "user.name", "ci"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=work, env=_env(), check=True, capture_output=True)
    return [str(BIN / "dvc"), "repro"]


def _job_roots(runner) -> list:
    """The running jobs of a runner: its children running a `quantdet` command (a shell
    around it, or the command itself), with their process trees."""
    import psutil

    roots = []
    for child in runner.children():
        try:
            tree = [child] + child.children(recursive=True)
            if any("quantdet" in " ".join(p.cmdline()) and "track-study" not in " ".join(p.cmdline())
                   for p in tree):
                roots.append(child)
        except psutil.Error:
            continue
    return roots


def _describe(proc) -> str:
    import psutil

    try:
        for p in [proc] + proc.children(recursive=True):
            words = p.cmdline()
            if any(w.endswith("quantdet") for w in words):
                i = next(i for i, w in enumerate(words) if w.endswith("quantdet"))
                rest = words[i + 1:]
                target = next((rest[j + 1] for j, w in enumerate(rest[:-1])
                               if w in ("--model", "--corruption", "--generator", "--role")), "")
                return " ".join(x for x in (rest[0] if rest else "", target) if x)
    except psutil.Error:
        pass
    return "?"


def _kill_tree(proc) -> None:
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def kill_series(command: list[str], work: Path, kills: int, seed: int, span_s: float,
                log, timeout_s: float = 3600) -> dict:
    """Start `command` in `work`, SIGKILL a random running job at a random moment (its tree, or
    the runner's whole process group), start it again; `kills` times, then let it finish.
    Returns the kills made and whether the last run completed."""
    import psutil

    rng = random.Random(seed)
    events, runs, started = [], 0, time.monotonic()
    env = _env()
    while True:
        runs += 1
        out = open(work / f"campaign-run-{runs}.log", "w")
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        runner = psutil.Process(proc.pid)
        victim = None
        if len(events) < kills:
            delay = rng.uniform(0, 2 * span_s / max(kills, 1))
            first_seen = None
            while proc.poll() is None:
                jobs = _job_roots(runner)
                now = time.monotonic()
                if jobs and first_seen is None:
                    first_seen = now
                if first_seen is not None and now - first_seen >= delay and jobs:
                    victim = rng.choice(sorted(jobs, key=lambda p: p.pid))
                    break
                time.sleep(0.05)
        if victim is not None:
            mode = rng.choice(["job", "runner"])
            what = _describe(victim)
            at = time.monotonic() - started
            if mode == "runner":   # Snakemake/DVC and every job: a node that died
                everything = [runner] + runner.children(recursive=True)
                os.killpg(proc.pid, signal.SIGKILL)
                for p in everything:
                    try:
                        p.send_signal(signal.SIGKILL)
                    except psutil.Error:
                        pass
            else:
                _kill_tree(victim)
            events.append({"run": runs, "mode": mode, "job": what, "at_s": round(at, 1)})
            log(f"  kill {len(events)}/{kills}: {mode:6s} {what} at {at:.0f} s")
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return {"kills": events, "completed": False, "runs": runs, "why": "timed out"}
        finally:
            out.close()
        if victim is None:   # a run nobody killed: the study ends here
            return {"kills": events, "completed": rc == 0, "runs": runs,
                    "why": "" if rc == 0 else f"exit {rc}: see {work}/campaign-run-{runs}.log",
                    "seconds": round(time.monotonic() - started, 1)}


# ---------------------------------------------------------------------------- comparing
def _load_params(work: Path) -> dict:
    from quantdet.config import load_params

    cwd = os.getcwd()
    os.chdir(work)
    try:
        return load_params("params.yaml")
    finally:
        os.chdir(cwd)


def _job_key(job) -> str:
    return job.stage if job.target in (job.stage, "data") else f"{job.stage}:{job.target}"


def expected_jobs(params: dict) -> set[str]:
    """The MLflow job key of every job of the study (tracking.JOB_TAG)."""
    from quantdet import study

    return {_job_key(job) for job in study.jobs(params)}


# DVC's line for a stage it restores from its run-cache instead of running it (dvc/stage/cache.py)
RUN_CACHE_RESTORE = re.compile(r"Stage '([^']+)' is cached - skipping run")


def restored_from_run_cache(work: Path, params: dict) -> set[str]:
    """The job keys of the stages `dvc repro` restored from DVC's run-cache in this study's
    runs (campaign-run-*.log): those jobs never ran here, so they logged no run; with a cache
    shared between studies, their run is that of the study that made the outputs."""
    from quantdet import study

    stages = set()
    for log in sorted(work.glob("campaign-run-*.log")):
        stages |= set(RUN_CACHE_RESTORE.findall(log.read_text(errors="replace")))
    return {_job_key(job) for job in study.jobs(params) if job.name in stages}


def mlflow_jobs(work: Path, uri: str | None = None, study_name: str | None = None) -> Counter:
    """How many active (not deleted) runs each job has in the study's MLflow store (of one
    study, where the store holds several), and under which parent."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from quantdet import tracking

    client = MlflowClient(uri or f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    if exp is None:
        return Counter()
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'job'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    if study_name is not None:
        parents = {r.info.run_id for r in client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'study' and "
                                               f"tags.`{tracking.STUDY_TAG}` = '{study_name}'")}
        mine = [r for r in runs if r.data.tags.get(tracking.STUDY_TAG) == study_name]
        # a run of this study under another study's parent counts as not this study's
        runs = [r for r in mine if r.data.tags.get("mlflow.parentRunId") in parents]
    return Counter(r.data.tags.get(tracking.JOB_TAG, "?") for r in runs)


def _same_tensors(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return True   # metadata (times, paths): not compared


def _same_model(a: Path, b: Path) -> str:
    import torch

    if a.read_bytes() == b.read_bytes():
        return "bytes"
    same = _same_tensors(torch.load(a, map_location="cpu", weights_only=False),
                         torch.load(b, map_location="cpu", weights_only=False))
    return "tensors" if same else "differs"


def _same_onnx(a: Path, b: Path) -> str:
    import onnx
    from onnx import numpy_helper

    if a.read_bytes() == b.read_bytes():
        return "bytes"
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    if [n.SerializeToString() for n in ma.graph.node] != [n.SerializeToString() for n in mb.graph.node]:
        return "differs"
    ia = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    same = ia.keys() == ib.keys() and all((ia[k] == ib[k]).all() and ia[k].dtype == ib[k].dtype for k in ia)
    return "graph and initializers" if same else "differs"


def _metrics(path: Path) -> list:
    return [r["metrics"] for r in json.loads(path.read_text())["results"]]


def compare(work: Path, reference: Path) -> dict:
    """What the faulted study made against the uninterrupted one, for the files both have
    (a smaller study than the reference compares its own models)."""
    checked, differing, how = 0, [], Counter()
    for path in sorted((work / "results" / "models").glob("*")):
        ref = reference / path.relative_to(work)
        if path.suffix not in (".pt", ".onnx") or not ref.exists():
            continue
        verdict = (_same_model if path.suffix == ".pt" else _same_onnx)(path, ref)
        checked += 1
        how[verdict] += 1
        if verdict == "differs":
            differing.append(str(path.relative_to(work)))
    for path in sorted((work / "results" / "eval").rglob("metrics.json")):
        ref = reference / path.relative_to(work)
        if not ref.exists():
            continue
        checked += 1
        if _metrics(path) == _metrics(ref):
            how["metrics"] += 1
        else:
            differing.append(str(path.relative_to(work)))
    for path in sorted((work / "data").rglob("checksums.sha256")):
        ref = reference / path.relative_to(work)
        if not ref.exists():
            continue
        checked += 1
        if path.read_bytes() == ref.read_bytes():
            how["image checksums"] += 1
        else:
            differing.append(str(path.relative_to(work)))
    leftovers = [str(p.relative_to(work)) for p in work.rglob("*")
                 if LEFTOVER.search(p.name) and not {".snakemake", ".dvc", ".git"} & set(p.relative_to(work).parts)]
    return {"checked": checked, "identical": checked - len(differing), "how": dict(how),
            "differing": differing, "leftovers": leftovers}


def run_accounting(work: Path, uri: str | None = None) -> dict:
    """Each job of the study against the runs under the study's own run: lost, duplicated, or
    not the study's. A job DVC restored from its run-cache (a cache shared with another study
    that ran the same command on the same inputs) is `restored`, not lost, where the store
    holds its run under another study; without that run it is lost."""
    params = _load_params(work)
    expected = expected_jobs(params)
    counted = mlflow_jobs(work, uri, params["study"]["name"])
    restored = restored_from_run_cache(work, params) - set(counted)
    elsewhere = mlflow_jobs(work, uri) if restored else Counter()
    restored = {key for key in restored if elsewhere.get(key)}
    return {"expected": len(expected), "lost": sorted(expected - set(counted) - restored),
            "duplicated": sorted(k for k, n in counted.items() if n > 1),
            "unexpected": sorted(set(counted) - expected), "restored": sorted(restored)}


# ---------------------------------------------------------------------------- the faults
def reference_study(folder: Path, log, params: Path = SMOKE) -> Path:
    if (folder / "results" / "report.md").exists():
        return folder
    log(f"reference: the uninterrupted study of {params} in {folder}")
    command = setup_snakemake(folder, params)
    started = time.monotonic()
    run = subprocess.run(command, cwd=folder, env=_env(), capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"the reference study failed:\n{run.stderr[-3000:]}")
    (folder / "campaign-reference.json").write_text(json.dumps({"seconds": time.monotonic() - started}))
    return folder


def study_seconds(reference: Path, default: float) -> float:
    """The reference study's wall time here, if the campaign ran it: kills are spread over it."""
    try:
        return float(json.loads((reference / "campaign-reference.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return default


def fault_kills(runner: str, work: Path, reference: Path, kills: int, seed: int, log,
                params: Path = SMOKE, span: float | None = None, overlay: dict | None = None) -> dict:
    """`kills` kills spread over `span` seconds (default: the reference study's wall time), of
    the study `params` (Snakemake) or `overlay` (either runner; DVC's default: dvc_overlay)."""
    folder = work / runner
    shutil.rmtree(folder, ignore_errors=True)
    command = setup_snakemake(folder, params, overlay) if runner == "snakemake" else setup_dvc(folder, overlay)
    # the study's wall time here: the reference's where known (the DVC study is ~0.8 of it)
    if span is None:
        span = study_seconds(reference, 180.0) * (1.0 if runner == "snakemake" else 0.8)
    log(f"kill-{runner}: {kills} kills in {folder}")
    series = kill_series(command, folder, kills, seed, span, log)
    row = {"fault": f"kill-{runner}", "trials": len(series["kills"]), "completed": series["completed"],
           "why": series.get("why", ""), "events": series["kills"]}
    if series["completed"]:
        row["outputs"] = compare(folder, reference)
        row["runs"] = run_accounting(folder)
    return row


def fault_tracking_server(work: Path, reference: Path, seed: int, log) -> dict:
    """Stop the MLflow server mid-study (every job logs its own run, so the study needs it
    throughout), start it again later; then the study's command until it ends."""
    import yaml

    rng = random.Random(seed)
    folder = work / "tracking-server"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(dvc_overlay(), sort_keys=False))
    server = MlflowServer(folder)
    if not server.start():
        return {"fault": "tracking-server", "trials": 0, "completed": False, "why": "mlflow server did not start"}
    env = _env(MLFLOW_TRACKING_URI=server.uri, QUANTDET_TRACKING="job")
    proc = subprocess.Popen(snakemake_command(folder), cwd=folder, env=env,
                            stdout=open(folder / "campaign-run-1.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    down_at, down_for = rng.uniform(20, 60), rng.uniform(10, 30)
    time.sleep(down_at)
    server.stop()
    log(f"tracking-server: stopped at {down_at:.0f} s for {down_for:.0f} s")
    time.sleep(down_for)
    server.start()
    rc, runs = proc.wait(), 1
    while rc != 0 and runs < 3:   # the README's command again
        runs += 1
        rc = subprocess.run(snakemake_command(folder), cwd=folder, env=env,
                            stdout=open(folder / f"campaign-run-{runs}.log", "w"),
                            stderr=subprocess.STDOUT).returncode
    row = {"fault": "tracking-server", "trials": 1, "completed": rc == 0, "reruns": runs - 1,
           "why": "" if rc == 0 else f"exit {rc}: see {folder}"}
    if rc == 0:
        row["outputs"] = compare(folder, reference)
        row["runs"] = run_accounting(folder, server.uri)
    server.stop()
    return row


class MlflowServer:
    """`mlflow server` on a free local port, with a SQLite store in `folder`; stop() and
    start() again keep the store."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.uri, self.proc = folder, f"http://127.0.0.1:{self.port}", None

    def start(self, timeout: float = 60) -> bool:
        import urllib.request

        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--default-artifact-root", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.folder, stdout=open(self.folder / "server.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return True
            except OSError:
                time.sleep(0.5)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()


def fault_two_studies(work: Path, reference: Path, log, stop_server: float | None = None,
                      overlay: dict | None = None) -> dict:
    """Two DVC studies at once on one MLflow server and one DVC cache; with `stop_server`, the
    server is also stopped that many seconds in, for 15 s (CI's smaller series: both faults in
    one trial)."""
    import hashlib

    folder = work / "two-studies"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    server = MlflowServer(folder)
    if not server.start():
        return {"fault": "two-studies", "trials": 0, "completed": False, "why": "mlflow server did not start"}
    cache = folder / "dvc-cache"
    studies = {}
    for name in ("first", "second"):
        study_overlay = dict(overlay or dvc_overlay())
        study_overlay["study"] = {"name": f"smoke-{name}"}
        command = setup_dvc(folder / name, study_overlay)
        subprocess.run([str(BIN / "dvc"), "cache", "dir", str(cache)], cwd=folder / name, env=_env(),
                       check=True, capture_output=True)
        studies[name] = command
    log(f"two-studies: {', '.join(studies)} at once, one MLflow server ({server.uri}), one DVC cache")
    env = _env(MLFLOW_TRACKING_URI=server.uri, QUANTDET_TRACKING="job")
    procs = {name: subprocess.Popen(cmd, cwd=folder / name, env=env, stdout=open(folder / name / "campaign-run-1.log", "w"),
                                    stderr=subprocess.STDOUT) for name, cmd in studies.items()}
    if stop_server is not None:
        time.sleep(stop_server)
        server.stop()
        log(f"two-studies: tracking server stopped at {stop_server:.0f} s for 15 s")
        time.sleep(15)
        server.start()
    codes = {name: p.wait() for name, p in procs.items()}
    row = {"fault": "two-studies" + (" + tracking-server" if stop_server is not None else ""), "trials": 1, "completed": all(c == 0 for c in codes.values()),
           "why": "; ".join(f"{n}: exit {c}" for n, c in codes.items() if c)}
    if row["completed"]:
        outputs = [compare(folder / name, reference) for name in studies]
        row["outputs"] = {"checked": sum(o["checked"] for o in outputs),
                          "identical": sum(o["identical"] for o in outputs),
                          "differing": [d for o in outputs for d in o["differing"]],
                          "leftovers": [x for o in outputs for x in o["leftovers"]]}
        accounts = [run_accounting(folder / name, server.uri) for name in studies]
        row["runs"] = {"expected": sum(a["expected"] for a in accounts),
                       "lost": [x for a in accounts for x in a["lost"]],
                       "duplicated": [x for a in accounts for x in a["duplicated"]],
                       "unexpected": [x for a in accounts for x in a["unexpected"]],
                       "restored": [x for a in accounts for x in a["restored"]]}
        clobbered, entries = [], 0
        for entry in (cache / "files" / "md5").rglob("*"):
            if entry.is_file() and not entry.name.endswith(".dir"):
                entries += 1
                if hashlib.md5(entry.read_bytes()).hexdigest() != entry.parent.name + entry.name:
                    clobbered.append(str(entry.relative_to(cache)))
        row["cache"] = {"entries": entries, "clobbered": clobbered}
        if clobbered:
            row["outputs"]["differing"] += clobbered
    server.stop()
    return row


FULL_DISK = """
set -u
mount -t tmpfs -o size={small}k tmpfs "{results}" || exit 90
{command} > "{folder}/campaign-run-1.log" 2>&1; echo "first=$?" > "{folder}/full-disk.status"
ls -A "{results}" > "{folder}/after-full.txt"
mount -o remount,size={big}k "{results}" || exit 91
{command} > "{folder}/campaign-run-2.log" 2>&1; echo "second=$?" >> "{folder}/full-disk.status"
mkdir -p "{folder}/results-kept" && cp -a "{results}/." "{folder}/results-kept/"
"""


def fault_full_disk(work: Path, reference: Path, log, overlay: dict | None = None) -> dict:
    """results/ on a tmpfs a third the size the study needs, in a private mount namespace."""
    import shlex

    import yaml

    folder = work / "full-disk"
    shutil.rmtree(folder, ignore_errors=True)
    command = setup_snakemake(folder)
    if overlay is not None:   # a smaller study than the reference
        (folder / "params.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    results = folder / "results"
    results.mkdir()
    needed = sum(p.stat().st_size for p in (reference / "results").rglob("*") if p.is_file()) // 1024
    script = FULL_DISK.format(small=max(needed // 3, 256), big=needed * 4, results=results, folder=folder,
                              command=" ".join(shlex.quote(c) for c in command))
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode:
        return {"fault": "full-disk", "trials": 0, "completed": False,
                "why": f"not run: no private mount namespace here (unshare: {probe.stderr.strip()[:200]})"}
    log(f"full-disk: results/ on a {needed // 3} KiB tmpfs ({needed} KiB needed), then enlarged")
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
                         cwd=folder, env=_env(), capture_output=True, text=True)
    status = dict(line.split("=") for line in (folder / "full-disk.status").read_text().split()) \
        if (folder / "full-disk.status").exists() else {}
    first = (folder / "campaign-run-1.log").read_text(errors="replace") if (folder / "campaign-run-1.log").exists() else ""
    said = [line.strip() for line in first.splitlines() if "no space left on the device" in line]
    row = {"fault": "full-disk", "trials": 1, "completed": run.returncode == 0 and status.get("second") == "0",
           "failed_first": status.get("first") not in (None, "0"), "message": said[:1],
           "why": "" if run.returncode == 0 else f"exit {run.returncode}: {run.stderr[-500:]}"}
    if row["completed"]:
        shutil.rmtree(results)
        (folder / "results-kept").rename(results)
        row["outputs"] = compare(folder, reference)
        row["runs"] = run_accounting(folder)
    return row


def fault_damaged(log) -> dict:
    log("damaged-files: scripts/fault_damage.py --sample 300 --flips 20")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_damage.py"), "--sample", "300",
                          "--flips", "20", "--json"], capture_output=True, text=True, env=_env())
    if run.returncode:
        return {"fault": "damaged-files", "trials": 0, "completed": False, "why": run.stderr[-500:]}
    return {"fault": "damaged-files", "completed": True, **json.loads(run.stdout.splitlines()[-1])}


# ---------------------------------------------------------------------------- the table
def _lost_cell(runs: dict | None) -> str:
    if not runs:
        return "-"
    restored = runs.get("restored") or []
    return f"{len(runs['lost'])}" + (f" ({len(restored)} jobs restored from DVC's run-cache, their run the "
                                     f"other study's)" if restored else "")


def table(rows: list[dict]) -> str:
    lines = ["| fault | trials | survived | identical to the uninterrupted run | runs lost | runs duplicated | left behind |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        if r["fault"] == "damaged-files":
            other = "; ".join(f"{n} {k}" for k, n in r.items()
                              if k not in ("fault", "completed", "trials", "refused", "why"))
            lines.append(f"| damaged-files | {r.get('trials', 0)} | {r.get('refused', 0)} refused naming the file "
                         f"(and line){'; ' + other if other else ''} | n/a | n/a | n/a | n/a |")
            continue
        out, runs = r.get("outputs"), r.get("runs")
        survived = "yes" if r["completed"] else f"no ({r.get('why', '')})"
        ident = (f"{out['identical']}/{out['checked']} files" + (f"; differ: {', '.join(out['differing'][:3])}"
                                                                 if out["differing"] else "")) if out else "-"
        lines.append(f"| {r['fault']} | {r.get('trials', 0)} | {survived} | {ident} | "
                     f"{_lost_cell(runs)} | {len(runs['duplicated']) if runs else '-'} | "
                     f"{len(out['leftovers']) if out else '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a folder for the campaign's studies")
    ap.add_argument("--reference", type=Path, help="an uninterrupted smoke study (default: run one in WORK/reference)")
    ap.add_argument("--kills", type=int, default=20, help="kills per runner (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    ap.add_argument("--params", type=Path, default=SMOKE,
                    help="the study of the reference and of kill-snakemake (default: the smoke study); "
                         "e.g. an overlay with other detector families")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, flush=True)

    reference = None
    if set(args.faults) - {"damaged-files"}:
        reference = (args.reference.resolve() if args.reference
                     else reference_study(work / "reference", log, args.params.resolve()))
    rows = []
    for fault in args.faults:
        if fault in ("kill-snakemake", "kill-dvc"):
            rows.append(fault_kills(fault.split("-")[1], work, reference, args.kills, args.seed, log,
                                    args.params.resolve()))
        elif fault == "tracking-server":
            rows.append(fault_tracking_server(work, reference, args.seed, log))
        elif fault == "full-disk":
            rows.append(fault_full_disk(work, reference, log))
        elif fault == "two-studies":
            rows.append(fault_two_studies(work, reference, log))
        else:
            rows.append(fault_damaged(log))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if not r["completed"] and not str(r.get("why", "")).startswith("not run")
           or (r.get("outputs") and (r["outputs"]["differing"] or r["outputs"]["leftovers"]))
           or (r.get("runs") and (r["runs"]["lost"] or r["runs"]["duplicated"]))
           or (r["fault"] == "full-disk" and r["completed"] and not (r.get("failed_first") and r.get("message")))
           or any(k.startswith("flip") for k in r)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
