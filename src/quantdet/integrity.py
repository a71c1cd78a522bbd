"""Checksums of the files a study makes and reads back: recorded when written, checked when read.

A model file (results/models/*.pt), an ONNX model (results/models/*.onnx) and a corrupted
image cache (data/corrupted/<corruption>/<severity>/) are read by many later jobs; a flipped
byte in one (a disk, a copy, a sync) would otherwise be used silently, or fail far from its
cause. So:

- a model or ONNX file gets a sidecar ``<file>.sha256`` in `sha256sum` format (``sha256sum -c``
  checks it by hand), written just after the file by `io_utils.atomic_path(checksum=True)`:
  the old sidecar is removed before the new file replaces the old one, so a sidecar never
  describes another version of its file;
- a corrupted split folder holds ``checksums.sha256`` (the same format, one line per image and
  for annotations.json), written inside the folder's atomic staging directory.

Readers verify before use (`verify_file`, `SplitChecksums.verify_bytes`) and raise
QuantdetError naming the file and what to do. A file without a checksum (written before this
existed, or by hand) is accepted without a word: existing studies keep working.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from quantdet.errors import QuantdetError

SIDECAR_SUFFIX = ".sha256"
MANIFEST = "checksums.sha256"   # in a split folder: its images and annotations.json


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    from quantdet.io_utils import sha256_of   # one block-wise hash for the project

    return sha256_of(path)


def format_lines(entries: dict[str, str]) -> str:
    """`sha256sum` lines: '<hex>  <name>' (two spaces: binary-agnostic text mode)."""
    return "".join(f"{digest}  {name}\n" for name, digest in entries.items())


def parse_lines(text: str, source: Path) -> dict[str, str]:
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise QuantdetError(f"{source}:{number}: not a sha256sum line ({line[:80]!r}): the checksum "
                                f"file itself is damaged; delete it and rerun the stage that wrote it")
        entries[name] = digest
    return entries


def remedy(path: str | Path) -> str:
    path = Path(path)
    return (f"delete it and rerun the stage that makes it (Snakemake: `snakemake --forcerun {path}` "
            f"or just delete {path} and rerun `snakemake`; DVC: delete it and `dvc repro`)")


def write_sidecar(path: str | Path, digest: str) -> None:
    """`path`'s sidecar, written atomically (a temporary name, then a rename)."""
    from quantdet.io_utils import atomic_path

    path = Path(path)
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(format_lines({path.name: digest}))


def verify_file(path: str | Path) -> bool:
    """Check `path` against its sidecar; True if checked, False if it has none (accepted as is).
    Raises QuantdetError naming the file when the bytes differ from those recorded."""
    path = Path(path)
    side = sidecar(path)
    try:
        text = side.read_text()
    except FileNotFoundError:
        return False
    except UnicodeDecodeError:
        raise QuantdetError(f"{side}: not a sha256sum file: the checksum of {path} is damaged; "
                            f"{remedy(path)}") from None
    entries = parse_lines(text, side)
    expected = entries.get(path.name)
    if expected is None:
        raise QuantdetError(f"{side}: holds no checksum of {path.name}; {remedy(path)}")
    actual = sha256_file(path)
    if actual != expected:
        raise QuantdetError(
            f"{path}: damaged: its sha256 is {actual[:16]}..., not the {expected[:16]}... recorded in {side} "
            f"when it was written; {remedy(path)}. (If you replaced the file on purpose, e.g. copied a "
            f"model in or ran `dvc checkout`, delete {side} instead.)")
    return True


class SplitChecksums:
    """The checksums a split folder's manifest records (none: every file accepted)."""

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        self.manifest = self.split_dir / MANIFEST
        try:
            text = self.manifest.read_text()
        except FileNotFoundError:
            self.entries: dict[str, str] = {}
        else:
            self.entries = parse_lines(text, self.manifest)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def remedy(self) -> str:
        folder = self.split_dir
        # the corrupt stage's output is the corruption's folder (one subfolder per severity)
        target = folder.parent if folder.name.isdigit() and folder.parent.parent.name == "corrupted" else folder
        return (f"the cached split is damaged: delete {target} and rerun the stage that makes it "
                f"(Snakemake: `snakemake --forcerun {target}`; DVC: `dvc repro`)")

    def verify_bytes(self, relative: str, data: bytes) -> None:
        """`data`, the bytes just read of `relative` (a path inside the folder), against the manifest."""
        expected = self.entries.get(relative)
        if expected is None:
            if self.entries:   # a manifest that does not list a file the split uses: not ours
                raise QuantdetError(f"{self.split_dir / relative}: not listed in {self.manifest}; {self.remedy()}")
            return
        if sha256_bytes(data) != expected:
            raise QuantdetError(f"{self.split_dir / relative}: damaged: its sha256 differs from the one "
                                f"recorded in {self.manifest}; {self.remedy()}")

    def verify_file(self, relative: str) -> bytes:
        data = (self.split_dir / relative).read_bytes()
        self.verify_bytes(relative, data)
        return data
