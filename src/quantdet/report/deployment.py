"""Deployment: every deployable model (our integer ONNX exports of the study seed, the peers')
with its accuracy, size and latency in each runtime, and the two speed questions a
deployment engineer asks: which runtime runs our integer model fastest, and is ours as fast
as the fastest peer's.

Latency comes from the export records (`results/models/<model>.export.json`, written by the
export and peer stages: quantdet.stages.export.time_files). Each job times the FP32 source
and the integer model one after another, each in its own process; a speed-up is the ratio of
those two paired timings, so comparisons across jobs use speed-ups, which the machine's drift
between jobs cancels out of. A timing is the mean of two consecutive repetitions (medians of
`runs` calls) agreeing within 5%: ratios within 5% of each other are not told apart here.
"""
from __future__ import annotations

import statistics

from quantdet import study
from quantdet.report.formatting import markdown_table

TOLERANCE = 0.05   # the latency worker's agreement between repetitions
RUNTIME_NAMES = {"onnxruntime": "onnxruntime", "openvino": "OpenVINO (f32)", "litert": "LiteRT"}


def _timed(exports: dict[str, dict]) -> dict[str, dict]:
    """Export records with latency in at least one runtime, keyed by model."""
    return {m: e for m, e in exports.items() if e.get("latency_by_runtime")}


def _runtimes(timed: dict[str, dict]) -> list[str]:
    found = {r for e in timed.values() for r in e["latency_by_runtime"]}
    return [r for r in ("onnxruntime", "openvino") if r in found] + sorted(found - {"onnxruntime", "openvino"})


def _interval(intervals: dict | None, model: str, metric: str) -> str:
    from quantdet.report.answers import with_interval

    models = (intervals or {}).get("models", {})
    figures = models.get(model + study.ORT_SUFFIX) or models.get(model + study.LITERT_SUFFIX)
    return with_interval(figures.get(metric), metric) if figures else "–"


def deployment_table(exports: dict[str, dict], intervals: dict | None) -> str:
    timed = _timed(exports)
    if not timed:
        return ""
    runtimes = _runtimes(timed)
    order = sorted(timed, key=lambda m: (study.parse_model_name(m).bits_label,
                                         study.parse_model_name(m).stage == "peer", m))
    rows = []
    for model in order:
        e = timed[model]
        name = study.parse_model_name(model)
        size = (e.get("size_bytes") or {}).get("int8_onnx")
        cells = [f"`{model}`", name.bits_label, "peer" if name.stage == "peer" else "quantdet",
                 _interval(intervals, model, "P"), _interval(intervals, model, "mPC"),
                 "–" if size is None else f"{size / 1e6:.2f}"]
        for runtime in runtimes:
            ms = e["latency_by_runtime"].get(runtime, {})
            speedup = (e.get("speedup_by_runtime") or {}).get(runtime)
            cells.append("–" if not ms else f"{ms['int8_onnx']:.1f} ({speedup:.2f}×)")
        rows.append(cells)
    fp32 = {r: [e["latency_by_runtime"][r]["fp32_onnx"] for e in timed.values() if r in e["latency_by_runtime"]]
            for r in runtimes}
    setting = next(iter(timed.values())).get("latency_method", {})
    note = (f"Latency per batch of {setting.get('batch', '?')} images on {setting.get('threads', '?')} threads, "
            "each file in its own process; in brackets the speed-up over the FP32 ONNX model timed in the same job "
            "(LiteRT: over the FP32 model the same tool converted to .tflite). "
            "FP32 in the same jobs: " + "; ".join(
                f"{RUNTIME_NAMES.get(r, r)} {statistics.median(v):.1f} ms (median of {len(v)})" for r, v in fp32.items())
            + ". P and mPC: the model deployed in onnxruntime (a LiteRT peer: in LiteRT), AP points with 95% intervals.")
    if "litert" in runtimes:
        note += (" LiteRT runs the LiteRT peer's models only: quantdet's own integer models are not converted to "
                 "LiteRT, since litert-torch converts graphs quantized by its own PT2E quantizer and carrying "
                 "quantdet's ranges over would mean rebuilding each model as such a graph (not built; docs/peers.md).")
    headers = ["model", "bits", "tool", "P", "mPC", "INT8 MB"] + [f"{RUNTIME_NAMES.get(r, r)} ms" for r in runtimes]
    return ("## Deployment: every deployable model in each runtime\n\n" + note + "\n\n"
            + markdown_table(headers, rows, align_right_from=3))


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}×" if round(low, 2) == round(high, 2) else f"{low:.2f}× to {high:.2f}×"


