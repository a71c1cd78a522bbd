"""The quantization families' drivers: `ptq`, `qat` and `mimic`. Each loads the FP32 source,
hands the method of the model's name (quantdet.methods) a QuantizeJob, and saves and logs
what comes back. No method is named here: what differs between methods is in their modules."""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantdet import study
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_path, write_json
from quantdet.stages.common import CalibrationSet, image_batches, log_job, require, set_threads
from quantdet.train import distributed

log = logging.getLogger("quantdet")


@dataclass
class QuantizeJob:
    """What a method's hooks see: the params, the model's parsed name, the FP32 source and its
    file's payload, and the calibration images (``calibration()`` opens a fresh pass)."""
    params: dict
    name: study.ModelName
    fp32: object
    payload: dict
    sets: list = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.name.run_seed(self.params)

    @property
    def calibration_split(self) -> str:
        return study.calibration_split(self.name)  # generated images for zero-shot methods

    def calibration(self, degraded: bool = False) -> CalibrationSet:
        """A fresh pass over the calibration set; the model's calibration identity is that of
        the last pass opened."""
        from quantdet.detectors import letterbox_of

        self.sets.append(CalibrationSet(self.params, degraded=degraded, seed=self.seed,
                                        split=self.calibration_split,
                                        letterbox=letterbox_of(self.payload["detector"])))
        return self.sets[-1]

    @staticmethod
    def require(path) -> Path:
        return require(path)


def _open(params: dict, model: str, family: str):
    from quantdet.models.io import load_model

    name = study.parse_model_name(model)
    if name.stage != family:
        raise QuantdetError(f"{model}: not a {family} model (student-{family}-<method>-w<b>a<b>)")
    try:
        method = study.method_of(name)
    except KeyError as e:
        raise QuantdetError(f"{model}: {e.args[0]}") from None
    set_threads(params["train"]["threads"])
    fp32, payload = load_model(require(study.model_file(name.fp32_source)))
    return name, method, QuantizeJob(params, name, fp32, payload)


def ptq(params: dict, model: str, out: str | None = None) -> dict:
    from quantdet.models.io import save_model
    from quantdet.quant.ptq import activation_ranges, observer_kwargs

    name, method, job = _open(params, model, "ptq")
    out = Path(out or study.model_file(name.model))
    method.register_observers()
    result = method.quantize(job)
    qmodel, calibration = result.model, job.sets[-1].info()
    quant = {"weight_bits": name.weight_bits, "act_bits": name.act_bits, "observer": result.observer,
             "observer_kwargs": observer_kwargs(result.observer, params["quant"]["ptq"]),
             "method": name.method, "stage": "ptq", "calibration": calibration,
             "source": study.model_file(name.fp32_source),
             **{k: qmodel.quant_info[k] for k in ("folded_batchnorms", "quantized_layers",
                                                   "activation_quantizers")},
             **result.quant}
    save_model(out, qmodel, kind="quantized", detector=job.payload["detector"],
               classes=job.payload["classes"], quant=quant,
               extra={"stride": job.payload["stride"], "input_size": job.payload["input_size"],
                      "activation_ranges": activation_ranges(qmodel)})
    artifacts = []
    for suffix, payload in result.files.items():  # beside the model (mixed: .bits.json)
        artifacts.append(out.with_suffix(suffix))
        write_json(artifacts[-1], payload)
    log_job(params, "ptq", model=name.model,
            metrics={"calibration_batches": calibration["batches"],
                     "quantized_layers": quant["quantized_layers"], **result.metrics},
            tags={"calibration_fingerprint": calibration["fingerprint"], "bits": name.bits_label,
                  "method": name.method},
            artifacts=artifacts)
    return quant


def qat(params: dict, model: str, out: str | None = None) -> dict:
    from quantdet.quant.qat import prepare_qat, stop_tracking
    from quantdet.train.loop import fit

    name, method, job = _open(params, model, "qat")
    out = Path(out or study.model_file(name.model))
    qat_cfg, ptq_cfg = params["quant"]["qat"], params["quant"]["ptq"]
    recipe = method.recipe_for(params)
    calib = job.calibration()
    qmodel, config = prepare_qat(job.fp32, recipe, name.weight_bits, name.act_bits, calib,
                                 ptq_cfg["calib_batches"], ptq_cfg["percentile"],
                                 qat_cfg["ema_momentum"], outlier=qat_cfg["outlier"])
    training, degradations = method.training(job, recipe)
    start = time.perf_counter()
    with distributed.process_group(), method.extra_loss(job, qmodel) as extra_loss:
        history = fit(qmodel, **training, seed=job.seed,
                      checkpoint_path=Path("results/checkpoints") / f"{name.model}.ckpt",
                      threads=params["train"]["threads"], description=f"qat {name.model}",
                      mixed_precision=False, extra_loss=extra_loss, tf32=params["train"]["tf32"])
    if not distributed.is_main():  # rank 0 writes the model and logs the run
        return {"model": name.model, "rank": distributed.rank(), "history": history}
    stop_tracking(qmodel)
    qmodel.eval()
    quant = {**config, "method": recipe.name, "stage": "qat", "recipe": recipe.description,
             "calibration": calib.info(), "training_degradations": degradations,
             "source": study.model_file(name.fp32_source), **method.quant_info(job)}
    _save_trained(params, "qat", name, out, qmodel, job.payload, quant, history, start,
                  tags={"recipe": recipe.name})
    return quant


