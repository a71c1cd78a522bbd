"""results/report.md: the study for a person, summary first, long tables last."""
from __future__ import annotations

import pandas as pd

from quantdet.report.deployment import deployment_table, fastest_runtime_answers, peer_speed_answers
from quantdet.report.findings import study_findings
from quantdet.report.qrid import qrid_section
from quantdet.report.formatting import (ap_points, markdown_table, percent, plain, signed_percent,
                                        signed_points)
from quantdet.study import extra_students, model_params
from quantdet.report.tables import analysed, corruption_groups, corruption_severity_grid


def render_study_report(params: dict, tables: dict[str, pd.DataFrame], exports: dict[str, dict],
                        plots: dict[str, str], num_images: list[int],
                        mixed_bits: dict[str, dict] | None = None,
                        generated_grids: dict[str, str] | None = None,
                        generated_info: dict[str, dict] | None = None,
                        classes: list[str] | None = None, intervals: dict | None = None,
                        environment: str = "", ablation: dict | None = None, detectors: str = "",
                        collapse: str = "") -> str:
    """``tables`` are those of quantdet.report.tables; ``plots`` maps a title to a path
    relative to the report; ``classes`` are those of the prepared data, where known;
    ``intervals``: results/metrics/intervals.json, whose answers replace the interval-less
    comparison sentences (a direction only where the interval excludes zero)."""
    corruptions = params["corruptions"]["names"]
    summary = tables.get("comparison_summary", pd.DataFrame())
    sections = [
        f"# Study report: {params.get('study', {}).get('name', 'quantdet')}",
        collapse,   # deployed models that lost more than half of their FP32 model's P: first
        _answers(intervals, exports),
        detectors,
        _study_description(params, tables["robustness"], num_images, classes),
        _methods(params),
        _percentile_ablation(ablation, params),
        "## What the numbers say\n\n" + "\n".join(
            f"- {line}" for line in study_findings(tables["ap_by_condition"], tables["robustness"],
                                                   tables["quantization_drop"], tables["simulated_vs_deployed"],
                                                   tables["export"], corruptions,
                                                   None if intervals else summary,
                                                   params.get("distill", {}).get("mimic", {}).get("lambda", 1.0),
                                                   deployment=not intervals)),
        _ranking(tables.get("method_ranking", pd.DataFrame()), intervals),
        _comparisons(summary, params),
        _seed_spread(tables.get("seed_spread", pd.DataFrame())),
        _zero_shot(tables["robustness"], summary, params, generated_grids or {}, generated_info or {}),
        _mimic(tables["robustness"], summary, params),
        "## Every model\n\n" + (_models_with_intervals(tables["robustness"], intervals) if intervals
                                  else _headline(tables["robustness"])),
        _other_suites(intervals),
        qrid_section(params, intervals),
        _quantization_drop(tables["quantization_drop"]),
        _simulated_vs_deployed(tables["simulated_vs_deployed"]),
        deployment_table(exports, intervals) or _export(tables["export"], exports),
        _outlier_side_paths(exports),
        "## Plots\n\n" + "\n\n".join(f"### {title}\n\n![{title}]({path})" for title, path in plots.items()),
        environment,
        "# Appendix: per-model details",
        _mixed_precision(mixed_bits or {}),
        _export_details(tables["export"], exports),
        _per_model_grids(tables["ap_by_condition"]),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _percentile_ablation(ablation: dict | None, params: dict) -> str:
    """Where percentile clipping costs accuracy: results/metrics/percentile_ablation.json."""
    if not ablation:
        return ""
    groups = sorted(ablation["groups"], key=lambda g: -g["recovered_points"])
    loss = ablation["minmax_P"] - ablation["percentile_P"]
    rows = [[f"`{g['group']}`", str(g["quantizers"]), ap_points(g["P_percentile_but_here"] / 100),
             signed_points(g["recovered_points"]), ap_points(g["P_percentile_only_here"] / 100),
             signed_points(-g["lost_points_alone"])] for g in groups]
    top = groups[0]
    share = top["recovered_points"] / loss if loss > 0 else float("nan")
    gamma, study_gamma = ablation["gamma"], params["quant"]["ptq"]["percentile"]
    text = (f"## Baselines: where percentile clipping costs accuracy\n\n"
            f"{ablation['bits']} PTQ of `student-fp32`, clean AP on {ablation['images']} of the "
            f"{ablation['of_images']} val images (point estimates of one draw; the study's own models "
            f"carry the intervals): FP32 {ap_points(ablation['fp32_P'] / 100)}, min/max "
            f"{ap_points(ablation['minmax_P'] / 100)}, percentile at γ = {gamma} (FQN's) "
            f"{ap_points(ablation['percentile_P'] / 100)}: percentile loses {loss:.1f} points. "
            f"Swapping one group of activation quantizers at a time to min/max, the group that "
            f"recovers most is `{top['group']}` ({signed_points(top['recovered_points'])} of the "
            f"{loss:.1f}, {100 * share:.0f}%); each row is one group:\n\n"
            + markdown_table(["quantizers at", "count", "P, percentile but here", "recovered",
                              "P, percentile only here", "lost alone"], rows, align_right_from=1))
    if study_gamma != gamma:
        text += (f"\n\nThe study's `percentile`, `dacal` and `fqn` use γ = {study_gamma} "
                 f"(`quant.ptq.percentile`), not FQN's {gamma}: a deviation from FQN for this detector.")
    return text


def _ranking(ranking: pd.DataFrame, intervals: dict | None = None) -> str:
    if ranking.empty:
        return ""
    deployed = ranking["model"].str.endswith(("-ort", "-ov")).all()
    where = "deployed (integer ONNX)" if deployed else "simulated in PyTorch"
    if intervals:
        from quantdet.report.answers import with_interval

        figures = intervals.get("models", {})
        # each model's paired difference with its FP32 source (study seed alone)
        against = {r["treatment"][0]: r["per_seed"][0]["differences"] for r in intervals.get("comparisons", [])
                   if r["group"] == "fp32" and not r.get("twin") and r.get("per_seed")}
        rows = [[r.bits, str(int(r.rank)), f"`{r.model}`",
                 *(with_interval(figures.get(r.model, {}).get(m), m) for m in ("P", "mPC", "rPC", "mPC_heldout")),
                 *(with_interval(against.get(r.model, {}).get(m), m, signed=True) for m in ("P", "mPC", "rPC"))]
                for r in ranking.itertuples()]
        note = ("Each figure with its 95% interval; Δ columns are paired differences with the FP32 student "
                "(study seed), in AP points (rPC in percentage points). The ranking is by the mPC estimate: "
                "neighbours whose intervals overlap are not told apart.")
    else:
        rows = [[r.bits, str(int(r.rank)), f"`{r.model}`", ap_points(r.P), ap_points(r.mPC), percent(r.rPC),
                 ap_points(r.mPC_heldout), signed_points(r.dP_points), signed_points(r.dmPC_points),
                 signed_points(r.drPC_points)] for r in ranking.itertuples()]
        note = "Δ columns are against the FP32 student, in AP points (rPC in percentage points)."
    return ("## Methods ranked per bit width\n\n"
            f"Quantized students of the study seed and the peers, {where}, ranked by mPC within each bit width. "
            + note + " mPC held-out averages the held-out corruptions, which are not part of mPC.\n\n"
            + markdown_table(["bits", "rank", "model", "P", "mPC", "rPC", "mPC held-out", "ΔP", "ΔmPC", "ΔrPC"],
                             rows, align_right_from=3))


def _group(summary: pd.DataFrame, *groups: str) -> pd.DataFrame:
    if summary.empty or "group" not in summary:
        return summary if "qrid" in groups else pd.DataFrame()
    return summary[summary["group"].isin(groups)]


def _comparison_rows(summary: pd.DataFrame) -> list[list[str]]:
    return [[r.comparison, r.bits, str(r.seeds),
             *[_mean_range(getattr(r, f"d{m}_mean"), getattr(r, f"d{m}_min"), getattr(r, f"d{m}_max"))
               for m in ("P", "mPC", "rPC", "mPC_seen", "mPC_unseen", "mPC_heldout")]]
            for r in summary.itertuples()]


_COMPARISON_HEADER = ["comparison", "bits", "seeds", "ΔP", "ΔmPC", "ΔrPC", "ΔmPC seen", "ΔmPC unseen",
                      "ΔmPC held-out"]


def _zero_shot(robustness: pd.DataFrame, summary: pd.DataFrame, params: dict, grids: dict[str, str],
               info: dict[str, dict]) -> str:
    rows = _group(summary, "zeroshot")
    if rows.empty and not grids:
        return ""
    z = params["quant"].get("zeroshot", {})
    text = ("## Zero-shot quantization: generated images instead of real ones\n\n"
            "ZeroQ optimises images so that every BatchNorm layer's batch statistics match its running "
            "statistics; GDFQ trains a conditional generator against the frozen FP32 student (BN statistics "
            "plus a class term on the heatmap); AIT fine-tunes the quantized student on GDFQ samples with the KL "
            "divergence to the FP32 student's outputs and gradient inflation. None of them reads a real training "
            f"image. Each is compared with PTQ on the real calibration images with the same observer "
            f"(`{z.get('observer', 'minmax')}`), so only the data differs; Δ = zero-shot − real, AP points.\n\n")
    if not rows.empty:
        text += markdown_table(_COMPARISON_HEADER, _comparison_rows(rows), align_right_from=2)
    best = _zero_shot_beside_best_real(robustness, params)
    if best:
        text += ("\n\nBeside the best real-data PTQ of the same bit width (by P, any observer; "
                 "simulated):\n\n" + best)
    if info:
        text += ("\n\nThe generated sets: their losses at the start and the end of the optimisation "
                 "(ZeroQ: the first and last step, averaged over batches; GDFQ: the mean of the first and the "
                 "last tenth of the generator's iterations). Images that match the BN statistics need not look "
                 "like anything: ZeroQ's look like coloured noise.\n\n" + markdown_table(
                     ["generator", "images", "seconds", "BN-statistics loss, first → last",
                      "class loss, first → last"],
                     [[g, str(i.get("images", "–")), plain(i.get("seconds")),
                       _first_last(i, "bns"), _first_last(i, "class")] for g, i in info.items()],
                     align_right_from=1))
    for generator, path in grids.items():
        text += (f"\n\n### Generated images: {generator}\n\nTop row: real validation images; below: "
                 f"{generator} images (the first 16).\n\n![{generator} images beside real ones]({path})")
    return text


def _first_last(info: dict, key: str) -> str:
    if f"{key}_first" not in info:
        return "–"
    return f"{info[f'{key}_first']:.3g} → {info[f'{key}_last']:.3g}"


def _zero_shot_beside_best_real(robustness: pd.DataFrame, params: dict) -> str:
    from quantdet.methods import methods

    zero_shot = [m.name for m in methods() if m.family in ("ptq", "qat") and m.generated]
    seed = params.get("study", {}).get("seed", 0)
    torch_rows = robustness[analysed(robustness) & (robustness["seed"] == seed)]
    zero = torch_rows[torch_rows["method"].isin(zero_shot)]
    real = torch_rows[(torch_rows["family"] == "ptq") & ~torch_rows["method"].isin(zero_shot)
                      & (torch_rows["method"] != "mixed")]
    rows = []
    for r in zero.itertuples():
        same = real[real["bits"] == r.bits].dropna(subset=["P"])
        if same.empty:
            continue
        b = same.loc[same["P"].idxmax()]
        rows.append([f"`{r.model}`", r.bits, ap_points(r.P), ap_points(r.mPC), percent(r.rPC),
                     f"`{b['model']}`", ap_points(b["P"]), ap_points(b["mPC"]),
                     signed_points(100 * (r.P - b["P"])), signed_points(100 * (r.mPC - b["mPC"]))])
    if not rows:
        return ""
    return markdown_table(["zero-shot model", "bits", "P", "mPC", "rPC", "best real-data PTQ", "its P", "its mPC",
                           "ΔP", "ΔmPC"], rows, align_right_from=2)


def _mimic(robustness: pd.DataFrame, summary: pd.DataFrame, params: dict) -> str:
    mimic = robustness[(robustness["family"] == "mimic") & analysed(robustness)]
    if mimic.empty:
        return ""
    cfg = params.get("distill", {}).get("mimic", {})
    rows = [[f"`{r.model}`", r.bits, r.method, ap_points(r.P), ap_points(r.mPC), percent(r.rPC)]
            for r in mimic.itertuples()]
    text = ("## Quantization mimic: the student fine-tuned against the teacher's features\n\n"
            "Every variant starts from the FP32 student, is quantized as FQN (BN folded, per-channel weights, "
            "percentile activation ranges tracked by EMA) and fine-tuned with the detection loss for the same "
            "number of steps; `alone` has no mimic term, `plain` adds λ·L2 between the teacher's and the "
            "adapted student's FPN features pooled on ground-truth boxes and the student's top detections, "
            f"`qmimic` quantizes both feature maps first (step {plain(cfg.get('step'))}); `_l0p1`, `_l10` set "
            f"λ to 0.1 and 10 (default λ {plain(cfg.get('lambda'))}). Simulated (PyTorch) students.\n\n"
            + markdown_table(["model", "bits", "variant", "P", "mPC", "rPC"], rows, align_right_from=3))
    paired = _group(summary, "mimic")
    if not paired.empty:
        text += "\n\nΔ = treatment − baseline, AP points:\n\n" + markdown_table(
            _COMPARISON_HEADER, _comparison_rows(paired), align_right_from=2)
    return text


def _comparisons(summary: pd.DataFrame, params: dict) -> str:
    summary = _group(summary, "fp32", "qrid")
    if summary.empty:
        return ""
    groups = corruption_groups(params)
    rows = []
    for r in summary.itertuples():
        rows.append([r.comparison, r.bits, str(r.seeds),
                     *[_mean_range(getattr(r, f"d{m}_mean"), getattr(r, f"d{m}_min"), getattr(r, f"d{m}_max"))
                       for m in ("P", "mPC", "rPC", "mPC_seen", "mPC_unseen", "mPC_heldout")]])
    names = lambda key: ", ".join(groups[key]) or "none"   # noqa: E731
    return ("## Paired comparisons (QRID): quantization, degradation-aware calibration, DA-QAT\n\n"
            "Treatment − baseline for each seed, then the mean and, with more than one seed, the range "
            "[min, max] over seeds, in AP points (rPC in percentage points). Each quantized model is compared "
            "with the FP32 student of its own seed. Corruption groups: *seen* = benchmark corruptions that the "
            f"training-time degradations also apply ({names('seen')}); *unseen* = the other benchmark "
            f"corruptions ({names('unseen')}); *held-out* = outside mPC ({names('heldout')}).\n\n"
            + markdown_table(["comparison", "bits", "seeds", "ΔP", "ΔmPC", "ΔrPC", "ΔmPC seen", "ΔmPC unseen",
                              "ΔmPC held-out"], rows, align_right_from=2))


def _mean_range(mean, low, high) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(low) or abs(high - low) < 1e-12:
        return signed_points(mean)
    return f"{signed_points(mean)} [{signed_points(low)}, {signed_points(high)}]"


def _seed_spread(spread: pd.DataFrame) -> str:
    if spread.empty:
        return ""
    rows = [[f"`{r.model}`", r.bits, ", ".join(map(str, r.seeds)),
             f"{ap_points(r.P_mean)} [{ap_points(r.P_min)}, {ap_points(r.P_max)}]",
             f"{ap_points(r.mPC_mean)} [{ap_points(r.mPC_min)}, {ap_points(r.mPC_max)}]",
             f"{percent(r.rPC_mean)} [{percent(r.rPC_min)}, {percent(r.rPC_max)}]"] for r in spread.itertuples()]
    return ("## Run-to-run spread\n\n"
            "Models run with more than one seed (the FP32 student retrained, then quantized again): mean "
            "[min, max] over seeds.\n\n"
            + markdown_table(["model", "bits", "seeds", "P", "mPC", "rPC"], rows, align_right_from=3))


def _detector(model_params: dict) -> str:
    """The family's line for a model; a user's trained checkpoint with its file's sha256."""
    from pathlib import Path

    from quantdet import detectors

    text = detectors.of_params(model_params).describe(model_params)
    checkpoint = model_params.get("checkpoint")
    if checkpoint:
        from quantdet.io_utils import sha256_of

        path = Path(checkpoint)
        digest = sha256_of(path) if path.is_file() else "file not found when the report was written"
        text += f" from the trained checkpoint `{checkpoint}` (sha256 `{digest}`; not trained by this study)"
    return text


def _study_description(params: dict, robustness: pd.DataFrame, num_images: list[int],
                       classes: list[str] | None = None) -> str:
    data, models, quant, corr = params["data"], params["models"], params["quant"], params["corruptions"]
    if data["source"] == "embedded":
        dataset = (f"the embedded synthetic dataset ({data['embedded']['num_train']} train / "
                   f"{data['embedded']['num_val']} val images, {data['image_size']} px)")
    elif data["source"] == "coco":
        dataset = f"COCO-format data (val annotations: `{data['coco']['val_annotations']}`)"
    elif data["source"] == "voc":
        dataset = f"Pascal VOC (val sets: {', '.join('/'.join(s) for s in data['voc']['val_sets'])})"
    else:
        dataset = f"YOLO-format data (`{data['yolo']['data_yaml']}`)"
    if classes:
        dataset += f", {len(classes)} classes ({', '.join(classes)})"
    images = sorted(set(num_images))
    ptq = quant.get("ptq", {})
    matrix = params["matrix"]
    bits = ", ".join(f"W{b}A{b}" for b in matrix["bits"])
    lines = [
        "## What this study is",
        "",
        "How much accuracy and corruption robustness a detector keeps when it is quantized.",
        "",
        f"- **Dataset**: {dataset}; evaluated on {'/'.join(map(str, images)) or 'an unknown number of'} images.",
        f"- **Models**: teacher {_detector(models['teacher'])}; student {_detector(models['student'])}; "
        + "".join(f"beside it `{role}` {_detector(model_params(params, role))}; " for role in extra_students(params))
        + f"{models['input_size']} px input, trained in FP32.",
        f"- **Quantization**: post-training methods {', '.join(f'`{m}`' for m in matrix['ptq'])} at "
        f"{bits}; {ptq.get('calib_batches', '?')} calibration batches of {ptq.get('calib_batch_size', '?')} images. "
        "Runtime `torch` is fake quantization in PyTorch (simulated); `onnxruntime` (names ending in `-ort`) "
        "is the exported QDQ ONNX model (deployed).",
        *_qat_description(quant, matrix["qat"]),
        f"- **Corruptions**: {len(corr['names'])} benchmark ones in mPC ({', '.join(corr['names'])}) and "
        f"{len(corr.get('heldout', []))} held-out ones reported apart ({', '.join(corr.get('heldout', [])) or 'none'}), "
        f"at severities {', '.join(map(str, corr['severities']))}; corruption seed {corr.get('seed', '?')}, "
        f"study seed {params.get('study', {}).get('seed', '?')}"
        + _repeat_description(matrix["repeat"]) + ".",
        f"- **Evaluated models**: {len(robustness)} ({', '.join(robustness['model'])}).",
        "- **Metrics** (Michaelis et al. 2019): P = box AP@[.5:.95] on clean images; mPC = mean AP over "
        "every corruption × severity; rPC = mPC / P. AP is given in points (AP × 100), rPC in percent.",
    ]
    return "\n".join(lines)


def _answers(intervals: dict | None, exports: dict[str, dict]) -> str:
    if not intervals:
        return ""
    from quantdet.report.answers import answers, method_note

    lines = [line for line in answers(intervals) if line]
    lines += fastest_runtime_answers(exports) + peer_speed_answers(exports)
    return ("## Answers, with 95% intervals\n\n" + method_note(intervals) + "\n\n"
            + "\n".join(f"- {line}" for line in lines))


def _other_suites(intervals: dict | None) -> str:
    """Per degradation suite besides imagecorruptions (intervals.json "suites"): each model's P,
    the suite's mean AP and its mean relative to P, with intervals; what each quantized model
    keeps relative to its FP32 model; and AP per degradation."""
    from quantdet.report.answers import verdict, with_interval

    if not intervals or not intervals.get("suites"):
        return ""
    from quantdet.corruptions import suites as registry

    models, parts = intervals["models"], ["## Other degradation suites"]
    fp32 = [c for c in intervals.get("comparisons", []) if c.get("group") in ("fp32", "detector", "precision")]
    for name, suite in intervals["suites"].items():
        mean, relative = f"mPC_{name}", f"rPC_{name}"
        corruptions = list(suite["corruptions"])
        try:
            about = f"{registry.get(name).description} ({registry.get(name).reference})."
        except KeyError:
            about = ""
        rows = [[f"`{m}`", with_interval(f.get("P"), "P"), with_interval(f.get(mean), mean),
                 with_interval(f.get(relative), relative)] for m, f in models.items() if mean in f]
        text = (f"### {name}\n\n{about} Mean AP over its {len(corruptions)} conditions "
                f"({', '.join(corruptions)}) and that mean relative to P, each with its 95% interval.\n\n"
                + markdown_table(["model", "P", f"mean ({name})", f"relative ({name})"], rows))
        lost = []
        for record in fp32:
            d = record.get("differences", {}).get(relative)
            if d:
                lost.append([record.get("comparison", ""), with_interval(d, relative, signed=True), verdict(d)])
        if lost:
            text += (f"\n\nRelative AP under {name} against the FP32 model (percentage points; a difference "
                     "whose interval holds zero is no measurable difference):\n\n"
                     + markdown_table(["comparison", f"Δ relative ({name})", "verdict"], lost, align_right_from=1))
        grid = [[f"`{m}`", *[ap_points(f.get("corruptions", {}).get(c, {}).get("estimate")) for c in corruptions]]
                for m, f in models.items() if mean in f]
        text += ("\n\nAP per condition (points, mean over its severities):\n\n"
                 + markdown_table(["model", *corruptions], grid))
        parts.append(text)
    return "\n\n".join(parts)


def _models_with_intervals(robustness: pd.DataFrame, intervals: dict) -> str:
    from quantdet.report.answers import models_table

    return ("Each figure with its 95% interval (AP points; rPC in percent); AP50 figures and the per-corruption "
            "tables are in the appendix below.\n\n" + models_table(robustness, intervals))


def _methods(params: dict) -> str:
    """One line per method of the study (the student's matrix, then what another student's own
    matrix adds, with the students that run it), from the method registry."""
    from quantdet import study
    from quantdet.methods import get_method

    matrix = params["matrix"]
    rows = [[family, f"`{name}`", get_method(family, name).describe(name)]
            for family in ("ptq", "qat", "mimic", "peer") for name in matrix.get(family, [])]
    added: dict[tuple[str, str], list[str]] = {}
    for role in study.extra_students(params):
        own = study.role_matrix(params, role)
        for family in ("ptq", "qat", "peer"):
            for name in own.get(family, []):
                if name not in matrix.get(family, []):
                    added.setdefault((family, name), []).append(role)
    rows += [[family, f"`{name}`", f"{get_method(family, name).describe(name)} (students: {', '.join(roles)})"]
             for (family, name), roles in added.items()]
    if matrix["mixed"]:
        rows.append(["ptq", "`mixed`", get_method("ptq", "mixed").description
                     + f" (budgets: {', '.join(map(str, matrix['mixed']))} bits)"])
    if not rows:
        return ""
    return "## Methods\n\n" + markdown_table(["family", "method", "what it does"], rows, align_right_from=3)


def _qat_description(quant: dict, recipes: list[str]) -> list[str]:
    lines = []
    qat = quant.get("qat", {})
    if recipes:
        lines.append(f"- **Quantization-aware training**: recipes {', '.join(f'`{r}`' for r in recipes)}, "
                     f"{qat.get('epochs', '?')} epochs from the FP32 student.")
    d = quant.get("degradations")
    if d:
        lines.append(f"- **Training-time degradations** (DA-QAT batches, `dacal` calibration images): each image "
                     f"degraded with probability {d.get('p', '?')} by one of {', '.join(d.get('names', []))} at "
                     f"severity {', '.join(map(str, d.get('severities', [])))}.")
    return lines


def _repeat_description(repeat: dict) -> str:
    from quantdet.config import family_seeds

    families = {f: family_seeds(repeat, f) for f in ("ptq", "qat")}
    parts = [f"seeds {', '.join(map(str, families[f]))} for "
             + ", ".join(f"`{m}`" for m in repeat.get(f, []))
             for f in ("ptq", "qat") if families[f] and repeat.get(f)]
    if not parts:
        return ""
    fp32 = "retrained FP32 students" if repeat.get("retrain") else "the study's FP32 student"
    return f"; repeated from {fp32} with " + "; ".join(parts)


def _headline(robustness: pd.DataFrame) -> str:
    rows = [[f"`{r.model}`", r.bits, r.runtime, ap_points(r.P), ap_points(r.mPC), percent(r.rPC),
             ap_points(r.P_AP50), ap_points(r.mPC_AP50)] for r in robustness.itertuples()]
    return markdown_table(["model", "bits", "runtime", "P", "mPC", "rPC", "AP50 clean", "mPC (AP50)"],
                          rows, align_right_from=3)


def _quantization_drop(drop: pd.DataFrame) -> str:
    if drop.empty:
        return ""
    rows = [[f"`{r.model}`", r.runtime, f"`{r.fp32_source}`",
             f"{ap_points(r.P_fp32)} → {ap_points(r.P)}", signed_points(r.dP_points), signed_percent(r.dP_rel),
             f"{ap_points(r.mPC_fp32)} → {ap_points(r.mPC)}", signed_points(r.dmPC_points), signed_percent(r.dmPC_rel),
             f"{percent(r.rPC_fp32)} → {percent(r.rPC)}", signed_points(r.drPC_points)]
            for r in drop.itertuples()]
    return ("## Quantization drop against the FP32 source\n\n"
            "Differences are quantized − FP32: in AP points (Δ) and relative to the FP32 value (rel.); "
            "ΔrPC is in percentage points.\n\n"
            + markdown_table(["model", "runtime", "FP32 source", "P", "ΔP", "rel.", "mPC", "ΔmPC", "rel.",
                              "rPC", "ΔrPC"], rows, align_right_from=3))


def _simulated_vs_deployed(sim_dep: pd.DataFrame) -> str:
    if sim_dep.empty:
        return ""
    rows = [[f"`{r.model}`", r.bits, ap_points(r.P_simulated), ap_points(r.P_deployed), signed_points(r.dP_points),
             ap_points(r.mPC_simulated), ap_points(r.mPC_deployed), signed_points(r.dmPC_points)]
            for r in sim_dep.itertuples()]
    return ("## Simulated (PyTorch) vs deployed (onnxruntime)\n\n"
            "The same quantized model, fake-quantized in PyTorch and run as integer ONNX; Δ = deployed − simulated.\n\n"
            + markdown_table(["model", "bits", "P simulated", "P deployed", "ΔP", "mPC simulated",
                              "mPC deployed", "ΔmPC"], rows, align_right_from=2))


def _export(export: pd.DataFrame, exports: dict[str, dict]) -> str:
    if export.empty:
        return ""
    rows = [[f"`{r.model}`", _milliseconds(r.latency_ms_fp32), _milliseconds(r.latency_ms_int8),
             "–" if pd.isna(r.speedup_int8_vs_fp32) else f"{r.speedup_int8_vs_fp32:.2f}×",
             _megabytes(r.size_bytes_fp32), _megabytes(r.size_bytes_int8)] for r in export.itertuples()]
    first = export.iloc[0]
    setting = ("" if pd.isna(first["latency_batch"]) else
               f" Latency is per batch of {int(first['latency_batch'])} images"
               + ("" if pd.isna(first["latency_threads"]) else f" on {int(first['latency_threads'])} threads") + ".")
    return "\n\n".join(["## Export\n\nFP32 and INT8 (QDQ) ONNX models in onnxruntime, each timed in its own "
                       "process." + setting + " Each model's agreement with its simulation and its calibration "
                       "identity: appendix.",
                       markdown_table(["model", "FP32 ms", "INT8 ms", "speed-up", "FP32 MB", "INT8 MB"], rows)])


def _export_details(export: pd.DataFrame, exports: dict[str, dict]) -> str:
    if export.empty:
        return ""
    parts = ["## Export details: agreement with the simulation, calibration identity"]
    for model in export["model"]:
        for field in ("agreement", "calibration"):
            details = _flatten(exports[model].get(field) or {})
            if details:
                parts.append(f"**{field.capitalize()} of `{model}`**\n\n"
                             + "\n".join(f"- {key}: {plain(value)}" for key, value in details.items()))
    return "\n\n".join(parts)


def _outlier_side_paths(exports: dict[str, dict]) -> str:
    """Outlier-aware models keep a few weights in FP16 beside the integer convolutions: what
    that costs in file size and latency, measured by the export stage."""
    rows = []
    for model, export in exports.items():
        side = export.get("outlier_side_paths")
        if not side:
            continue
        rows.append([f"`{model}`", str(side.get("weights_kept_fp16", "–")),
                     _megabytes(side.get("size_bytes_without")), _megabytes(export["size_bytes"].get("int8_onnx")),
                     f"{side.get('extra_bytes', 0) / 1e3:.1f} kB",
                     _milliseconds(side.get("latency_ms_without")), _milliseconds(side.get("latency_ms_with"))])
    if not rows:
        return ""
    return ("## Outlier-aware models: the cost of the FP16 side paths\n\n"
            "The ONNX file with its FP16 outlier side paths against the same model exported without them "
            "(outliers dropped), both in onnxruntime on the latency setting of the export table.\n\n"
            + markdown_table(["model", "FP16 weights", "MB without", "MB with", "extra", "ms without", "ms with"], rows))


def _mixed_precision(mixed: dict[str, dict]) -> str:
    parts = []
    for model, info in mixed.items():
        layers = info.get("layers", [])
        rows = [[f"`{layer['layer']}`", str(layer["params"]),
                 ", ".join(f"{b}b: {float(v):.3g}" for b, v in layer.get("sensitivity", {}).items()),
                 str(layer["bits"])] for layer in layers]
        parts.append(
            f"### `{model}`\n\nBudget {plain(info.get('budget_average_weight_bits'))} bits per weight on average; "
            f"achieved {plain(info.get('average_weight_bits'))} over {plain(info.get('total_weight_params'))} "
            f"weights. Sensitivity: {info.get('sensitivity_definition', info.get('sensitivity_metric', '?'))}\n\n"
            + markdown_table(["layer", "weights", "sensitivity per bit width", "bits"], rows))
    if not parts:
        return ""
    return "## Mixed precision: bits per layer\n\n" + "\n\n".join(parts)


def _milliseconds(ms) -> str:
    return "–" if pd.isna(ms) else f"{ms:.1f}"


def _megabytes(size) -> str:
    return "–" if pd.isna(size) else f"{size / 1e6:.2f}"


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _per_model_grids(ap: pd.DataFrame) -> str:
    parts = ["## AP per corruption and severity\n\nAP points; the last column is the mean over severities."]
    for model in ap["model"].unique():
        grid = corruption_severity_grid(ap, model)
        severities = [c for c in grid.columns if c != "mean"]
        clean = ap.loc[(ap["model"] == model) & (ap["condition"] == "clean"), "AP"]
        rows = [["clean", *[""] * len(severities), ap_points(clean.iloc[0]) if len(clean) else "–"]]
        rows += [[condition, *[ap_points(grid.at[condition, s]) for s in severities], ap_points(grid.at[condition, "mean"])]
                 for condition in grid.index]
        parts.append(f"### `{model}`\n\n" + markdown_table(["condition", *[f"s{s}" for s in severities], "mean"], rows))
    return "\n\n".join(parts)
