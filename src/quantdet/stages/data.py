"""The data stages: prepare the COCO-format splits, write one corrupted copy of val."""
from __future__ import annotations

from quantdet import study
from pathlib import Path

from quantdet.stages.common import log_job, require

def prepare(params: dict, out: str = study.PREPARED) -> dict:
    from quantdet.data.prepare import prepare_dataset

    summary = prepare_dataset(params, out)
    log_job(params, "prepare", metrics={"num_" + k: v for k, v in _split_counts(summary).items()},
             artifacts=[Path(out) / "summary.json"])
    return summary


def _split_counts(summary: dict) -> dict:
    counts = {}
    for split in ("train", "val", "calib"):
        info = summary.get("splits", {}).get(split, summary.get(split))
        if isinstance(info, dict) and "images" in info:
            counts[f"{split}_images"] = info["images"]
    return counts


def corrupt(params: dict, corruption: str, severity: int, out: str | None = None) -> dict:
    from quantdet.corruptions import corrupt_split

    out = out or study.split_dir(corruption, severity)
    summary = corrupt_split(require(f"{study.PREPARED}/val"), corruption, severity,
                            params["corruptions"]["seed"], out, params["corruptions"]["images"])
    log_job(params, "corrupt", model=f"{corruption}-{severity}",
             tags={"corruption": corruption, "severity": severity})
    return summary