def mimic(params: dict, model: str, out: str | None = None) -> dict:
    """Quantization mimic: the student, quantized as FQN (BN folded, percentile ranges tracked
    by EMA), fine-tuned from the FP32 student with the detection loss plus the mimic term to
    the FP32 teacher's features (variant `alone`: detection loss only)."""
    from quantdet.data.dataset import DetectionDataset, SeededSubset, collate_detections
    from quantdet.distill.mimic import MimicTerm, add_adaptation, parse_variant, remove_adaptation
    from quantdet.methods import get_method
    from quantdet.models.io import load_model
    from quantdet.quant.qat import prepare_qat, stop_tracking
    from quantdet.train.loop import fit

    name, method, job = _open(params, model, "mimic")
    cfg, ptq_cfg, seed = params["distill"]["mimic"], params["quant"]["ptq"], params["study"]["seed"]
    try:
        variant = parse_variant(name.method, cfg["lambda"])
    except ValueError as e:
        raise QuantdetError(f"{model}: {e}") from None
    recipe = get_method("qat", "fqn").recipe
    out = Path(out or study.model_file(name.model))
    student, payload = job.fp32, job.payload
    teacher_file = study.model_file("teacher-fp32")
    teacher, teacher_payload = load_model(require(teacher_file))
    from quantdet.detectors import letterbox_of

    letterbox = letterbox_of(payload["detector"])
    calib = CalibrationSet(params, seed=seed, letterbox=letterbox)
    qmodel, config = prepare_qat(student, recipe, name.weight_bits, name.act_bits, calib,
                                 ptq_cfg["calib_batches"], ptq_cfg["percentile"],
                                 params["quant"]["qat"]["ema_momentum"])
    term = None
    if variant.mimic:
        import torch

        torch.manual_seed(seed)  # r's initial weights: the same run gives the same model
        from quantdet import detectors

        add_adaptation(qmodel, detectors.of(payload["detector"]).tap_channels(payload["detector"]),
                       detectors.of(teacher_payload["detector"]).tap_channels(teacher_payload["detector"]))
        term = MimicTerm(qmodel, teacher, variant, step=cfg["step"], roi_size=cfg["roi_size"],
                         roi_topk=cfg["roi_topk"])
        # The teacher runs in FP32: under bf16 autocast two runs of the same job gave different
        # students on this CPU (oneDNN), and a rerun must reproduce its model.
    dataset = DetectionDataset(require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                               augment=True, seed=seed, letterbox=letterbox)
    if cfg["images"] is not None and cfg["images"] < len(dataset):
        dataset = SeededSubset(dataset, cfg["images"], seed)
    start = time.perf_counter()
    with distributed.process_group():
        history = fit(qmodel, dataset, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                      weight_decay=params["train"]["weight_decay"], warmup_iters=cfg["warmup_iters"],
                      seed=seed, checkpoint_path=Path("results/checkpoints") / f"{name.model}.ckpt",
                      threads=params["train"]["threads"], collate_fn=collate_detections,
                      extra_loss=term, description=f"mimic {name.model}", mixed_precision=False,
                      workers=params["train"]["workers"], tf32=params["train"]["tf32"])
    if not distributed.is_main():  # rank 0 writes the model and logs the run
        return {"model": name.model, "rank": distributed.rank(), "history": history}
    if term is not None:
        term.remove()
        remove_adaptation(qmodel)
    stop_tracking(qmodel)
    qmodel.eval()
    quant = {**config, "method": variant.name, "stage": "mimic", "recipe": variant.describe(),
             "mimic": {"lambda": variant.weight, "quantized": variant.quantized,
                       "enabled": variant.mimic, **{k: cfg[k] for k in ("step", "roi_size", "roi_topk")}},
             "calibration": calib.info(),
             "source": study.model_file(name.fp32_source), "teacher": teacher_file}
    _save_trained(params, "mimic", name, out, qmodel, payload, quant, history, start,
                  tags={"variant": variant.name})
    return quant


