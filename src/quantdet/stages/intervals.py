"""intervals: every model's P, mPC, rPC (and per corruption) and every comparison the report
makes, with 95% intervals from a paired image bootstrap (quantdet.evaluation.intervals)."""
from __future__ import annotations

import time
from pathlib import Path

from quantdet import study
from quantdet.stages.common import log_job, require


def intervals(params: dict, out: str | None = None) -> dict:
    from quantdet.evaluation.intervals import write_study_intervals

    for model in study.evaluated_models(params):
        require(study.eval_dir(model))
    cfg = params["statistics"]
    out = Path(out or study.INTERVALS)
    start = time.perf_counter()
    write_study_intervals(params, ".", out, resamples=cfg["resamples"], seed=cfg["seed"],
                          level=cfg["level"], processes=cfg["processes"],
                          recall_score=cfg["recall_score"])
    log_job(params, "intervals", metrics={"resamples": cfg["resamples"],
                                          "seconds": time.perf_counter() - start}, artifacts=[out])
    return {"intervals": str(out)}
