"""QRID's protocol (arXiv 2508.19600) on the study's own models, where the study runs the `qrid`
degradation suite: its relative-drop table, each cell with its 95% interval, and its three
claims answered with intervals:

(a) static INT8 loses more than FP32 under noise (QRID: yolo12n 29.4% against 24.5% under
    `noisy_low`, yolo12s 23.6% against 18.5%);
(b) degradation-aware calibration is no better than clean calibration;
(c) how the spread from one calibration draw to the next compares with those effects (QRID
    ran each cell once).

A relative drop is 1 - AP(set) / P, AP(set) the mean over the set's severities; differences of
drops are paired over the same image resamples (results/metrics/intervals.json: each model's
"relative" figures and each comparison's "relative_differences"). Nothing is recomputed here.
"""
from __future__ import annotations

import numpy as np

from quantdet import study
from quantdet.report.answers import verdict, with_interval
from quantdet.report.formatting import markdown_table

SUITE = "qrid"
NOISE = ("noisy_low", "noisy_medium")
QRID_NOISY_LOW = {"yolo12n": (24.5, 29.4), "yolo12s": (18.5, 23.6)}   # FP32, INT8 relative drop in %


def _known(value: dict | None) -> bool:
    return bool(value) and all(value.get(k) is not None for k in ("estimate", "low", "high"))


def _drop(value: dict | None) -> dict | None:
    """1 - relative, with its interval's ends swapped."""
    if not _known(value):
        return None
    return {"estimate": 1 - value["estimate"], "low": 1 - value["high"], "high": 1 - value["low"]}


def _negated(value: dict | None) -> dict | None:
    if not _known(value):
        return None
    return {"estimate": -value["estimate"], "low": -value["high"], "high": -value["low"]}


def _cell(value: dict | None) -> str:
    """A drop in percent with its interval: `24.5% [20.1, 28.8]`."""
    if not value:
        return "–"
    return f"{100 * value['estimate']:.1f}% [{100 * value['low']:.1f}, {100 * value['high']:.1f}]"


def _points(value: dict | None) -> str:
    return "–" if not value else with_interval(value, "d", signed=True)


def _more_or_less(difference: dict | None, more: str, less: str) -> str:
    """answers.verdict in this section's words: a direction only where the interval excludes zero."""
    said = verdict(difference or {})
    return {"higher": more, "lower": less}.get(said, said)


def _static_int8(record: dict, deployed: bool = True) -> bool:
    """A comparison of a W8A8 PTQ model (deployed in onnxruntime, or any) against its FP32 model."""
    from quantdet.methods import get_method

    if record.get("group") not in ("fp32", "detector"):
        return False
    name = study.parse_model_name(record["treatment"][0])
    if name.stage != "ptq" or (name.weight_bits, name.act_bits) != (8, 8) \
            or not study.parse_model_name(record["baseline"][0]).fp32:
        return False
    if deployed and name.compared_as != "onnxruntime":
        return False
    try:
        return not get_method("ptq", name.method).generated
    except KeyError:   # mixed precision
        return False


def _claim_a(comparisons: list[dict], models: dict, sets: list[str]) -> list[str]:
    noisy = [s for s in NOISE if s in sets]
    lines = []
    for record in comparisons:
        if not _static_int8(record) or "relative_differences" not in record:
            continue
        treatment, baseline = record["treatment"][0], record["baseline"][0]
        for condition in noisy:
            extra = _negated(record["relative_differences"].get(condition))   # drop(INT8) - drop(FP32)
            if extra is None:
                continue
            answer = _more_or_less(extra, "INT8 loses more", "INT8 loses less")
            lines.append(
                f"`{treatment}` under `{condition}`: drop {_cell(_drop(models[treatment]['relative'].get(condition)))} "
                f"against FP32's {_cell(_drop(models[baseline]['relative'].get(condition)))}; "
                f"difference {_points(extra)} points ({_seeds(record)}): **{answer}**")
    return lines


