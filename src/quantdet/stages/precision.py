"""precision: one FP32 detector at a deployment precision in one runtime (matrix.precisions).

Converts where the runtime runs its own file (onnxruntime: float16, quantize_dynamic), checks
what the runtime actually ran (quantdet.export.precision: a float32 fallback is refused),
compares its outputs and detections with the FP32 PyTorch model's on val images, and times it
against the FP32 model in the same runtime, each in its own process (quantdet.export.latency).
The evaluate job then measures it on every condition."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from quantdet import study
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_path, write_json
from quantdet.stages.common import decode_params, image_batches, log_job, require, set_threads

log = logging.getLogger(__name__)

# the latency runtime (quantdet.export.latency) of FP32 and of each precision, per runtime
LATENCY = {"onnxruntime": ("onnxruntime", {"fp16": "onnxruntime", "int8_dynamic": "onnxruntime"}),
           "openvino": ("openvino", {"fp16": "openvino-f16", "bf16": "openvino-bf16"}),
           "torch": ("torch", {"bf16": "torch-bf16"})}


def precision(params: dict, model: str, out: str | None = None) -> dict:
    import numpy as np

    from quantdet import detectors
    from quantdet.export import precision as prec
    from quantdet.export.fidelity import batch_outputs, detection_agreement, output_agreement
    from quantdet.export.runner import OrtDetector
    from quantdet.models.io import load_model

    name = study.parse_model_name(model)
    if not name.precision:
        raise QuantdetError(f"{model}: not a deployment-precision model (e.g. student-fp16-ov)")
    out = Path(out or study.precision_file(model))
    exp_cfg = params["export"]
    set_threads(exp_cfg["threads"])
    reason = prec.probe(name.method, name.runtime)
    if reason and name.runtime == "onnxruntime":
        raise QuantdetError(f"{model}: {name.method} in {name.runtime} cannot run on this machine: {reason}")
    if reason:   # the study goes on; its evaluation and report say "not run" and why
        return _not_run(params, model, name, out, reason)
    fp32_onnx = require(study.onnx_file(name.fp32_source))
    fp32_file = require(study.model_file(name.fp32_source))
    torch_model, payload = load_model(fp32_file)
    torch_model.eval()
    family = detectors.of(payload["detector"])
    images = next(iter(image_batches(f"{study.PREPARED}/val", payload["input_size"], 64, family.letterbox)))
    record = {"model": model, "precision": name.method, "label": prec.label(name.method),
              "runtime": name.runtime, "fp32_source": name.fp32_source, "fp32_onnx": str(fp32_onnx)}
    converted = Path(study.onnx_file(name.model)) if name.runtime == "onnxruntime" else None
    # the onnxruntime model appears at its path only once it was checked and measured
    with atomic_path(converted, checksum=True) if converted else contextlib.nullcontext() as tmp:
        if converted is not None:
            record["conversion"] = prec.convert(fp32_onnx, name.method, tmp)
            executed = prec.ort_executed(tmp, exp_cfg["threads"])
            prec.check_executed(name.method, executed, model)
            runner = OrtDetector(tmp, threads=exp_cfg["threads"])
            runner.info = executed
            timed = {"fp32": fp32_onnx, name.method: Path(tmp)}
        elif name.runtime == "openvino":
            runner = prec.OvPrecisionDetector(fp32_onnx, name.method, threads=exp_cfg["threads"])
            timed = {"fp32": fp32_onnx, name.method: fp32_onnx}
        else:
            runner = prec.TorchAutocastDetector(torch_model, name.method)
            runner.check(images)
            timed = {"fp32": fp32_file, name.method: fp32_file}
        record["executed"] = runner.info
        decode = detectors.Decoder(payload["detector"], payload["input_size"], **decode_params(params))
        outputs = batch_outputs(torch_model, runner, images)
        agreement = output_agreement(torch_model, runner, images, 8, outputs=outputs,
                                     names=family.output_names(payload["detector"]))
        agreement["detections_match_iou50"] = detection_agreement(torch_model, runner, images, decode,
                                                                  outputs=outputs)
        agreement["unit"] = "quant_step: one step of an 8-bit quantizer over each output's FP32 range"
        record["agreement_with_fp32"] = agreement
        record.update(_latency(timed, name, exp_cfg, images[: exp_cfg["latency_batch"]].numpy().astype(np.float32)))
        if converted is not None:
            record["onnx"] = str(converted)
            record["size_bytes"] = {"fp32_onnx": fp32_onnx.stat().st_size, "onnx": Path(tmp).stat().st_size}
    write_json(out, record)
    log.info("%s: %s ran %s; detections match FP32 %.3f; %.2fx FP32 in %s", model, name.runtime,
             record["executed"].get("convolutions_by_precision"), agreement["detections_match_iou50"],
             record["speedup_vs_fp32"] or float("nan"), name.runtime)
    log_job(params, "precision", model=model,
            metrics={"detections_match": agreement["detections_match_iou50"],
                     **({"latency_ms": record["latency_ms"][name.method], "speedup": record["speedup_vs_fp32"]}
                        if record["speedup_vs_fp32"] else {})},
            artifacts=[out])
    return record


def _not_run(params: dict, model: str, name: study.ModelName, out: Path, reason: str) -> dict:
    """The record of a precision this machine's runtime cannot run (asked of a one-convolution
    model, `quantdet.export.precision.probe`): no fallback to another precision is measured in
    its place; the evaluate job and the report say it was not run, and why. The machine is
    the one that ran this job (on a cluster: the compute node, not the node that planned it)."""
    import platform

    from quantdet.environment import _cpuinfo

    cpu = _cpuinfo()
    record = {"model": model, "precision": name.method, "runtime": name.runtime,
              "fp32_source": name.fp32_source, "not_run": reason,
              "machine": {"host": platform.node(), "cpu": cpu["model"],
                          "cpu_features": [f for f, present in cpu["features"].items() if present]}}
    write_json(out, record)
    log.warning("%s: not run: %s in %s cannot run on this machine: %s", model, name.method, name.runtime, reason)
    log_job(params, "precision", model=model, metrics={"not_run": 1}, artifacts=[out])
    return record


def _latency(files: dict, name: study.ModelName, exp_cfg: dict, images) -> dict:
    """FP32 and the precision, each in its own process, in the runtime (and the hint) they run."""
    from quantdet.export.latency import measure

    fp32_runtime, by_precision = LATENCY[name.runtime]
    runtimes = {"fp32": fp32_runtime, name.method: by_precision[name.method]}
    settings = {"batch": int(images.shape[0]), "threads": exp_cfg["threads"], "runs": exp_cfg["latency_runs"]}
    records = {key: measure(path, runtimes[key], images=images, **settings) for key, path in files.items()}
    latency = {key: r["latency_ms"] for key, r in records.items()}
    return {"latency_ms": {**latency, **settings},
            "speedup_vs_fp32": round(latency["fp32"] / latency[name.method], 3) if latency[name.method] else None,
            "latency_method": {"process_per_model": True, **settings,
                               "runtimes": {key: {k: r.get(k) for k in ("runtime", "precision_hint", "version",
                                                                        "repetition_medians_ms", "converged")}
                                            for key, r in records.items()}}}