def _save_trained(params, stage, name, out, qmodel, payload, quant, history, start, tags) -> None:
    """Write a model trained by `qat` or `mimic` (with its history and tracked ranges) and log
    the job, with the last epoch's numbers as metrics."""
    from quantdet.models.io import save_model
    from quantdet.quant.ptq import activation_ranges
    from quantdet.train.device import numerics_tags

    save_model(out, qmodel, kind="quantized", detector=payload["detector"],
               classes=payload["classes"], quant=quant,
               extra={"stride": payload["stride"], "input_size": payload["input_size"],
                      "history": history, "activation_ranges": activation_ranges(qmodel)})
    last = history["epochs"][-1] if history.get("epochs") else {}
    log_job(params, stage, model=name.model,
             metrics={"train_seconds": time.perf_counter() - start,
                      **{k: v for k, v in last.items() if isinstance(v, (int, float))}},
             tags={"calibration_fingerprint": quant["calibration"]["fingerprint"],
                   "bits": name.bits_label, **tags, **numerics_tags(history["numerics"])})


def _peer_weight_type(path, setting: str) -> dict:
    """A peer's int8 weights as our exports store them on this CPU (`export.weight_type`;
    quantdet.export.onnx_export.weight_type): uint8 where onnxruntime's U8S8 kernels saturate,
    so that a peer is not measured on a kernel defect ours avoid. The same values."""
    import json

    import onnx

    from quantdet.export.onnx_export import add_metadata, unsigned_weights, weight_type

    chosen, why = weight_type(setting)
    unsigned = 0
    if chosen == "uint8":
        proto = onnx.load(str(path))
        unsigned = unsigned_weights(proto)
        if unsigned:
            onnx.save(proto, str(path))
    record = {"type": chosen, "why": why, "unsigned": unsigned}
    add_metadata(path, {"quantdet.weight_type": json.dumps(record)})
    return record


def _peer_inputs(params: dict, letterbox):
    """What every peer sees: the calibration set (the same batches and fingerprint as our PTQ),
    its first quant.ptq.calib_batches batches, and the batch of val images it is timed on."""
    calib = CalibrationSet(params, seed=params["study"]["seed"], letterbox=letterbox)
    batches = itertools.islice(calib, params["quant"]["ptq"]["calib_batches"])
    images = next(iter(image_batches(f"{study.PREPARED}/val", params["models"]["input_size"],
                                     params["export"]["latency_batch"], letterbox)))
    return calib, batches, images.numpy().astype("float32")


def peer(params: dict, model: str, out: str | None = None) -> dict:
    """Another tool's quantizer (a registered peer method): the FP32 ONNX model quantized on
    the study's calibration images (the same batches and fingerprint as our PTQ), written with
    our metadata so that `evaluate` runs it like our exports."""
    import onnx

    from quantdet.export.onnx_export import add_metadata
    from quantdet.stages.export import time_files

    name = study.parse_model_name(model)
    if name.stage != "peer":
        raise QuantdetError(f"{model}: not a peer model (student-peer-<method>-w<b>a<b>)")
    try:
        method = study.method_of(name)
    except KeyError as e:
        raise QuantdetError(f"{model}: {e.args[0]}") from None
    if name.weight_bits not in method.bits or name.act_bits != name.weight_bits:
        raise QuantdetError(f"{model}: {method.name} quantizes to W{method.bits[0]}A{method.bits[0]} only")
    set_threads(params["export"]["threads"])
    if method.runtime == "litert":
        return _litert_peer(params, name, method, Path(out or study.tflite_file(name.model)))
    fp32_onnx = require(study.onnx_file(name.fp32_source))
    out = Path(out or study.onnx_file(name.model))
    from quantdet.detectors import letterbox_of
    from quantdet.export.runner import detector_config

    metadata = {p.key: p.value for p in onnx.load(str(fp32_onnx)).metadata_props}
    letterbox = letterbox_of(detector_config(metadata))   # the FP32 model's family's
    calib, batches, images = _peer_inputs(params, letterbox)
    start = time.perf_counter()
    with atomic_path(out, checksum=True) as tmp:   # <out>.sha256: checked where it is read
        extra = ({"fp32_model": require(study.model_file(name.fp32_source))}
                 if method.source == "torch" else {})
        settings = method.quantize_onnx(fp32_onnx, tmp, batches, params, **extra)
        settings["weight_type"] = _peer_weight_type(tmp, params["export"].get("weight_type", "auto"))
        # a tool that sets its ranges on its own data (method.calibration: why) reads no batch
        calibration = calib.info() if method.calibration is None else {"fingerprint": "none",
                                                                        "not_read": method.calibration}
        source = {p.key: p.value for p in onnx.load(str(fp32_onnx)).metadata_props}
        add_metadata(tmp, {**source, "quantdet.model": name.model, "quantdet.bits": name.bits_label,
                           "quantdet.method": name.method,
                           "quantdet.calibration_fingerprint": calibration["fingerprint"]})
    seconds = time.perf_counter() - start
    summary = {"model": name.model, "method": name.method, "tool": method.description,
               "settings": settings, "calibration": calibration, "source": str(fp32_onnx),
               "seconds": round(seconds, 1), "fp32_onnx": str(fp32_onnx), "int8_onnx": str(out),
               "size_bytes": {"fp32_onnx": fp32_onnx.stat().st_size, "int8_onnx": out.stat().st_size}}
    # timed as our exports are (the export stage's time_files): the same batch of val images
    exp_cfg = params["export"]
    summary.update(time_files({"fp32_onnx": fp32_onnx, "int8_onnx": out}, exp_cfg, images))
    from quantdet.export.divergence import layer_divergence

    summary["layer_divergence"] = layer_divergence(fp32_onnx, out, images, threads=exp_cfg["threads"])
    report_path = out.with_suffix(".export.json")
    write_json(report_path, summary)
    log_job(params, "peer", model=name.model,
            metrics={"size_bytes": summary["size_bytes"], "seconds": seconds,
                     "latency_ms": summary["latency_by_runtime"], "speedup": summary["speedup_by_runtime"]},
            tags={"calibration_fingerprint": calibration["fingerprint"], "bits": name.bits_label,
                  "method": name.method}, artifacts=[report_path], onnx_models={name.model: out})
    return summary


