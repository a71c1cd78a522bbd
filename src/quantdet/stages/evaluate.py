"""evaluate: every condition (clean, each corruption at each severity) of one model."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from quantdet import study
from quantdet.io_utils import atomic_directory, read_json, write_json
from quantdet.stages.common import decode_params, log_job, require, set_threads

log = logging.getLogger("quantdet")

def _load_for_evaluation(name: study.ModelName, threads: int):
    """(the model, its detector config): a deployed model carries the config in its metadata."""
    if name.precision:
        return _load_precision(name, threads)
    if name.runtime == "onnxruntime":
        from quantdet.export.runner import OrtDetector

        model = OrtDetector(require(study.onnx_file(name.model)), threads=threads)
        return model, model.detector_config
    if name.runtime == "openvino":
        from quantdet.export.runner import OvDetector

        model = OvDetector(require(study.onnx_file(name.model)), threads=threads)
        return model, model.detector_config
    if name.runtime == "litert":   # a LiteRT peer: its detector config is in its peer record
        from quantdet.export.litert import LiteRTDetector

        record = read_json(require(f"{study.MODELS}/{name.model}.export.json"))
        model = LiteRTDetector(require(study.tflite_file(name.model)), threads=threads,
                               detector_config=record["detector"])
        return model, model.detector_config
    from quantdet.models.io import load_model

    model, payload = load_model(require(study.model_file(name.model)))
    return model, payload["detector"]


def _load_precision(name: study.ModelName, threads: int):
    """A deployment precision, checked again as its precision job did: the runtime ran it."""
    from quantdet.export import precision as prec

    path = require(study.evaluated_file(name))
    if name.runtime == "openvino":
        model = prec.OvPrecisionDetector(path, name.method, threads=threads)
        return model, model.detector_config
    if name.runtime == "onnxruntime":
        from quantdet.export.runner import OrtDetector

        executed = prec.ort_executed(path, threads)
        prec.check_executed(name.method, executed, str(path))
        model = OrtDetector(path, threads=threads)
        model.info = executed | {"precision": name.method}
        return model, model.detector_config
    from quantdet.models.io import load_model

    net, payload = load_model(path)
    model = prec.TorchAutocastDetector(net, name.method)
    return model, payload["detector"]


def evaluate(params: dict, model: str, out: str | None = None) -> dict:
    """Every condition (clean, each corruption at each severity) for one model, in one process:
    the model loads once, and the many small evaluations pay no start-up cost."""
    name = study.parse_model_name(model)
    out = Path(out or study.eval_dir(model))
    cfg = params["evaluate"]
    set_threads(cfg["threads"])
    splits = {c: [require(study.split_dir(c, s)) for s in study.severities_of(c, params)]
              for c in study.conditions(params)}
    if name.precision:
        record = read_json(require(study.precision_file(model)))
        if record.get("not_run"):
            return _not_run(params, name, out, list(splits), record)
    from quantdet.detectors import Decoder, letterbox_of

    net, detector = _load_for_evaluation(name, cfg["threads"])
    letterbox = letterbox_of(detector)
    decode = Decoder(detector, params["models"]["input_size"], **decode_params(params))
    start = time.perf_counter()
    summary = {}
    with atomic_directory(out) as tmp:
        for condition in splits:
            results = _evaluate_severities(params, name, condition, net, decode,
                                           tmp / condition, out / condition, letterbox)
            summary[condition] = {r["severity"]: r["metrics"] for r in results}
    log_job(params, "evaluate", model=model,
             metrics={f"{c}.{s}.{k}": v for c, by_severity in summary.items()
                      for s, metrics in by_severity.items()
                      for k, v in metrics.items() if v is not None and k in ("AP", "AP50")}
             | {"evaluate_seconds": time.perf_counter() - start},
             artifacts=[out / c / "metrics.json" for c in splits])
    return summary


def _not_run(params: dict, name: study.ModelName, out: Path, conditions: list[str], record: dict) -> dict:
    """A deployment precision its precision job found this machine cannot run: each condition's
    metrics.json says so, with the reason, and holds no results (intervals and the report
    leave the model out and say why)."""
    reason = f"{record['precision']} in {record['runtime']} cannot run on {record.get('machine', {}).get('host', 'the machine')}: {record['not_run']}"
    with atomic_directory(out) as tmp:
        for condition in conditions:
            (tmp / condition).mkdir(parents=True, exist_ok=True)
            write_json(tmp / condition / "metrics.json", {"model": name.name, "condition": condition,
                                                          "runtime": name.runtime, "not_run": reason, "results": []})
    log.warning("%s: not evaluated: %s", name.name, reason)
    log_job(params, "evaluate", model=name.name, metrics={"not_run": 1},
            artifacts=[out / c / "metrics.json" for c in conditions])
    return {"not_run": reason}


def _evaluate_severities(params, name, condition, net, decode, tmp: Path, out: Path, letterbox=None) -> list:
    from quantdet.evaluation.evaluate import evaluate_split

    cfg = params["evaluate"]
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    for severity in study.severities_of(condition, params):
        split = require(study.split_dir(condition, severity))
        metrics, detections, timing = evaluate_split(
            net, split, input_size=params["models"]["input_size"], decode=decode,
            batch_size=cfg["batch_size"], letterbox=letterbox)
        det_name = f"detections-s{severity}.json"
        write_json(tmp / det_name, detections, compact=True)
        results.append({"severity": severity, "metrics": metrics,
                        "detections": str(out / det_name), "split": str(split), **timing})
        log.info("%s %s s%d: AP %.3f AP50 %.3f", name.name, condition, severity, metrics["AP"],
                 metrics["AP50"])
    write_json(tmp / "metrics.json", {"model": name.name, "condition": condition,
                                      "runtime": name.runtime, "runtime_info": getattr(net, "info", None),
                                      "results": results})
    return results
