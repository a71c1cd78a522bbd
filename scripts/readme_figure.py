"""Copy the README's figure from a finished default study: its report job's
results/plots/accuracy_vs_robustness.png (P against mPC of every model, per bit width, with 95%
intervals) to docs/assets/, where README.md shows it. The figure is the study's own, never
redrawn; run this after a default study (`make study`, or a fresh clone's), then commit
docs/assets/accuracy_vs_robustness.png.

Usage: python scripts/readme_figure.py --study STUDY_FOLDER
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIGURE = "accuracy_vs_robustness.png"


def copy_figure(study: Path, out: Path) -> Path:
    source = study / "results" / "plots" / FIGURE
    if not source.is_file():
        raise SystemExit(f"{source}: not found (run the default study in {study} first: `make study`)")
    params = yaml.safe_load((study / "params.yaml").read_text()) if (study / "params.yaml").is_file() else {}
    name = (params.get("study") or {}).get("name", "default")
    if name != "default":
        raise SystemExit(f"{study / 'params.yaml'}: study.name is {name!r}; the README's figure is the "
                         "default study's")
    out.mkdir(parents=True, exist_ok=True)
    target = out / FIGURE
    shutil.copyfile(source, target)
    env = study / "results" / "environment.json"
    commit = (json.loads(env.read_text()).get("runtime", {}).get("source") or {}).get("commit") if env.is_file() else None
    print(f"{target}: from {source}" + (f" (study at commit {commit[:7]})" if commit else ""))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="the folder of a finished default study")
    parser.add_argument("--out", default=str(ROOT / "docs" / "assets"))
    args = parser.parse_args(argv)
    copy_figure(Path(args.study), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
