"""Outputs written whole or not at all; what a killed writer left is cleared by the next one."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantdet.io_utils import atomic_directory, atomic_path, clear_leftovers

KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from quantdet.io_utils import atomic_directory, atomic_path
out = Path(sys.argv[1])
with atomic_path(out / "model.pt") as tmp, atomic_directory(out / "split") as part:
    Path(tmp).write_bytes(b"half")
    (part / "0.png").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_only_hidden_leftovers_and_the_next_writer_clears_them(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".model.pt.tmp~", ".split.partial~")) for n in left), left
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "split").exists()
    with atomic_path(tmp_path / "model.pt") as tmp:
        Path(tmp).write_bytes(b"whole")
    with atomic_directory(tmp_path / "split") as part:
        (part / "0.png").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "split"]
    assert (tmp_path / "model.pt").read_bytes() == b"whole"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="zombies are read from /proc (Linux)")
def test_the_leftovers_of_a_killed_writer_not_yet_reaped_are_cleared(tmp_path):
    """A job killed with its runner is a zombie until init reaps it (seconds, in a container):
    signal 0 still reaches it, but it writes nothing more, so its leftovers go."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # dead, left unreaped: a zombie
        os.kill(proc.pid, 0)                                       # which signal 0 still reaches
        assert len(clear_leftovers(tmp_path / "model.pt")) == 1
        assert len(clear_leftovers(tmp_path / "split")) == 1
        assert list(tmp_path.iterdir()) == []
    finally:
        proc.wait()


def test_leftovers_of_a_running_writer_or_another_host_are_kept(tmp_path):
    mine = tmp_path / f".model.pt.tmp~{os.getpid()}@{os.uname().nodename}~abc.tmp"
    other_host = tmp_path / ".model.pt.tmp~1@elsewhere.invalid~abc.tmp"
    for p in (mine, other_host):
        p.write_bytes(b"x")
    assert clear_leftovers(tmp_path / "model.pt") == []
    assert mine.exists() and other_host.exists()


def test_a_failed_block_removes_its_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            Path(tmp).write_text("{")
            raise RuntimeError("cut")
    assert list(tmp_path.iterdir()) == []
