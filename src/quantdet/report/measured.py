"""The measured blocks of the documentation's results page (docs/results.md), generated from a
finished study's own outputs, so that no number in them is typed: `quantdet measured --root
STUDY_FOLDER` rewrites the block between the two markers below in that page (`--into PAGE`
another page, `--into -` prints it; `--readme` is the option's former name).

It reads results/metrics/intervals.json (every figure and comparison with its interval),
results/environment.json (what ran: packages, CPU features, the source commit), the study's
Snakemake log (wall time from the first job's start to the last job's end) and benchmarks/
(each job's own time, per stage)."""
from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path

from quantdet import study
from quantdet.config import load_params
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_path, read_json
from quantdet.report.answers import answers, verdict, with_interval
from quantdet.report.formatting import markdown_table

BEGIN = "<!-- measured:begin -->"
END = "<!-- measured:end -->"


def markers(block: str | None) -> tuple[str, str]:
    """The markers of the default block, or of a named one (`--block mimic`:
    <!-- measured:mimic:begin --> ... <!-- measured:mimic:end -->)."""
    return (BEGIN, END) if not block else (f"<!-- measured:{block}:begin -->", f"<!-- measured:{block}:end -->")
# The targets of the decision-grade study (docs/results.md, "The default study"): 95% half-widths in AP points.
TARGETS = {"dmPC": 0.75, "dP": 1.5, "P": 2.0}
HEADLINE_GROUP = "qrid"
_STAMP = re.compile(r"^\[(\w{3} \w{3}\s+\d+ \d\d:\d\d:\d\d \d{4})\]$")
_LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def snakemake_wall(root: Path) -> dict | None:
    """Wall time of the newest Snakemake run in root that finished every step: from its first
    timestamp to its last."""
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True)
    for log in logs:
        text = log.read_text(errors="replace")
        done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
        if not done:
            continue
        stamps = [datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
                  for m in map(_STAMP.match, text.splitlines()) if m]
        if len(stamps) < 2:
            continue
        return {"log": str(log.relative_to(root)), "steps": int(done[-1][1]),
                "seconds": (stamps[-1] - stamps[0]).total_seconds()}
    return None


def job_times(root: Path) -> dict[str, dict]:
    """Per stage: job count and summed job seconds, from each job's benchmark (benchmarks/) or,
    for a job without one, from the first and last timestamps of its log (logs/)."""
    stages: dict[str, dict] = {}
    timed = set()
    for tsv in sorted((root / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(root / "benchmarks")
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            _add(stages, stage, float(rows[-1]["s"]))
            timed.add((stage, rel.with_suffix("").as_posix()))
    for log in sorted((root / "logs").rglob("*.log")):
        rel = log.relative_to(root / "logs")
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if (stage, rel.with_suffix("").as_posix()) in timed or any(s == stage for s, _ in timed):
            continue
        stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                  for m in map(_LOG_STAMP.match, log.read_text(errors="replace").splitlines()) if m]
        if len(stamps) > 1:   # a log with one line (its command) times nothing
            _add(stages, stage, (stamps[-1] - stamps[0]).total_seconds())
    return stages


def _add(stages: dict, stage: str, seconds: float) -> None:
    entry = stages.setdefault(stage, {"jobs": 0, "seconds": 0.0})
    entry["jobs"] += 1
    entry["seconds"] += seconds


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)   # 3599.6 s is 60 min 00 s, not 59 min 60 s
    return f"{minutes} min {rest:02d} s"


def _half_width(value: dict) -> float:
    """Half the interval's width (a basic bootstrap interval need not be centred on the estimate)."""
    return 100 * (value["high"] - value["low"]) / 2


