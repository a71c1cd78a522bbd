"""Directory outputs that appear complete or not at all.

A stage builds its output folder under a hidden sibling name and renames it into place
at the end, so a killed or failed job never leaves a complete-looking folder that
Snakemake or DVC would take for a finished output.
"""

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path


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
