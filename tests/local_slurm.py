"""A real single-node SLURM cluster on localhost, for tests: munged, slurmctld and slurmd from
Debian's packages (installed by .ci/install-slurm.sh), every file in one temporary folder, the
daemons started here and stopped by their process ids.

The combination that works without cgroups or an accounting database: proctrack/linuxproc,
task/none, accounting_storage/none, and MinJobAge=3600 (an hour) so that `squeue --states=all` still
reports a finished job's state when Snakemake's SLURM executor asks for it.

The configuration is written to /etc/slurm/slurm.conf (and removed afterwards): inside a job,
the executor's job step strips SLURM_* variables (SLURM_CONF too) before calling `srun`, which
then reads the default path. A slurm.conf there that this module did not write means another
SLURM set-up: the cluster is not started.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = "quantdet-node"
PARTITION = "quantdet"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by quantdet tests/local_slurm.py\n"


class Unavailable(Exception):
    """SLURM cannot run here; the message says why (the test skips with it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_memory_mb() -> int:
    # slurmd drains a node whose configured RealMemory exceeds what it finds: stay below it.
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


class LocalSlurm:
    """Start with `start()`, stop with `stop()`; `env` is what SLURM's client commands need."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = SYSTEM_CONF
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = None

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": str(self.conf)}

    def _install(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("starting slurmd needs root")
        out = subprocess.run(["bash", str(ROOT / ".ci" / "install-slurm.sh")], capture_output=True,
                             text=True, timeout=900)
        if out.returncode != 0:
            raise Unavailable(f".ci/install-slurm.sh failed: {out.stderr.strip()[-500:]}")
        if self.conf.exists() and not self.conf.read_text(errors="replace").startswith(MARKER):
            raise Unavailable(f"{self.conf} exists and belongs to another SLURM set-up")
        self._lock = open(Path(tempfile.gettempdir()) / "quantdet-local-slurm.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise Unavailable("another local SLURM test cluster is running on this machine") from None

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.munge_socket = self.root / "munge" / "munge.socket"
        r = self.root
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(MARKER + f"""\
ClusterName=quantdet
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MinJobAge=3600
ReturnToService=2
MpiDefault=none
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_node_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, start_new_session=True)

    def start(self, timeout: float = 60) -> "LocalSlurm":
        self._install()
        self._write_config()
        m = self.root / "munge"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={m / 'munge.key'}",
                               f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, f"node {NODE} did not become idle")
        return self

    def _node_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise Unavailable(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                             env={**os.environ, **self.env})
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, message: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            time.sleep(0.5)
        self.stop()
        raise Unavailable(f"{message} within {timeout:.0f} s: {self.log_tail('slurmctld')}")

    def log_tail(self, name: str, chars: int = 1500) -> str:
        texts = []
        for path in (self.root / f"{name}.out", self.root / f"{name}.log"):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-chars:])
        return "\n".join(texts)

    def stop(self) -> None:
        """Stop the daemons this object started (slurmd first), by their process ids."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._lock is not None:
            if self.conf.exists() and self.conf.read_text(errors="replace").startswith(MARKER):
                self.conf.unlink()
            self._lock.close()
            self._lock = None


def start_or_skip_reason(root: Path) -> tuple[LocalSlurm | None, str]:
    """A running cluster, or None and the reason it could not start."""
    if shutil.which("bash") is None:
        return None, "no bash to run .ci/install-slurm.sh"
    cluster = LocalSlurm(root)
    try:
        return cluster.start(), ""
    except Unavailable as e:
        return None, str(e)
    except (OSError, subprocess.SubprocessError) as e:
        cluster.stop()
        return None, f"could not start SLURM: {e}"
