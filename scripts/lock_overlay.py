"""The overlay of one hash lock over another: print the entries (name==version with their
hashes) of `overlay` that `base` does not hold at the same version. `make venv-litert` installs
these into .venv-litert, which sees .venv's packages beneath them; `--constraints` prints base's
pins, minus the names given, for `make lock-litert` to resolve against."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")


def entries(path: Path) -> dict[str, tuple[str, str]]:
    """{normalised name: (version, the entry's text)} of a pip-compile --generate-hashes file."""
    out, name, lines = {}, None, []

    def flush():
        if name:
            out[name[0]] = (name[1], "".join(lines))

    for line in path.read_text().splitlines(keepends=True):
        match = PIN.match(line)
        if match:
            flush()
            name, lines = (re.sub(r"[-_.]+", "-", match[1]).lower(), match[2]), [line]
        elif name and line.startswith((" ", "\t")) and not line.lstrip().startswith("#"):
            lines.append(line)
        elif not line.startswith((" ", "\t")):
            flush()
            name, lines = None, []
    flush()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("base", type=Path)
    p.add_argument("overlay", type=Path, nargs="?")
    p.add_argument("--constraints", nargs="*", metavar="EXCEPT",
                   help="print base's pins as constraints, leaving out these names")
    args = p.parse_args(argv)
    base = entries(args.base)
    if args.constraints is not None:
        skip = {re.sub(r"[-_.]+", "-", n).lower() for n in args.constraints}
        sys.stdout.writelines(f"{n}=={v}\n" for n, (v, _) in sorted(base.items()) if n not in skip)
        return 0
    if args.overlay is None:
        p.error("give the overlay lock, or --constraints")
    for n, (version, text) in entries(args.overlay).items():
        if base.get(n, (None,))[0] != version:
            sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