def _seeds(record: dict) -> str:
    seeds = record.get("seeds") or []
    return "one calibration draw" if len(seeds) <= 1 else f"{len(seeds)} calibration draws pooled"


def _claim_b(comparisons: list[dict], sets: list[str]) -> list[str]:
    lines = []
    for record in comparisons:
        if record.get("group") != "qrid" or not record["comparison"].startswith("degradation-aware calibration"):
            continue
        d = record["differences"]
        parts = [f"ΔP {_points(d.get('P'))}", f"Δ mean AP over the `qrid` sets {_points(d.get(f'mPC_{SUITE}'))}",
                 f"Δ relative AP over them {_points(d.get(f'rPC_{SUITE}'))}"]
        relative = record.get("relative_differences", {})
        parts += [f"Δ drop under `{c}` {_points(_negated(relative.get(c)))}" for c in NOISE if c in relative]
        better = _more_or_less(d.get(f"mPC_{SUITE}"), "degradation-aware calibration better",
                               "degradation-aware calibration worse")
        lines.append(f"{record['bits']} ({_seeds(record)}, `{'`, `'.join(record['treatment'])}` against "
                     f"`{'`, `'.join(record['baseline'])}`): {'; '.join(parts)} (points): **{better}** on the "
                     f"`qrid` sets")
    return lines


def _claim_c(comparisons: list[dict], models: dict, effects: list[float]) -> list[str]:
    """Per repeated PTQ method: P and the `noisy_low` drop across its calibration draws."""
    lines = []
    for record in comparisons:
        if not _static_int8(record, deployed=False) or len(record.get("seeds") or []) < 2:
            continue
        draws = [models[t] for t in record["treatment"] if t in models]
        p = np.array([100 * f["P"]["estimate"] for f in draws if f.get("P") and f["P"].get("estimate") is not None])
        drops = np.array([100 * (1 - f["relative"]["noisy_low"]["estimate"]) for f in draws
                          if (f.get("relative") or {}).get("noisy_low", {}).get("estimate") is not None])
        if len(p) < 2:
            continue
        text = (f"`{record['treatment'][0]}`, {len(p)} calibration draws: P from {p.min():.1f} to "
                f"{p.max():.1f} (spread {p.max() - p.min():.1f} points, SD {p.std(ddof=1):.1f})")
        if len(drops) >= 2:
            text += (f"; drop under `noisy_low` from {drops.min():.1f}% to {drops.max():.1f}% "
                     f"(spread {drops.max() - drops.min():.1f} points)")
        lines.append(text)
    if lines and effects:
        lines.append(f"The effects of (a) and (b) above are {', '.join(f'{e:+.1f}' for e in effects)} points: "
                     "an effect smaller than the spread of one calibration draw to the next is one a single "
                     "run per cell (QRID's design) cannot tell from chance.")
    return lines


# Ultralytics' INT8 paths (`yolo export ... int8=True` / `quantize=8`, `yolo train quantize=8`):
# the peer that runs each here, or why it cannot run on this machine
ULTRALYTICS_PATHS = (
    ("ONNX INT8 (`yolo export format=onnx quantize=8`)", "ultralytics_onnx", None),
    ("OpenVINO INT8 (`yolo export format=openvino int8=True`)", "ultralytics_openvino", None),
    ("QAT (`yolo train quantize=8`)", "ultralytics_qat", None),
    ("LiteRT full-integer INT8 (`yolo export format=tflite int8=True`)", None,
     "needs TensorFlow and onnx2tf, not in the lock (LiteRT's own PT2E INT8 is the `litert` peer)"),
    ("TensorRT INT8 (`yolo export format=engine int8=True`, QRID's static INT8)", None,
     "needs an NVIDIA GPU and TensorRT; not on this CPU machine"),
)


