"""export: a model to ONNX (QDQ for quantized models), with its latency against the FP32 ONNX
model, its method's export variants, and simulated-vs-deployed agreement.

Latency is measured cleanly (quantdet.export.latency): each ONNX file is timed in its own
process, one after another, on the same batch, threads and runs."""
from __future__ import annotations

import logging
from pathlib import Path

from quantdet import study
from quantdet.config import params_hash, select
from quantdet.errors import QuantdetError
from quantdet.io_utils import write_json
from quantdet.stages.common import decode_params, image_batches, log_job, require, set_threads

log = logging.getLogger(__name__)


def _onnx_metadata(name, payload, params) -> dict:
    quant = payload.get("quant") or {}
    import json

    meta = {"quantdet.model": name.model, "quantdet.stride": payload["stride"],
            "quantdet.detector": json.dumps(payload["detector"], sort_keys=True),
            "quantdet.input_size": payload["input_size"],
            "quantdet.category_ids": ",".join(map(str, payload["classes"]["category_ids"])),
            "quantdet.class_names": ",".join(payload["classes"]["names"]),
            "quantdet.params_hash": params_hash(select(params, study.job_reads("export", model=name.model)))}
    if quant:
        meta.update({"quantdet.bits": name.bits_label, "quantdet.method": quant["method"],
                     "quantdet.calibration_fingerprint": quant["calibration"]["fingerprint"]})
    return meta


def export(params: dict, model: str, out: str | None = None) -> dict:
    import numpy as np
    import torch

    from quantdet.export.fidelity import batch_outputs, detection_agreement, output_agreement
    from quantdet.export.divergence import layer_divergence
    from quantdet.export.onnx_export import export_onnx
    from quantdet.export.runner import OrtDetector
    from quantdet.models.io import load_model

    name = study.parse_model_name(model)
    out = Path(out or study.onnx_file(name.model))
    exp_cfg = params["export"]
    set_threads(exp_cfg["threads"])
    torch_model, payload = load_model(require(study.model_file(name.model)))
    from quantdet import detectors

    family = detectors.of(payload["detector"])
    graph = export_onnx(torch_model, out, payload["input_size"], exp_cfg["opset"],
                        metadata=_onnx_metadata(name, payload, params),
                        output_names=family.output_names(payload["detector"]), weights=exp_cfg.get("weight_type", "auto"))
    report = {"model": name.model, "onnx": str(out), "size_bytes": {"onnx": out.stat().st_size},
              "graph": graph}
    onnx_models = {name.model: out}
    if name.quantized:
        fp32_onnx = require(study.onnx_file(name.fp32_source))
        batches = image_batches(f"{study.PREPARED}/val", payload["input_size"], 64, family.letterbox)
        images = next(iter(batches))
        int8 = OrtDetector(out, threads=exp_cfg["threads"])
        latency_input = images[: exp_cfg["latency_batch"]].numpy().astype(np.float32)
        files = {"fp32_onnx": fp32_onnx, "int8_onnx": out}
        method = study.method_of(name)
        with method.export_variants(torch_model, out, payload, exp_cfg) as variants:
            for key, variant in (variants or {}).items():  # e.g. outlier-aware: side-path cost
                files[f"int8_onnx_{key}"] = variant["path"]
            # a repeat seed's model runs the same graph as the study seed's: not timed again
            timed = study.export_timed(name)
            timing = time_files(files, exp_cfg, latency_input) if timed else None
        if variants and timed:
            report.update(method.export_summary(variants, timing["latency_ms"], graph, out))
        decode = detectors.Decoder(payload["detector"], payload["input_size"], **decode_params(params))
        outputs = batch_outputs(torch_model, int8, images)
        agreement = output_agreement(torch_model, int8, images, name.act_bits, outputs=outputs)
        agreement["detections_match_iou50"] = detection_agreement(
            torch_model, int8, images, decode, outputs=outputs)
        report.update({
            "fp32_onnx": str(fp32_onnx), "int8_onnx": str(out),
            "size_bytes": {"fp32_onnx": fp32_onnx.stat().st_size, "int8_onnx": out.stat().st_size},
            "agreement": agreement,
            "calibration": payload["quant"]["calibration"],
            # where it departs from FP32, layer by layer: what the report shows for a collapsed model
            "layer_divergence": layer_divergence(fp32_onnx, out, images[:8].numpy(), threads=exp_cfg["threads"]),
        })
        # None for a repeat seed: the study seed's model has the figures
        report.update(timing or {"latency_ms": None})
    report_path = out.with_suffix(".export.json")
    write_json(report_path, report)
    metrics = {"size_bytes": report["size_bytes"]}
    if name.quantized:
        metrics.update(detections_match=report["agreement"]["detections_match_iou50"])
        if report["latency_ms"]:
            metrics.update(latency_ms=report["latency_by_runtime"], speedup=report["speedup_by_runtime"])
    log_job(params, "export", model=name.model, metrics=metrics, artifacts=[report_path],
             onnx_models=onnx_models)
    return report


def time_files(files: dict, exp_cfg: dict, images, runtimes=None) -> dict:
    """Latency of FP32 and integer ONNX files (``files``: {"fp32_onnx": path, "int8_onnx": path,
    ...}) in each runtime of export.latency_runtimes, each file in its own process, one after
    another (quantdet.export.latency): sessions interleaved in one process disturb each other,
    their thread pools spinning between runs. Returns the export record's latency fields;
    ``latency_ms`` and ``speedup_int8_vs_fp32`` are onnxruntime's where it was timed. `runtimes`:
    others than export.latency_runtimes (a LiteRT peer's .tflite files: ["litert"])."""
    from quantdet.export.latency import measure

    settings = {"batch": int(images.shape[0]), "threads": exp_cfg["threads"], "runs": exp_cfg["latency_runs"]}
    records, failed = {}, {}
    for runtime in runtimes or exp_cfg["latency_runtimes"]:
        try:
            records[runtime] = {key: measure(path, runtime, images=images, **settings) for key, path in files.items()}
        except RuntimeError as err:   # a runtime that cannot run a file: recorded, the others timed
            failed[runtime] = str(err).strip().splitlines()[-1][:500]
            log.warning("latency in %s not measured: %s", runtime, failed[runtime])
    if not records:
        raise QuantdetError("latency not measured in any of export.latency_runtimes: "
                            + "; ".join(f"{r}: {e}" for r, e in failed.items()))
    by_runtime = {runtime: {key: r["latency_ms"] for key, r in timed.items()} for runtime, timed in records.items()}
    speedup = {runtime: round(ms["fp32_onnx"] / ms["int8_onnx"], 3) for runtime, ms in by_runtime.items()}
    primary = "onnxruntime" if "onnxruntime" in by_runtime else next(iter(by_runtime))
    return {
        "latency_ms": {**by_runtime[primary], **settings, "runtime": primary},
        "speedup_int8_vs_fp32": speedup[primary],
        "latency_by_runtime": by_runtime, "speedup_by_runtime": speedup,
        "latency_method": {"process_per_model": True, **settings, "failed": failed,
                           "runtimes": {runtime: {key: {k: r[k] for k in ("repetition_medians_ms", "converged",
                                                                           "version", "precision_hint") if k in r}
                                                  for key, r in timed.items()}
                                        for runtime, timed in records.items()}},
    }
