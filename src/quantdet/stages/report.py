"""report: P/mPC/rPC tables, plots, results/report.md and the study table (results/study.tsv)."""
from __future__ import annotations

from pathlib import Path

from quantdet import study
from quantdet.io_utils import atomic_path, read_json, write_json
from quantdet.stages.common import log_job, require


def report(params: dict, out_root: str = "results") -> dict:
    from quantdet.report.aggregate import write_study_report

    evals = [study.eval_metrics_file(m, c)
             for m in study.evaluated_models(params) for c in study.conditions(params)]
    exports = [f"{study.MODELS}/{q}.export.json" for q in study.quantized_models(params) + study.peer_models(params)]
    for path in evals + exports:
        require(path)
    mixed = {m: read_json(require(study.bits_file(m))) for m in study.quantized_models(params)
             if study.parse_model_name(m).mixed_precision}
    precisions = {m: read_json(require(study.precision_file(m))) for m in study.precision_models(params)}
    generators = study.generators(params)
    grids = {g: require(Path(study.synthetic_dir(g)) / "grid.png") for g in generators}
    generated = {g: read_json(require(Path(study.synthetic_dir(g)) / "summary.json")) for g in generators}
    from quantdet.environment import environment, environment_markdown

    intervals = read_json(require(study.INTERVALS))
    ablation = read_json(require(study.ABLATION)) if study.ablation_needed(params) else None
    data_summary = Path(study.PREPARED) / "summary.json"
    env_info = environment()
    write_json(Path(out_root) / "environment.json", env_info)   # what made these results
    env = environment_markdown(env_info, read_json(data_summary) if data_summary.is_file() else None)
    summary = write_study_report(evals, exports, params, out_root=out_root, mixed_bits=mixed,
                                 generated_grids=grids, generated_info=generated, intervals=intervals,
                                 environment=env, ablation=ablation, precision_records=precisions)
    table = Path(out_root) / "study.tsv"
    with atomic_path(table) as tmp:
        Path(tmp).write_text(study.study_table(params))
    metrics = {m: {k: v for k, v in r.items() if isinstance(v, (int, float))}
               for m, r in summary.get("robustness", {}).items()}
    log_job(params, "report", metrics=metrics,
            artifacts=[Path(out_root) / "report.md", Path(out_root) / "plots",
                       Path(out_root) / "metrics", Path(out_root) / "tables", table])
    from quantdet import tracking
    tracking.flush(params)   # tracking.log: report: every job's queued run, this one's included
    return summary