def measured_markdown(root: str | Path, block: str | None = None, stages: list[str] | None = None) -> str:
    """The Measured block of a finished study. ``stages`` (e.g. ["mimic"]) restricts it to the
    FP32 models and those stages' models, with the comparisons among them (an extension of a
    study: what its new jobs measured); the targets table is then left out."""
    root = Path(root)
    params = load_params(root / "params.yaml")
    intervals = read_json(_require(root / study.INTERVALS))
    if stages:
        intervals = _restricted(intervals, set(stages))
    env_file = root / "results" / "environment.json"
    env = read_json(env_file) if env_file.is_file() else {}
    lines = []
    source = (env.get("runtime") or {}).get("source") or {}
    cpu = env.get("cpu") or {}
    wall = snakemake_wall(root)
    head = f"Study `{params['study']['name']}`"
    if source:
        head += f" at commit `{source['commit'][:7]}`" + (" (with uncommitted changes)" if source["dirty"] else "")
    if cpu:
        head += f", on {cpu.get('model', 'an unknown CPU')} ({(env.get('runtime') or {}).get('usable_cpus')} cores usable"
        features = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                    if (cpu.get("features") or {}).get(f)]
        head += f"; {', '.join(features)})" if features else ")"
    if wall:
        head += (f": **{_minutes(wall['seconds'])}** from the first job to the last "
                 f"({wall['steps']} steps, `{wall['log']}`)")
    lines.append(head + ".")
    times = None if stages else job_times(root)   # an extension: its wall time above, not the folder's jobs
    if times:
        total = sum(t["seconds"] for t in times.values())
        rows = [[stage, str(t["jobs"]), _minutes(t["seconds"]), f"{t['seconds'] / t['jobs']:.0f} s"]
                for stage, t in sorted(times.items(), key=lambda kv: -kv[1]["seconds"])]
        lines.append(f"Job time per stage (`benchmarks/`, else the job's log; {_minutes(total)} in all, two jobs "
                     "at a time on 2 cores):\n\n"
                     + markdown_table(["stage", "jobs", "job time", "per job"], rows, align_right_from=1))
    figures = intervals["models"]
    analysed = study.analysed_runtime(params)
    shown = [m for m in study.evaluated_models(params)
             if m in figures and study.parse_model_name(m).seed is None and not study.parse_model_name(m).precision
             and study.parse_model_name(m).compared_as == (analysed if study.parse_model_name(m).quantized else "torch")]
    rows = [[f"`{m}`", with_interval(figures[m].get("P"), "P"), with_interval(figures[m].get("mPC"), "mPC"),
             with_interval(figures[m].get("rPC"), "rPC"), with_interval(figures[m].get("mPC_heldout"), "mPC")]
            for m in shown if m in figures]
    lines.append(f"Every model of the study seed ({'deployed: integer ONNX in onnxruntime' if analysed == 'onnxruntime' else 'simulated in PyTorch'}"
                 f" for quantized ones; AP@[.5:.95] in points, 95% intervals; P on {intervals['num_images']} "
                 f"val images, each corrupted condition on {params['corruptions']['images'] or 'all'} of them):\n\n"
                 + markdown_table(["model", "P", "mPC", "rPC", "mPC held-out"], rows, align_right_from=1))
    lines.append("What the intervals allow (a direction only where the interval excludes zero):\n\n"
                 + "\n".join(f"- {a}" for a in answers(intervals) if a))
    if not stages:   # an extension's block: its models' accuracy; latency belongs to the whole study
        lines.append(targets_markdown(intervals))
        lines.append(deployment_markdown(root, params, intervals))
        lines.append(detectors_markdown(root, params, intervals))
        lines.append(precisions_markdown(root, params, intervals))
        from quantdet.report.qrid import qrid_section

        lines.append(qrid_section(params, intervals).replace("## QRID's protocol\n\n", "QRID's protocol: ", 1))
    ablation = root / study.ABLATION
    if ablation.is_file() and not stages:
        lines.append(ablation_markdown(read_json(ablation), params))
    body = "\n\n".join(line for line in lines if line)
    begin, end = markers(block)
    command = "quantdet measured --root <study folder>" + (
        f" --block {block}" if block else "") + (f" --stages {' '.join(stages)}" if stages else "")
    return (f"{begin}\n<!-- generated by `{command}` from the study's results: do not edit by hand -->\n\n"
            f"{body}\n\n{end}")


