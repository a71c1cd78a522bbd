"""The stages of a study, one function each. `quantdet <stage>` (cli.py) calls these; the
Snakefile and dvc.yaml call `quantdet <stage>`. Each returns a summary and logs its MLflow run."""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from quantdet import study, tracking
from quantdet.config import params_hash, select
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_directory, read_json, write_json

log = logging.getLogger("quantdet")


def _log_job(params, stage, model=None, role="student", generator=None, **kwargs):
    read = select(params, study.stage_params(stage, role, model=model, generator=generator))
    return tracking.log_job(params, stage=stage, model=model, params_read=read,
                            params_hash=params_hash(read), **kwargs)


def _set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def _require(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise QuantdetError(f"{path}: missing input (run the stage that makes it first)")
    return path


# ---------------------------------------------------------------------------- data
def prepare(params: dict, out: str = study.PREPARED) -> dict:
    from quantdet.data.prepare import prepare_dataset

    summary = prepare_dataset(params, out)
    _log_job(params, "prepare", metrics={"num_" + k: v for k, v in _split_counts(summary).items()},
             artifacts=[Path(out) / "summary.json"])
    return summary


def _split_counts(summary: dict) -> dict:
    counts = {}
    for split in ("train", "val", "calib"):
        info = summary.get("splits", {}).get(split, summary.get(split))
        if isinstance(info, dict) and "images" in info:
            counts[f"{split}_images"] = info["images"]
    return counts


def corrupt(params: dict, corruption: str, severity: int, out: str | None = None) -> dict:
    from quantdet.corruptions import corrupt_split

    out = out or study.split_dir(corruption, severity)
    summary = corrupt_split(_require(f"{study.PREPARED}/val"), corruption, severity,
                            params["corruptions"]["seed"], out)
    _log_job(params, "corrupt", model=f"{corruption}-{severity}",
             tags={"corruption": corruption, "severity": severity})
    return summary


# ---------------------------------------------------------------------------- training
def detector_config(params: dict, role: str, num_classes: int) -> dict:
    cfg = params["models"][role]
    return {"backbone": cfg["backbone"], "num_classes": num_classes,
            "fpn_channels": cfg["fpn_channels"], "head_channels": cfg["head_channels"],
            "pretrained": cfg["pretrained"]}


def use_mixed_precision(setting) -> bool:
    import torch

    if setting != "auto":
        return bool(setting)
    if torch.cuda.is_available():
        return True
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def pretrain(params: dict, role: str, out: str | None = None) -> dict:
    from quantdet.data.dataset import DetectionDataset, collate_detections
    from quantdet.models import build_detector
    from quantdet.models.io import save_model
    from quantdet.train.loop import fit

    out = Path(out or study.model_file(f"{role}-fp32"))
    train_cfg, model_cfg = params["train"], params["models"][role]
    _set_threads(train_cfg["threads"])
    dataset = DetectionDataset(_require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                               augment=True, seed=params["study"]["seed"])
    detector = detector_config(params, role, len(dataset.category_ids))
    model = build_detector(**detector)
    checkpoint = Path("results/checkpoints") / f"{role}-fp32.ckpt"
    start = time.perf_counter()
    history = fit(model, dataset, epochs=model_cfg.get("epochs", train_cfg["epochs"]),
                  batch_size=train_cfg["batch_size"], lr=model_cfg.get("lr", train_cfg["lr"]),
                  weight_decay=train_cfg["weight_decay"], warmup_iters=train_cfg["warmup_iters"],
                  seed=params["study"]["seed"], checkpoint_path=checkpoint,
                  threads=train_cfg["threads"], collate_fn=collate_detections,
                  description=f"pretrain {role}",
                  mixed_precision=use_mixed_precision(train_cfg["mixed_precision"]))
    seconds = time.perf_counter() - start
    classes = {"category_ids": list(dataset.category_ids), "names": list(dataset.class_names)}
    save_model(out, model, kind="fp32", detector=detector, classes=classes,
               extra={"history": history, "stride": model.stride,
                      "input_size": params["models"]["input_size"]})
    summary = {"model": out.stem, "seconds": round(seconds, 1), "history": history}
    write_json(out.with_suffix(".train.json"), summary)
    last = history["epochs"][-1] if history.get("epochs") else {}
    _log_job(params, "pretrain", model=out.stem, role=role,
             metrics={"train_seconds": seconds, **{k: v for k, v in last.items()
                                                   if isinstance(v, (int, float))}},
             artifacts=[out.with_suffix(".train.json")])
    return summary


# ---------------------------------------------------------------------------- quantization
def split_fingerprint(split: str | Path) -> str:
    """Hash of a split's annotations and image bytes: the identity of a calibration set."""
    split = Path(split)
    h = hashlib.sha256((split / "annotations.json").read_bytes())
    for image in sorted((split / "images").iterdir()):
        h.update(image.name.encode())
        h.update(image.read_bytes())
    return h.hexdigest()[:16]


def _image_batches(split: str | Path, input_size: int, batch_size: int):
    from torch.utils.data import DataLoader

    from quantdet.data.dataset import DetectionDataset, collate_detections

    dataset = DetectionDataset(_require(split), input_size, augment=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detections)
    return (images for images, _, _ in loader)


def ptq(params: dict, model: str, out: str | None = None) -> dict:
    from quantdet.models.io import load_model, save_model
    from quantdet.quant.ptq import PTQ_METHODS, activation_ranges, post_training_quantize

    name = study.parse_model_name(model)
    out = Path(out or study.model_file(name.model))
    ptq_cfg = params["quant"]["ptq"]
    _set_threads(params["train"]["threads"])
    fp32, payload = load_model(_require(study.model_file(name.fp32_source)))
    calib = study.calibration_split(name)  # generated images for zero-shot methods
    # zero-shot methods name the data; quant.zeroshot.observer names how ranges are taken
    method = params["quant"]["zeroshot"]["observer"] if study.is_zero_shot(name) else name.method
    batches = _image_batches(calib, params["models"]["input_size"], ptq_cfg["calib_batch_size"])
    qmodel = post_training_quantize(fp32, batches, method, name.weight_bits, name.act_bits, ptq_cfg)
    observer, keys = PTQ_METHODS[method]
    calibration = {"split": calib, "fingerprint": split_fingerprint(calib),
                   "batches": qmodel.quant_info["calibration_batches"],
                   "batch_size": ptq_cfg["calib_batch_size"]}
    quant = {"weight_bits": name.weight_bits, "act_bits": name.act_bits, "observer": observer,
             "observer_kwargs": {k: ptq_cfg[k] for k in keys}, "method": name.method,
             "stage": "ptq", "calibration": calibration, "source": study.model_file(name.fp32_source),
             **{k: qmodel.quant_info[k] for k in ("folded_batchnorms", "quantized_layers",
                                                   "activation_quantizers")}}
    save_model(out, qmodel, kind="quantized", detector=payload["detector"],
               classes=payload["classes"], quant=quant,
               extra={"stride": payload["stride"], "input_size": payload["input_size"],
                      "activation_ranges": activation_ranges(qmodel)})
    _log_job(params, "ptq", model=name.model,
             metrics={"calibration_batches": calibration["batches"],
                      "quantized_layers": quant["quantized_layers"]},
             tags={"calibration_fingerprint": calibration["fingerprint"], "bits": name.bits_label})
    return quant


def qat(params: dict, model: str, out: str | None = None) -> dict:
    from quantdet.data.dataset import DetectionDataset, collate_detections
    from quantdet.data.degraded import DegradedDataset
    from quantdet.models.io import load_model, save_model
    from quantdet.quant.ptq import activation_ranges
    from quantdet.quant.qat import get_recipe, prepare_qat, stop_tracking
    from quantdet.train.loop import fit
    from quantdet.zeroshot.ait import ait_recipe

    name = study.parse_model_name(model)
    zero_shot = study.is_zero_shot(name)
    recipe = ait_recipe(params["quant"]["zeroshot"]["observer"]) if zero_shot else get_recipe(name.method)
    out = Path(out or study.model_file(name.model))
    qat_cfg, ptq_cfg, seed = params["quant"]["qat"], params["quant"]["ptq"], params["study"]["seed"]
    _set_threads(params["train"]["threads"])
    fp32, payload = load_model(_require(study.model_file(name.fp32_source)))
    calib = study.calibration_split(name)  # generated images for AIT
    batches = _image_batches(calib, params["models"]["input_size"], ptq_cfg["calib_batch_size"])
    qmodel, config = prepare_qat(fp32, recipe, name.weight_bits, name.act_bits, batches,
                                 ptq_cfg["calib_batches"], ptq_cfg["percentile"],
                                 qat_cfg["ema_momentum"])
    degradations = None
    if zero_shot:
        training = _ait_training(params, teacher=fp32, generated=calib)
    else:
        dataset = DetectionDataset(_require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                                   augment=True, seed=seed)
        if recipe.degraded_batches:
            d = qat_cfg["degradations"]
            dataset = DegradedDataset(dataset, d["names"], d["p"], d["severities"], seed)
            degradations = dataset.identity()
        training = {"dataset": dataset, "epochs": qat_cfg["epochs"], "batch_size": qat_cfg["batch_size"],
                    "lr": qat_cfg["lr"], "weight_decay": params["train"]["weight_decay"],
                    "warmup_iters": qat_cfg["warmup_iters"], "collate_fn": collate_detections}
    start = time.perf_counter()
    history = fit(qmodel, **training, seed=seed,
                  checkpoint_path=Path("results/checkpoints") / f"{name.model}.ckpt",
                  threads=params["train"]["threads"], description=f"qat {name.model}",
                  mixed_precision=False)
    stop_tracking(qmodel)
    qmodel.eval()
    quant = {**config, "method": recipe.name, "stage": "qat", "recipe": recipe.description,
             "calibration": {"split": calib, "fingerprint": split_fingerprint(calib),
                             "batches": config["calibration_batches"],
                             "batch_size": ptq_cfg["calib_batch_size"]},
             "training_degradations": degradations, "source": study.model_file(name.fp32_source)}
    if zero_shot:
        quant["training_data"] = {"generator": f"{calib}/generator.pt",
                                  "ait": params["quant"]["zeroshot"]["ait"]}
    save_model(out, qmodel, kind="quantized", detector=payload["detector"],
               classes=payload["classes"], quant=quant,
               extra={"stride": payload["stride"], "input_size": payload["input_size"],
                      "history": history, "activation_ranges": activation_ranges(qmodel)})
    last = history["epochs"][-1] if history.get("epochs") else {}
    _log_job(params, "qat", model=name.model,
             metrics={"train_seconds": time.perf_counter() - start,
                      **{k: v for k, v in last.items() if isinstance(v, (int, float))}},
             tags={"calibration_fingerprint": quant["calibration"]["fingerprint"],
                   "bits": name.bits_label, "recipe": recipe.name})
    return quant


def _ait_training(params: dict, teacher, generated: str) -> dict:
    """`fit` arguments for AIT: fresh GDFQ generator samples labelled by the FP32 model, the
    KL loss, SGD (no weight decay: the inflation predicts the step exactly) and inflation."""
    from quantdet.zeroshot.ait import GeneratedBatches, GradientInflation, distillation_loss
    from quantdet.zeroshot.generator import load_generator

    cfg = params["quant"]["zeroshot"]["ait"]
    generator = load_generator(_require(Path(generated) / "generator.pt"))
    dataset = GeneratedBatches(generator, teacher, cfg["images_per_epoch"], params["study"]["seed"])
    total_iters = cfg["epochs"] * max(1, cfg["images_per_epoch"] // cfg["batch_size"])
    inflation = GradientInflation(total_iters, cfg["rho_start"], cfg["rho_end"], cfg["kappa_max"],
                                  cfg["kappa_warmup_iters"])
    return {"dataset": dataset, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
            "lr": cfg["lr"], "weight_decay": 0.0, "warmup_iters": cfg["warmup_iters"],
            "loss_fn": distillation_loss, "collate_fn": dataset.collate, "optimizer": "sgd",
            "momentum": cfg["momentum"], "after_backward": inflation}


# ---------------------------------------------------------------------------- zero-shot data
def zeroshot_data(params: dict, generator: str, out: str | None = None) -> dict:
    """Generate a calibration set from the FP32 student alone (ZeroQ's setting: the model is
    calibrated on data made from itself); the real training images are never read. Real
    validation images are read only to draw them beside the generated ones in grid.png."""
    import numpy as np
    import torch

    from quantdet.models.io import load_model
    from quantdet.zeroshot.synthetic import image_grid, to_uint8, write_generated_split

    if generator not in study.GENERATORS:
        raise QuantdetError(f"unknown generator {generator!r}; known: {', '.join(study.GENERATORS)}")
    out = Path(out or study.synthetic_dir(generator))
    cfg, seed = params["quant"]["zeroshot"][generator], params["study"]["seed"]
    size = params["models"]["input_size"]
    _set_threads(params["train"]["threads"])
    source = study.model_file("student-fp32")
    model, payload = load_model(_require(source))
    start = time.perf_counter()
    labels, trained = None, None
    if generator == "zeroq":
        from quantdet.zeroshot.distilled import distill_images

        images, history = distill_images(model, cfg["images"], size, batch_size=cfg["batch_size"],
                                         steps=cfg["steps"], lr=cfg["lr"], seed=seed)
        metrics = {"bns_first": float(np.mean(history["first_loss"])),
                   "bns_last": float(np.mean(history["last_loss"]))}
    else:
        from quantdet.zeroshot.generator import sample_inputs, train_generator

        trained, history = train_generator(
            model, len(payload["classes"]["category_ids"]), size, iterations=cfg["iterations"],
            batch_size=cfg["batch_size"], lr=cfg["lr"], betas=cfg["betas"],
            bns_weight=cfg["bns_weight"], class_topk=cfg["class_topk"], noise_dim=cfg["noise_dim"],
            channels=cfg["channels"], seed=seed)
        noise, labels = sample_inputs(cfg["images"], trained.num_classes, trained.noise_dim,
                                      torch.Generator().manual_seed(seed + 1))
        images = torch.cat([trained.sample(n, y) for n, y in zip(noise.split(64), labels.split(64))])
        window = max(1, len(history["bns"]) // 10)  # first and last tenth of training
        metrics = {f"{k}_{when}": float(np.mean(v[:window] if when == "first" else v[-window:]))
                   for k, v in history.items() for when in ("first", "last")}
    seconds = time.perf_counter() - start
    real = next(iter(_image_batches(f"{study.PREPARED}/val", size, 8)))
    summary = {"generator": generator, "source": source, "images": int(images.shape[0]),
               "seconds": round(seconds, 1), "settings": cfg, **metrics}
    with atomic_directory(out) as tmp:
        write_generated_split(tmp, images, payload["classes"], labels, info=summary)
        if trained is not None:
            from quantdet.zeroshot.generator import save_generator
            save_generator(tmp / "generator.pt", trained, source=source, history=history)
        image_grid([("real (val)", to_uint8(real)), (generator, to_uint8(images[:8])),
                    ("", to_uint8(images[8:16]))], size).save(tmp / "grid.png")
        write_json(tmp / "summary.json", summary)
    _log_job(params, "zeroshot_data", model=None, generator=generator,
             metrics={"seconds": seconds, **metrics}, tags={"generator": generator},
             artifacts=[out / "grid.png", out / "summary.json"])
    return summary


# ---------------------------------------------------------------------------- distillation
def mimic(params: dict, model: str, out: str | None = None) -> dict:
    """Quantization mimic: the student, quantized as FQN (BN folded, percentile ranges tracked
    by EMA), fine-tuned from the FP32 student with the detection loss plus the mimic term to
    the FP32 teacher's features (variant `alone`: detection loss only)."""
    from quantdet.data.dataset import DetectionDataset, SeededSubset, collate_detections
    from quantdet.distill.mimic import MimicTerm, add_adaptation, parse_variant, remove_adaptation
    from quantdet.models.io import load_model, save_model
    from quantdet.quant.ptq import activation_ranges
    from quantdet.quant.qat import get_recipe, prepare_qat, stop_tracking
    from quantdet.train.loop import fit

    name = study.parse_model_name(model)
    if name.stage != "mimic":
        raise QuantdetError(f"{model}: not a mimic model (student-mimic-<variant>-w<b>a<b>)")
    cfg, ptq_cfg, seed = params["distill"]["mimic"], params["quant"]["ptq"], params["study"]["seed"]
    try:
        variant = parse_variant(name.method, cfg["lambda"])
    except ValueError as e:
        raise QuantdetError(f"{model}: {e}") from None
    recipe = get_recipe("fqn")
    out = Path(out or study.model_file(name.model))
    _set_threads(params["train"]["threads"])
    student, payload = load_model(_require(study.model_file(name.fp32_source)))
    teacher_file = study.model_file("teacher-fp32")
    teacher, teacher_payload = load_model(_require(teacher_file))
    calib = study.calibration_split(name)
    batches = _image_batches(calib, params["models"]["input_size"], ptq_cfg["calib_batch_size"])
    qmodel, config = prepare_qat(student, recipe, name.weight_bits, name.act_bits, batches,
                                 ptq_cfg["calib_batches"], ptq_cfg["percentile"],
                                 params["quant"]["qat"]["ema_momentum"])
    term = None
    if variant.mimic:
        add_adaptation(qmodel, payload["detector"]["fpn_channels"],
                       teacher_payload["detector"]["fpn_channels"])
        term = MimicTerm(qmodel, teacher, variant, step=cfg["step"], roi_size=cfg["roi_size"],
                         roi_topk=cfg["roi_topk"],
                         teacher_autocast=use_mixed_precision(params["train"]["mixed_precision"]))
    dataset = DetectionDataset(_require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                               augment=True, seed=seed)
    if cfg["images"] is not None and cfg["images"] < len(dataset):
        dataset = SeededSubset(dataset, cfg["images"], seed)
    start = time.perf_counter()
    history = fit(qmodel, dataset, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                  weight_decay=params["train"]["weight_decay"], warmup_iters=cfg["warmup_iters"],
                  seed=seed, checkpoint_path=Path("results/checkpoints") / f"{name.model}.ckpt",
                  threads=params["train"]["threads"], collate_fn=collate_detections,
                  extra_loss=term, description=f"mimic {name.model}", mixed_precision=False)
    if term is not None:
        term.remove()
        remove_adaptation(qmodel)
    stop_tracking(qmodel)
    qmodel.eval()
    quant = {**config, "method": variant.name, "stage": "mimic", "recipe": variant.describe(),
             "mimic": {"lambda": variant.weight, "quantized": variant.quantized,
                       "enabled": variant.mimic, **{k: cfg[k] for k in ("step", "roi_size", "roi_topk")}},
             "calibration": {"split": calib, "fingerprint": split_fingerprint(calib),
                             "batches": config["calibration_batches"],
                             "batch_size": ptq_cfg["calib_batch_size"]},
             "source": study.model_file(name.fp32_source), "teacher": teacher_file}
    save_model(out, qmodel, kind="quantized", detector=payload["detector"],
               classes=payload["classes"], quant=quant,
               extra={"stride": payload["stride"], "input_size": payload["input_size"],
                      "history": history, "activation_ranges": activation_ranges(qmodel)})
    last = history["epochs"][-1] if history.get("epochs") else {}
    _log_job(params, "mimic", model=name.model,
             metrics={"train_seconds": time.perf_counter() - start,
                      **{k: v for k, v in last.items() if isinstance(v, (int, float))}},
             tags={"calibration_fingerprint": quant["calibration"]["fingerprint"],
                   "bits": name.bits_label, "variant": variant.name})
    return quant


# ---------------------------------------------------------------------------- export
def _onnx_metadata(name, payload, params) -> dict:
    quant = payload.get("quant") or {}
    meta = {"quantdet.model": name.model, "quantdet.stride": payload["stride"],
            "quantdet.input_size": payload["input_size"],
            "quantdet.category_ids": ",".join(map(str, payload["classes"]["category_ids"])),
            "quantdet.class_names": ",".join(payload["classes"]["names"]),
            "quantdet.params_hash": params_hash(select(params, study.stage_params("export")))}
    if quant:
        meta.update({"quantdet.bits": name.bits_label, "quantdet.method": quant["method"],
                     "quantdet.calibration_fingerprint": quant["calibration"]["fingerprint"]})
    return meta


def export(params: dict, model: str, out: str | None = None) -> dict:
    import numpy as np
    import torch

    from quantdet.export.fidelity import compare_latency, detection_agreement, output_agreement
    from quantdet.export.onnx_export import export_onnx
    from quantdet.export.runner import OrtDetector
    from quantdet.models.io import load_model

    name = study.parse_model_name(model)
    out = Path(out or study.onnx_file(name.model))
    exp_cfg = params["export"]
    _set_threads(exp_cfg["threads"])
    torch_model, payload = load_model(_require(study.model_file(name.model)))
    graph = export_onnx(torch_model, out, payload["input_size"], exp_cfg["opset"],
                        metadata=_onnx_metadata(name, payload, params))
    report = {"model": name.model, "onnx": str(out), "size_bytes": {"onnx": out.stat().st_size},
              "graph": graph}
    onnx_models = {name.model: out}
    if name.quantized:
        fp32_onnx = _require(study.onnx_file(name.fp32_source))
        batches = _image_batches(f"{study.PREPARED}/val", payload["input_size"], 64)
        images = next(iter(batches))
        int8 = OrtDetector(out, threads=exp_cfg["threads"])
        fp32 = OrtDetector(fp32_onnx, threads=exp_cfg["threads"])
        latency_input = images[: exp_cfg["latency_batch"]].numpy().astype(np.float32)
        latency = compare_latency({"fp32_onnx": fp32, "int8_onnx": int8}, latency_input,
                                  exp_cfg["latency_runs"])
        decode = _decode_params(params)
        agreement = output_agreement(torch_model, int8, images, name.act_bits)
        agreement["detections_match_iou50"] = detection_agreement(
            torch_model, int8, images, payload["stride"], decode)
        report.update({
            "fp32_onnx": str(fp32_onnx), "int8_onnx": str(out),
            "size_bytes": {"fp32_onnx": fp32_onnx.stat().st_size, "int8_onnx": out.stat().st_size},
            "latency_ms": {**latency, "batch": int(latency_input.shape[0]),
                           "runs": exp_cfg["latency_runs"], "threads": exp_cfg["threads"]},
            "speedup_int8_vs_fp32": round(latency["fp32_onnx"] / latency["int8_onnx"], 3),
            "agreement": agreement,
            "calibration": payload["quant"]["calibration"],
        })
    report_path = out.with_suffix(".export.json")
    write_json(report_path, report)
    metrics = {"size_bytes": report["size_bytes"]}
    if name.quantized:
        metrics.update(latency_ms=report["latency_ms"], speedup=report["speedup_int8_vs_fp32"],
                       detections_match=report["agreement"]["detections_match_iou50"])
    _log_job(params, "export", model=name.model, metrics=metrics, artifacts=[report_path],
             onnx_models=onnx_models)
    return report


# ---------------------------------------------------------------------------- evaluation
def _decode_params(params: dict) -> dict:
    e = params["evaluate"]
    return {"score_threshold": e["score_threshold"], "max_detections": e["max_detections"],
            "nms_iou": e["nms_iou"]}


def _load_for_evaluation(name: study.ModelName, threads: int):
    if name.runtime == "onnxruntime":
        from quantdet.export.runner import OrtDetector

        model = OrtDetector(_require(study.onnx_file(name.model)), threads=threads)
        return model, int(model.metadata["quantdet.stride"])
    from quantdet.models.io import load_model

    model, payload = load_model(_require(study.model_file(name.model)))
    return model, payload["stride"]


def evaluate(params: dict, model: str, condition: str, out: str | None = None) -> dict:
    name = study.parse_model_name(model)
    if condition != "clean" and condition not in params["corruptions"]["names"]:
        raise QuantdetError(f"condition {condition!r} is neither 'clean' nor in corruptions.names")
    out = Path(out or study.eval_dir(model, condition))
    cfg = params["evaluate"]
    _set_threads(cfg["threads"])
    net, stride = _load_for_evaluation(name, cfg["threads"])
    with atomic_directory(out) as tmp:
        results = _evaluate_severities(params, name, condition, net, stride, tmp, out)
    _log_job(params, "evaluate", model=model, tags={"condition": condition},
             metrics={f"{r['severity']}.{k}": v for r in results
                      for k, v in r["metrics"].items() if v is not None},
             artifacts=[out / "metrics.json"])
    return read_json(out / "metrics.json")


def _evaluate_severities(params, name, condition, net, stride, tmp: Path, out: Path) -> list:
    from quantdet.evaluation.evaluate import evaluate_split

    cfg = params["evaluate"]
    results = []
    for severity in study.severities_of(condition, params):
        split = _require(study.split_dir(condition, severity))
        metrics, detections, timing = evaluate_split(
            net, split, input_size=params["models"]["input_size"], stride=stride,
            batch_size=cfg["batch_size"], decode_params=_decode_params(params))
        det_name = f"detections-s{severity}.json"
        write_json(tmp / det_name, detections, compact=True)
        results.append({"severity": severity, "metrics": metrics,
                        "detections": str(out / det_name), "split": str(split), **timing})
        log.info("%s %s s%d: AP %.3f AP50 %.3f", name.name, condition, severity, metrics["AP"],
                 metrics["AP50"])
    write_json(tmp / "metrics.json", {"model": name.name, "condition": condition,
                                      "runtime": name.runtime, "results": results})
    return results


# ---------------------------------------------------------------------------- report
def report_inputs(params: dict) -> tuple[list[str], list[str]]:
    evals = [f"{study.eval_dir(m, c)}/metrics.json"
             for m in study.evaluated_models(params) for c in study.conditions(params)]
    exports = [f"{study.MODELS}/{q}.export.json" for q in study.quantized_models(params)]
    return evals, exports


def report(params: dict, out_root: str = "results") -> dict:
    from quantdet.report.aggregate import write_study_report

    evals, exports = report_inputs(params)
    for path in evals + exports:
        _require(path)
    summary = write_study_report(evals, exports, params, out_root=out_root)
    metrics = {m: {k: v for k, v in r.items() if isinstance(v, (int, float))}
               for m, r in summary.get("robustness", {}).items()}
    _log_job(params, "report", metrics=metrics,
             artifacts=[Path(out_root) / "report.md", Path(out_root) / "plots",
                        Path(out_root) / "metrics", Path(out_root) / "tables"])
    return summary


