"""Snakemake's locks and incomplete-output markers after a killed study.

Snakemake locks the study folder (`.snakemake/locks/N.input.lock`, `N.output.lock`) for as long
as it runs and removes the locks when it ends. Killed (SIGKILL, a dead node, an out-of-memory
killer), it leaves them behind, and the next `snakemake` refuses to start with a
`LockException` until the user runs `snakemake --unlock`. The locks do not say who holds them,
so Snakemake cannot tell a dead holder from a live one.

quantdet's Snakefile records who holds them: `.snakemake/locks/quantdet-holder.json`, the host,
pid and start time of the Snakemake process that parsed it (Snakemake removes the whole folder when
it unlocks). At the next start on the same host, locks whose recorded holder is no longer running are stale
and removed (and said so); locks of a live holder, of one on another host, or of a holder
quantdet did not record, are left for Snakemake to refuse (`snakemake --unlock` once you know
that Snakemake is gone). The other half, jobs the kill cut short, is Snakemake's own
`rerun-incomplete`, set by the project's default workflow profile
(`workflow/profiles/default/`, which Snakemake finds through the `profiles` link).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

HOLDER = "quantdet-holder.json"


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):   # no such process (or pid not valid)
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host", socket.gethostname()) != socket.gethostname():
        return True   # another machine's (a cluster's other login node): cannot tell
    try:
        started = _start_time(int(holder.get("pid", -1)))
    except ImportError:   # psutil (Snakemake's and DVC's dependency) missing: cannot tell
        return True
    # a pid reused by another process since: its start time differs
    return started is not None and abs(started - float(holder.get("started", 0))) < 1.0


def release_stale_locks(workdir: str | Path = ".", pid: int | None = None) -> list[str]:
    """Remove Snakemake's locks in `workdir` if the Snakemake that held them is dead; record
    this process as the holder unless a live one is recorded. Returns the removed lock files."""
    locks = Path(workdir) / ".snakemake" / "locks"
    holder_file = locks / HOLDER
    numbered = sorted(p for p in locks.glob("*.lock") if p.name.split(".")[0].isdigit())
    holder = None
    if holder_file.exists():
        try:
            holder = json.loads(holder_file.read_text())
        except (OSError, ValueError):   # cut short when its writer was killed: no holder known
            holder = None
    removed = []
    if holder is not None and _alive(holder):
        return removed
    if numbered and holder is not None:
        for lock in numbered:
            lock.unlink(missing_ok=True)
            removed.append(str(lock))
    if numbered and holder is None:
        return removed   # held by a Snakemake quantdet did not record: Snakemake decides
    pid = os.getpid() if pid is None else pid
    locks.mkdir(parents=True, exist_ok=True)
    tmp = holder_file.with_name(f".{HOLDER}.{pid}")
    try:
        started = _start_time(pid) or 0.0
    except ImportError:
        started = 0.0
    tmp.write_text(json.dumps({"pid": pid, "started": started, "host": socket.gethostname()}))
    os.replace(tmp, holder_file)
    return removed
