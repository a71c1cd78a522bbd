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


def corrupt(params: dict, corruption: str, severity: int | None = None, out: str | None = None) -> dict:
    """The corrupted copies of val for one corruption: at `severity` (`out`: that split's
    folder), or at every severity the study writes it at (corruptions.severities, or its
    suite's: quantdet.corruptions.suites; `out`: the corruption's folder, one subfolder per
    severity, written as a whole or not at all)."""
    from quantdet.corruptions import corrupt_split
    from quantdet.io_utils import atomic_directory

    cfg, val = params["corruptions"], require(f"{study.PREPARED}/val")
    if severity is not None:
        summary = corrupt_split(val, corruption, severity, cfg["seed"], out or study.split_dir(corruption, severity),
                                cfg["images"])
        log_job(params, "corrupt", model=f"{corruption}-{severity}",
                tags={"corruption": corruption, "severity": severity})
        return summary
    summaries = {}
    with atomic_directory(out or study.corrupted_dir(corruption)) as staging:
        for s in study.severities_of(corruption, params):
            summaries[s] = corrupt_split(val, corruption, s, cfg["seed"], staging / str(s), cfg["images"])
    log_job(params, "corrupt", model=corruption,
            metrics={f"seconds_s{s}": v["seconds"] for s, v in summaries.items()},
            tags={"corruption": corruption, "severities": ",".join(map(str, summaries))})
    return summaries
