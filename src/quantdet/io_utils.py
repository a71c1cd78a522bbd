"""Atomic outputs: a stage writes to a temporary name and renames at the end, so a killed
job never leaves a complete-looking output.

The temporary names carry the writer (`~<pid>@<host>~`): a job killed mid-write (SIGKILL runs
no cleanup) leaves its temporary file or folder behind, and the next writer of the same output
removes those whose writer, on this host, is gone (`clear_leftovers`). One of another host
(a cluster's shared file system) is left: whether its writer still runs cannot be told here.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

_WRITER = re.compile(r"~(?P<pid>\d+)@(?P<host>[^~/]+)~")


def _writer() -> str:
    return f"~{os.getpid()}@{socket.gethostname()}~"


def _gone(pid: int) -> bool:
    """Whether process `pid` of this host can no longer write: it does not exist, or it is a
    zombie (killed, not yet reaped). A job killed with its runner is an orphan zombie until the
    machine's init reaps it, which a container's first process may do seconds later, after the
    rerun's writer of the same output has started: signal 0 still reaches a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # alive, another user's
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:   # "pid (comm) state ...": comm may hold ")"
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):   # no /proc (not Linux), or it went meanwhile
        return not os.path.exists(f"/proc/{pid}") and os.path.isdir("/proc/self")


def clear_leftovers(path: str | Path) -> list[Path]:
    """Remove the temporary files and folders of `path` (`.<name>.<kind>~pid@host~...`) whose
    writer on this host is no longer running: what a killed job left. Returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    host, removed = socket.gethostname(), []
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.*~*@*~*"):
        match = _WRITER.search(leftover.name[len(path.name) + 2:])
        if not match or match["host"] != host or not _gone(int(match["pid"])):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def atomic_path(path: str | Path, checksum: bool = False):
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.
    checksum: also record the file's sha256 in `<path>.sha256` (quantdet.integrity), which
    readers check: the old sidecar goes before the new file replaces the old one, the new one
    comes right after (a crash in between leaves a file without a checksum, accepted as is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp{_writer()}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _full_disk_named(path):
            yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared files
        if checksum:
            from quantdet import integrity

            digest = integrity.sha256_file(tmp)
            integrity.sidecar(path).unlink(missing_ok=True)
            os.replace(tmp, path)
            integrity.write_sidecar(path, digest)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_directory(out_dir):
    """Yield an empty temporary sibling of `out_dir`; on success it replaces `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(out_dir)
    # A sibling keeps the final rename on one file system; os.mkdir respects the umask.
    partial = out_dir.with_name(f".{out_dir.name}.partial{_writer()}{secrets.token_hex(4)}")
    os.mkdir(partial)
    try:
        with _full_disk_named(out_dir):
            yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():
        stale = out_dir.with_name(f".{out_dir.name}.stale{_writer()}{secrets.token_hex(4)}")
        os.rename(out_dir, stale)
        os.rename(partial, out_dir)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(partial, out_dir)


FULL_BELOW = 1 << 20   # bytes free under which a failed write is taken for a full disk


@contextmanager
def _full_disk_named(path: Path):
    """A write that failed because the file system is full, reported as such, naming the
    output: torch.save says `RuntimeError: PytorchStreamWriter failed writing file`, PIL and
    OpenCV their own words; checked while the temporary still fills the disk."""
    try:
        yield
    except Exception as err:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            if err.filename is None:
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
            raise
        try:
            full = shutil.disk_usage(path.parent).free < FULL_BELOW
        except OSError:
            full = False
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks (a checkpoint may be large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, data, compact: bool = False) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            if compact:  # large lists (detections): no indentation, and json.dumps, whose C
                # encoder is ~10x faster than json.dump's pure-Python one
                f.write(json.dumps(data, separators=(",", ":"), default=_json_default))
            else:
                json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")


def read_json(path: str | Path):
    with open(path) as f:
        return json.load(f)


def _json_default(obj):
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
