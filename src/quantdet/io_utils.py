"""Atomic outputs: a stage writes to a temporary name and renames at the end, so a killed
job never leaves a complete-looking output."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, checksum: bool = False):
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.
    checksum: also record the file's sha256 in `<path>.sha256` (quantdet.integrity), which
    readers check: the old sidecar goes before the new file replaces the old one, the new one
    comes right after (a crash in between leaves a file without a checksum, accepted as is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
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
    # A sibling keeps the final rename on one file system; os.mkdir respects the umask.
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():
        stale = out_dir.with_name(f".{out_dir.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out_dir, stale)
        os.rename(partial, out_dir)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(partial, out_dir)


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