def fastest_runtime_answers(exports: dict[str, dict]) -> list[str]:
    """Per bit width, which runtime runs our integer models fastest (their own latency, and
    each runtime's speed-up over FP32 at f32 precision)."""
    timed = {m: e for m, e in _timed(exports).items() if study.parse_model_name(m).stage != "peer"}
    runtimes = _runtimes(timed)
    if len(runtimes) < 2:
        return []
    lines = []
    for bits in dict.fromkeys(study.parse_model_name(m).bits_label for m in timed):
        ours = {m: e["latency_by_runtime"] for m, e in timed.items()
                if study.parse_model_name(m).bits_label == bits and set(runtimes) <= set(e["latency_by_runtime"])}
        if not ours:
            continue
        fastest = {m: min(runtimes, key=lambda r: ms[r]["int8_onnx"]) for m, ms in ours.items()}
        counts = {r: sum(1 for f in fastest.values() if f == r) for r in runtimes}
        best = max(runtimes, key=counts.get)
        others = [r for r in runtimes if r != best]
        ratios = {r: [ms[r]["int8_onnx"] / ms[best]["int8_onnx"] for ms in ours.values()] for r in others}
        ties = [m for m, ms in ours.items() if any(abs(ms[r]["int8_onnx"] / ms[best]["int8_onnx"] - 1) <= TOLERANCE
                                                    for r in others)]
        speedups = {r: [exports[m]["speedup_by_runtime"][r] for m in ours] for r in runtimes}
        line = (f"**Which runtime runs our {bits} models fastest?** {RUNTIME_NAMES.get(best, best)}, for {counts[best]} "
                f"of {len(ours)}: " + "; ".join(f"{RUNTIME_NAMES.get(r, r)} takes {_span(v)} its time"
                                                for r, v in ratios.items())
                + ". Speed-up over FP32 in the same runtime: "
                + "; ".join(f"{RUNTIME_NAMES.get(r, r)} {_span(v)}" for r, v in speedups.items()) + ".")
        if ties:
            line += f" Within the timing's 5% tolerance of each other: {', '.join(f'`{m}`' for m in ties)}."
        lines.append(line)
    return lines


def _plain(export: dict) -> bool:
    """Our plain integer exports (no outlier side paths): one graph, whatever the method."""
    return not export.get("outlier_side_paths")


def peer_speed_answers(exports: dict[str, dict]) -> list[str]:
    """Per bit width and runtime: our integer exports against the fastest peer, by speed-up
    over the same FP32 model (each timed beside its FP32 source, so the machine's drift
    between jobs cancels). Our plain exports share one graph whatever the method, so the
    spread of their speed-ups across jobs is the measurement's own noise: the peer is faster
    or slower only beyond that spread."""
    timed = _timed(exports)
    lines = []
    for bits in dict.fromkeys(study.parse_model_name(m).bits_label for m in timed):
        at = {m: e for m, e in timed.items() if study.parse_model_name(m).bits_label == bits}
        peers = {m: e for m, e in at.items() if study.parse_model_name(m).stage == "peer"}
        ours = {m: e for m, e in at.items() if m not in peers}
        if not peers or not ours:
            continue
        parts = []
        for runtime in _runtimes(at):
            p = {m: e["speedup_by_runtime"][runtime] for m, e in peers.items() if runtime in e["speedup_by_runtime"]}
            plain = sorted(e["speedup_by_runtime"][runtime] for m, e in ours.items()
                           if runtime in e["speedup_by_runtime"] and _plain(e))
            if not p or not plain:
                continue
            best = max(p, key=p.get)
            low, high, middle = plain[0], plain[-1], statistics.median(plain)
            if p[best] > high:
                verdict = "the peer is faster"
            elif p[best] < low:
                verdict = "ours are faster"
            else:
                verdict = "no measurable difference"
            parts.append(f"{RUNTIME_NAMES.get(runtime, runtime)}: fastest peer `{best}` {p[best]:.2f}× FP32, our "
                         f"{len(plain)} plain integer exports (one graph, timed in {len(plain)} jobs) {middle:.2f}× "
                         f"(from {low:.2f}× to {high:.2f}×): {verdict}")
        side = {m: e["speedup_by_runtime"] for m, e in ours.items() if not _plain(e)}
        if parts:
            line = f"**Is our {bits} export as fast as the fastest peer?** " + "; ".join(parts) + "."
            if side:
                line += " With FP16 outlier side paths: " + ", ".join(
                    f"`{m}` " + " / ".join(f"{v:.2f}×" for v in s.values()) for m, s in side.items()) + "."
            lines.append(line)
    return lines