def _restricted(intervals: dict, stages: set[str]) -> dict:
    """The FP32 models (teacher, student) and the models of ``stages`` (stage names such as
    mimic, or method names such as zeroq), and the comparisons among them alone."""
    def kept(model: str) -> bool:
        try:
            name = study.parse_model_name(model)
        except ValueError:
            return False
        return not name.quantized or name.stage in stages or name.method in stages

    models = {m: f for m, f in intervals["models"].items() if kept(m)}
    comparisons = [c for c in intervals["comparisons"]
                   if all(kept(m) for m in c["treatment"] + c["baseline"])]
    return {**intervals, "models": models, "comparisons": comparisons}


def deployment_markdown(root: Path, params: dict, intervals: dict, stages: list[str] | None = None) -> str:
    """Latency in each runtime (the export and peer records), the speed answers, and the
    outlier-aware model's side-path cost."""
    from quantdet.report.deployment import deployment_table, fastest_runtime_answers, peer_speed_answers

    exports = {}
    for model in study.quantized_models(params) + study.peer_models(params):
        if stages and study.parse_model_name(model).stage not in stages:
            continue
        if study.parse_model_name(model).role not in study.ROLES:   # other detectors: detectors_markdown
            continue
        path = root / study.MODELS / f"{model}.export.json"
        if path.is_file():
            exports[model] = read_json(path)
    table = deployment_table(exports, intervals)
    if not table:
        return ""
    lines = [table.replace("## Deployment: every deployable model in each runtime\n\n",
                           "Every deployable model in each runtime (ours of the study seed, and the peers): ")]
    lines += [f"- {a}" for a in fastest_runtime_answers(exports) + peer_speed_answers(exports)]
    for model, record in exports.items():
        side = record.get("outlier_side_paths") or {}
        if side.get("latency_ms_with") and side.get("latency_ms_without"):
            lines.append(f"- `{model}`: its FP16 outlier side paths take it to "
                         f"{side['latency_ms_with'] / side['latency_ms_without']:.2f}× the latency of the same "
                         f"model without them ({side['latency_ms_with']:.1f} vs {side['latency_ms_without']:.1f} ms "
                         "in onnxruntime).")
    return "\n".join(lines[:1]) + "\n\n" + "\n".join(lines[1:])


def detectors_markdown(root: Path, params: dict, intervals: dict) -> str:
    """Per detector of the detector axis (models.students beside models.student): FP32 P and
    mPC, the best W8A8 and W4A4 method, INT8 speed-up in each runtime beside NNCF's."""
    from quantdet.report.detectors import summary_table

    if len(study.students(params)) < 2:
        return ""
    exports = {}
    for model in study.quantized_models(params) + study.peer_models(params):
        path = root / study.MODELS / f"{model}.export.json"
        if path.is_file():
            exports[model] = read_json(path)
    from quantdet.report.detectors import scale_answers

    text = ("Per detector (the detector axis; AP points with 95% intervals; speed-ups: the median over the "
            "detector's W8A8 exports, each timed beside its own FP32 ONNX model):\n\n"
            + summary_table(params, intervals, exports))
    scales = scale_answers(intervals)
    return text + ("\n\n" + "\n".join(f"- {a}" for a in scales) if scales else "")


