"""Locks a killed Snakemake left are released; a live Snakemake's, or unknown ones, are not."""
import json
import os
import subprocess
import sys

import psutil

from quantdet.stale_locks import HOLDER, release_stale_locks


def _locked(tmp_path, holder: dict | None):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("params.yaml\n")
    (locks / "0.output.lock").write_text("results/report.md\n")
    if holder is not None:
        (locks / HOLDER).write_text(json.dumps(holder))
    return locks


def _dead_process() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return {"pid": proc.pid, "started": started}


def test_locks_of_a_killed_snakemake_are_removed_and_this_one_holds(tmp_path):
    locks = _locked(tmp_path, _dead_process())
    removed = release_stale_locks(tmp_path)
    assert sorted(os.path.basename(p) for p in removed) == ["0.input.lock", "0.output.lock"]
    assert [p.name for p in locks.iterdir()] == [HOLDER]
    assert json.loads((locks / HOLDER).read_text())["pid"] == os.getpid()


def test_locks_of_a_running_snakemake_are_kept(tmp_path):
    me = psutil.Process()
    locks = _locked(tmp_path, {"pid": me.pid, "started": me.create_time()})
    assert release_stale_locks(tmp_path, pid=12345678) == []
    assert sorted(p.name for p in locks.iterdir()) == sorted(["0.input.lock", "0.output.lock", HOLDER])
    assert json.loads((locks / HOLDER).read_text())["pid"] == me.pid   # not taken over


def test_a_reused_pid_is_not_the_holder(tmp_path):
    me = psutil.Process()
    _locked(tmp_path, {"pid": me.pid, "started": me.create_time() - 3600})
    assert len(release_stale_locks(tmp_path)) == 2


def test_a_holder_on_another_host_is_not_judged_from_here(tmp_path):
    dead = _dead_process()
    _locked(tmp_path, {**dead, "host": "login2.elsewhere.invalid"})
    assert release_stale_locks(tmp_path) == []


def test_locks_nobody_recorded_are_left_to_snakemake(tmp_path):
    """Locks of a Snakemake that did not run this Snakefile's code (or a holder record cut
    short): who holds them is unknown, so Snakemake's own LockException decides."""
    locks = _locked(tmp_path, None)
    (locks / HOLDER).write_text('{"pid": 1')
    assert release_stale_locks(tmp_path) == []
    assert (locks / "0.input.lock").exists()
