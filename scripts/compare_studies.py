"""Compare two runs of a study, model by model: every model file's weights and quantizer state
(state dicts, tensor by tensor) and every evaluation's detections (COCO results files), so a
refactor can show that the same seed still gives the same models and the same metrics.

    python scripts/compare_studies.py BEFORE_DIR AFTER_DIR

Exit status 0 when everything both runs made is identical, 1 otherwise (the differences listed).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _models(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((root / "results" / "models").glob("*.pt"))}


def _detections(root: Path) -> dict[str, Path]:
    base = root / "results" / "eval"
    return {str(p.relative_to(base)): p for p in sorted(base.glob("*/*/detections-s*.json"))}


def compare(before: Path, after: Path) -> list[str]:
    problems = []
    models_a, models_b = _models(before), _models(after)
    for name in sorted(set(models_a) ^ set(models_b)):
        problems.append(f"model {name}: only in {'before' if name in models_a else 'after'}")
    for name in sorted(set(models_a) & set(models_b)):
        a = torch.load(models_a[name], map_location="cpu", weights_only=False)["state_dict"]
        b = torch.load(models_b[name], map_location="cpu", weights_only=False)["state_dict"]
        if set(a) != set(b):
            problems.append(f"model {name}: state dict keys differ ({sorted(set(a) ^ set(b))[:3]})")
            continue
        moved = [k for k in a if not torch.equal(a[k], b[k])]
        if moved:
            problems.append(f"model {name}: {len(moved)} of {len(a)} tensors differ (e.g. {moved[0]})")
    dets_a, dets_b = _detections(before), _detections(after)
    for name in sorted(set(dets_a) ^ set(dets_b)):
        problems.append(f"detections {name}: only in {'before' if name in dets_a else 'after'}")
    for name in sorted(set(dets_a) & set(dets_b)):
        if json.loads(dets_a[name].read_text()) != json.loads(dets_b[name].read_text()):
            problems.append(f"detections {name}: differ")
    print(f"{len(set(models_a) & set(models_b))} model files and {len(set(dets_a) & set(dets_b))} "
          f"detection files compared: {'identical' if not problems else f'{len(problems)} differences'}")
    return problems


if __name__ == "__main__":
    found = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    for line in found:
        print(" ", line)
    sys.exit(1 if found else 0)