def precisions_markdown(root: Path, params: dict, intervals: dict) -> str:
    """The deployment precisions beside static INT8 (quantdet.report.precisions), from the
    precision jobs' records and the export records."""
    from quantdet.report.precisions import precisions_section

    records = {m: read_json(p) for m in study.precision_models(params)
               if (p := root / study.precision_file(m)).is_file()}
    exports = {m: read_json(p) for m in study.quantized_models(params)
               if (p := root / study.MODELS / f"{m}.export.json").is_file()}
    section = precisions_section(params, intervals, records, exports)
    return section.replace("## Deployment precisions\n\n", "Deployment precisions: ", 1)


def targets_markdown(intervals: dict) -> str:
    """The study's resolution against its targets: headline comparisons' and models' P
    half-widths."""
    rows = []
    for record in intervals["comparisons"]:
        if record["group"] != HEADLINE_GROUP:
            continue
        d = record["differences"]
        for metric, key in (("mPC", "dmPC"), ("P", "dP")):
            if metric in d:
                half = _half_width(d[metric])
                rows.append([f"{record['comparison']} at {record['bits']} ({len(record['seeds'])} seeds)",
                             f"Δ{metric}", with_interval(d[metric], metric, signed=True), f"±{half:.2f}",
                             f"±{TARGETS[key]}", "met" if half <= TARGETS[key] else "**not met**",
                             verdict(d[metric])])
    p_half = {m: _half_width(f["P"]) for m, f in intervals["models"].items() if f.get("P")}
    worst = max(p_half, key=p_half.get) if p_half else None
    text = ("Resolution against the study's targets (95% half-widths in AP points):\n\n"
            + markdown_table(["comparison", "figure", "estimate [95% interval]", "half-width", "target", "",
                              "verdict"], rows, align_right_from=3))
    if worst:
        within = sum(h <= TARGETS["P"] for h in p_half.values())
        text += (f"\n\nEvery model's own P: {within} of {len(p_half)} within ±{TARGETS['P']} points "
                 f"(widest: `{worst}` ±{p_half[worst]:.2f}).")
    return text


def ablation_markdown(ablation: dict, params: dict) -> str:
    """Where percentile clipping costs accuracy (the `ablation` job), in two sentences."""
    groups = sorted(ablation["groups"], key=lambda g: -g["recovered_points"])
    loss = ablation["minmax_P"] - ablation["percentile_P"]
    top = groups[0]
    return (f"Percentile clipping (`ablation` job, {ablation['bits']}, clean AP on {ablation['images']} val images, "
            f"one draw, no interval): at FQN's γ = {ablation['gamma']} PTQ gives P {ablation['percentile_P']:.1f} "
            f"where min/max gives {ablation['minmax_P']:.1f} (FP32 {ablation['fp32_P']:.1f}), {loss:.1f} points "
            f"lost; min/max on `{top['group']}` alone recovers {top['recovered_points']:+.1f} of them, the next "
            f"group {groups[1]['recovered_points']:+.1f} (`{groups[1]['group']}`). The study's percentile "
            f"methods use γ = {params['quant']['ptq']['percentile']}.")


def replace_block(page: str, block: str, name: str | None = None, source: str = "the page") -> str:
    begin, end = markers(name)
    if begin not in page or end not in page:
        raise QuantdetError(f"{source} has no {begin} … {end} block to replace")
    start, stop = page.index(begin), page.index(end) + len(end)
    return page[:start] + block + page[stop:]


def read_page(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise QuantdetError(f"{path}: not found (the page whose measured block to rewrite; "
                            "--into - prints the block instead)") from None


def write_measured(root: str | Path, into: str | Path | None = None, block: str | None = None,
                   stages: list[str] | None = None) -> str:
    """The block; with ``into`` (a Markdown page, e.g. docs/results.md) also written there in
    place of the page's block of the same name."""
    text_block = measured_markdown(root, block, stages)
    if into is not None:
        path = Path(into)
        text = replace_block(read_page(path), text_block, block, source=str(path))
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return text_block


def _require(path: Path) -> Path:
    if not path.is_file():
        raise QuantdetError(f"{path}: not found (is the study in this folder finished?)")
    return path