def ultralytics_paths(params: dict) -> str:
    """Which of Ultralytics' own INT8 paths the study ran as peers for its YOLO detectors, and
    why the others are not here; empty without a YOLO detector."""
    yolo = [r for r in study.students(params) if study.model_params(params, r).get("detector") == "yolo"]
    if not yolo:
        return ""
    lines = []
    for path, peer, why in ULTRALYTICS_PATHS:
        if peer is None:
            lines.append(f"- {path}: not run: {why}.")
            continue
        ran = [r for r in yolo if peer in study.role_matrix(params, r).get("peer", [])]
        lines.append(f"- {path}: the `{peer}` peer, " + (f"run for {', '.join(f'`{r}`' for r in ran)}." if ran else
                                                         "not in this study's matrix (`matrix.peer`)."))
    return "**Ultralytics' own INT8, as a YOLO user gets it:**\n\n" + "\n".join(lines)


def qrid_section(params: dict, intervals: dict | None) -> str:
    """## QRID's protocol: empty where the study does not run the `qrid` suite."""
    if not intervals or SUITE not in (intervals.get("suites") or {}):
        return ""
    sets = list(intervals["suites"][SUITE]["corruptions"])
    models = intervals.get("models", {})
    comparisons = intervals.get("comparisons", [])
    shown = [m for m, f in models.items() if "relative" in f and study.parse_model_name(m).seed is None
             and study.parse_model_name(m).role in study.students(params)]
    rows = [[f"`{m}`", with_interval(models[m].get("P"), "P"),
             *[_cell(_drop(models[m]["relative"].get(s))) for s in sets]] for m in shown]
    parts = ["## QRID's protocol",
             "QRID (arXiv 2508.19600) measures each model's relative drop under each degraded set, "
             "1 − AP(set) / P. Here each drop has its 95% interval (image bootstrap; AP(set) the mean over the "
             "set's severities), every model of the study on the same images:",
             markdown_table(["model", "P", *[f"drop `{s}`" for s in sets]], rows)]
    a = _claim_a(comparisons, models, sets)
    b = _claim_b(comparisons, sets)
    effects = []
    for record in comparisons:
        noisy = (record.get("relative_differences") or {}).get("noisy_low") or {}
        if _static_int8(record) and noisy.get("estimate") is not None:
            effects.append(-100 * noisy["estimate"])
        if record.get("group") == "qrid" and record["comparison"].startswith("degradation-aware calibration"):
            d = record["differences"].get(f"mPC_{SUITE}") or {}
            if d.get("estimate") is not None:
                effects.append(100 * d["estimate"])
    c = _claim_c(comparisons, models, effects)
    reference = "; ".join(f"{arch} {fp:.1f}% against {q:.1f}%" for arch, (fp, q) in QRID_NOISY_LOW.items())
    parts.append("**(a) Does static INT8 lose more than FP32 under noise?** QRID's answer, yes, from one "
                 f"run per cell on COCO val2017 with TensorRT INT8 (drop under `noisy_low`, FP32 against INT8: "
                 f"{reference}). Here, a difference of drops whose interval holds zero is no measurable difference:"
                 + ("\n\n" + "\n".join(f"- {line}" for line in a) if a else
                    " not measured: the study has no W8A8 PTQ model deployed beside its FP32 model, no noise set, "
                    "or no relative AP to compare (P is 0)."))
    parts.append("**(b) Is degradation-aware calibration better than clean calibration?** QRID's answer: no "
                 "consistent gain. Here (dacal against percentile, the same observer on clean images):"
                 + ("\n\n" + "\n".join(f"- {line}" for line in b) if b else
                    " the study does not run both `dacal` and `percentile`."))
    parts.append("**(c) How large is the spread from one calibration draw to the next?** QRID ran each cell "
                 "once; its two calibrations swing single cells by about 5 points. Here, across the repeat "
                 "seeds (`matrix.repeat`, each a new draw of calibration images):"
                 + ("\n\n" + "\n".join(f"- {line}" for line in c) if c else
                    " no PTQ method of the study repeats over seeds."))
    paths = ultralytics_paths(params)
    if paths:
        parts.append(paths)
    return "\n\n".join(parts)