def _litert_peer(params: dict, name: study.ModelName, method, out: Path) -> dict:
    """A peer deploying to LiteRT (methods/litert_peer.py): the FP32 PyTorch model quantized and
    converted by the tool to a .tflite model, on the same calibration batches as the other peers;
    timed against the FP32 model the same tool converts, both in LiteRT, each in its own
    process; the record keeps the latency keys of the export records (fp32_onnx / int8_onnx stand
    for the FP32 and the INT8 model files, here .tflite) and the detector config `evaluate` reads."""
    import tempfile

    from quantdet.detectors import letterbox_of
    from quantdet.export import litert
    from quantdet.models.io import read_model_file
    from quantdet.stages.export import time_files

    fp32_model = require(study.model_file(name.fp32_source))
    detector = read_model_file(fp32_model)["detector"]
    calib, batches, images = _peer_inputs(params, letterbox_of(detector))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir, atomic_path(out, checksum=True) as tmp:
        fp32_tflite = Path(tmpdir) / f"{name.fp32_source}.tflite"
        settings = method.quantize_tflite(fp32_model, tmp, fp32_tflite, batches, params)
        seconds = time.perf_counter() - start
        calibration = calib.info()
        ops = {"fp32": litert.op_summary(fp32_tflite), "int8": litert.op_summary(tmp)}
        shapes = {key: [o.shape for o in litert.LiteRTDetector(path).run_numpy(images[:1])]
                  for key, path in (("fp32", fp32_tflite), ("int8", tmp))}
        if shapes["fp32"] != shapes["int8"]:   # never evaluate outputs the decoder would misread
            raise QuantdetError(f"{out}: LiteRT's INT8 model returns outputs of shapes {shapes['int8']}, "
                                f"its FP32 conversion {shapes['fp32']}")
        sizes = {"fp32_onnx": fp32_tflite.stat().st_size, "int8_onnx": tmp.stat().st_size}
        latency = time_files({"fp32_onnx": fp32_tflite, "int8_onnx": tmp}, params["export"], images,
                             runtimes=["litert"])
    summary = {"model": name.model, "method": name.method, "tool": method.description,
               "runtime": "litert", "settings": settings, "calibration": calibration,
               "source": str(fp32_model), "fp32_model": str(fp32_model), "int8_tflite": str(out),
               "detector": detector, "operators": ops, "seconds": round(seconds, 1),
               "files": {"fp32_onnx": "the FP32 model converted by the same tool (.tflite, not kept)",
                         "int8_onnx": str(out)},
               "size_bytes": sizes, **latency}
    report_path = out.parent / f"{name.model}.export.json"
    write_json(report_path, summary)
    log_job(params, "peer", model=name.model,
            metrics={"size_bytes": sizes, "seconds": seconds, "latency_ms": latency["latency_by_runtime"],
                     "speedup": latency["speedup_by_runtime"]},
            tags={"calibration_fingerprint": calibration["fingerprint"], "bits": name.bits_label,
                  "method": name.method, "runtime": "litert"}, artifacts=[report_path])
    return summary
