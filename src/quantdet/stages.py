"""The stages of a study, one function each. `quantdet <stage>` (cli.py) calls these; the
Snakefile and dvc.yaml call `quantdet <stage>`. Each returns a summary and logs its MLflow run."""
from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from quantdet import study, tracking
from quantdet.config import params_hash, select
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_directory, read_json, write_json
from quantdet.train import distributed

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


def pretrain(params: dict, role: str, out: str | None = None, seed: int | None = None) -> dict:
    """Train an FP32 detector; `seed` (a repeat seed) overrides study.seed for training only."""
    import torch

    from quantdet.data.dataset import DetectionDataset, collate_detections
    from quantdet.models import build_detector
    from quantdet.models.io import save_model
    from quantdet.train.loop import fit

    name = study.ModelName(role, "pretrain", None, None, None, "torch", seed)
    seed = name.run_seed(params)
    out = Path(out or study.model_file(name.model))
    train_cfg, model_cfg = params["train"], params["models"][role]
    _set_threads(train_cfg["threads"])
    dataset = DetectionDataset(_require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                               augment=True, seed=seed)
    detector = detector_config(params, role, len(dataset.category_ids))
    # The initial weights come from the study seed: torch seeds each process randomly, so an
    # unseeded init would differ between runs (and between the ranks of a data-parallel job).
    torch.manual_seed(seed)
    model = build_detector(**detector)
    checkpoint = Path("results/checkpoints") / f"{name.model}.ckpt"
    start = time.perf_counter()
    with distributed.process_group():
        history = fit(model, dataset, epochs=model_cfg.get("epochs", train_cfg["epochs"]),
                      batch_size=train_cfg["batch_size"], lr=model_cfg.get("lr", train_cfg["lr"]),
                      weight_decay=train_cfg["weight_decay"], warmup_iters=train_cfg["warmup_iters"],
                      seed=seed, checkpoint_path=checkpoint,
                      threads=train_cfg["threads"], collate_fn=collate_detections,
                      description=f"pretrain {name.model}",
                      mixed_precision=use_mixed_precision(train_cfg["mixed_precision"]),
                      workers=train_cfg["workers"])
    seconds = time.perf_counter() - start
    if not distributed.is_main():  # rank 0 writes the model and logs the run
        return {"model": out.stem, "rank": distributed.rank(), "history": history}
    classes = {"category_ids": list(dataset.category_ids), "names": list(dataset.class_names)}
    save_model(out, model, kind="fp32", detector=detector, classes=classes,
               extra={"history": history, "stride": model.stride, "seed": seed,
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


class CalibrationSet:
    """The calibration images a quantizer sees, and their identity.

    Clean: the calib split as is. Degradation-aware (QRID): each image is degraded, with
    probability p, by one transform of `quant.degradations` at a random severity, seeded per
    image. The fingerprint hashes the exact input tensors consumed (so it changes with the
    images, the preprocessing, the degradation plan and the number of batches), and is
    recorded in the model file, its MLflow run and the exported ONNX metadata.
    """

    def __init__(self, params: dict, degraded: bool = False, seed: int | None = None,
                 split: str | None = None):
        from torch.utils.data import DataLoader

        from quantdet.data.dataset import DetectionDataset, collate_detections
        from quantdet.data.degraded import DegradedDataset

        self.split = split or f"{study.PREPARED}/calib"  # zero-shot: a generated split
        self.batch_size = params["quant"]["ptq"]["calib_batch_size"]
        dataset = DetectionDataset(_require(self.split), params["models"]["input_size"], augment=False)
        self.degradations = None
        if degraded:
            d = params["quant"]["degradations"]
            seed = params["study"]["seed"] if seed is None else seed
            dataset = DegradedDataset(dataset, d["names"], d["p"], d["severities"], seed)
            self.degradations = dataset.identity()
        self.loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                 collate_fn=collate_detections)
        self._hash = hashlib.sha256()
        self.batches = self.degraded_images = 0

    def __iter__(self):
        for images, _, metas in self.loader:
            self._hash.update(images.numpy().tobytes())
            self.batches += 1
            self.degraded_images += sum(m.get("degradation") is not None for m in metas)
            yield images

    def info(self) -> dict:
        if not self.batches:
            raise QuantdetError(f"{self.split}: no calibration batch was read")
        return {"split": self.split, "fingerprint": self._hash.hexdigest()[:16],
                "split_fingerprint": split_fingerprint(self.split), "batches": self.batches,
                "batch_size": self.batch_size, "degradations": self.degradations,
                "degraded_images": self.degraded_images}


def ptq(params: dict, model: str, out: str | None = None) -> dict:
    from quantdet.models.io import load_model, save_model
    from quantdet.quant.ptq import (DEGRADED_CALIBRATION, PTQ_METHODS, activation_ranges,
                                    post_training_quantize)

    name = study.parse_model_name(model)
    out = Path(out or study.model_file(name.model))
    ptq_cfg = params["quant"]["ptq"]
    _set_threads(params["train"]["threads"])
    fp32, payload = load_model(_require(study.model_file(name.fp32_source)))
    calib_split = study.calibration_split(name)  # generated images for zero-shot methods
    sets = []

    def batches():
        """A fresh pass over the calibration set (mixed precision calibrates twice); the
        model's calibration identity is that of the last pass."""
        sets.append(CalibrationSet(params, degraded=name.method in DEGRADED_CALIBRATION,
                                   seed=name.run_seed(params), split=calib_split))
        return sets[-1]

    # zero-shot methods name the data; quant.zeroshot.observer names how ranges are taken
    method = params["quant"]["zeroshot"]["observer"] if study.is_zero_shot(name) else name.method
    mixed, metrics, artifacts = None, {}, []
    if name.mixed_precision:
        qmodel, mixed = _mixed_precision(params, name, fp32, batches)
        method = params["quant"]["mixed"]["observer"]
    else:
        qmodel = post_training_quantize(fp32, batches(), method, name.weight_bits,
                                        name.act_bits, ptq_cfg)
    observer, keys = PTQ_METHODS[method]
    calibration = sets[-1].info()
    quant = {"weight_bits": name.weight_bits, "act_bits": name.act_bits, "observer": observer,
             "observer_kwargs": {k: ptq_cfg[k] for k in keys}, "method": name.method,
             "stage": "ptq", "calibration": calibration, "source": study.model_file(name.fp32_source),
             **{k: qmodel.quant_info[k] for k in ("folded_batchnorms", "quantized_layers",
                                                   "activation_quantizers")}}
    if mixed is not None:
        # every layer's bits; weight_bits (the default for unnamed layers) is the highest choice
        quant.update(weight_bits=max(mixed["bit_choices"]),
                     layer_bits={r["layer"]: r["bits"] for r in mixed["layers"]},
                     weight_bits_budget=name.weight_bits,
                     average_weight_bits=mixed["average_weight_bits"])
        metrics = {"average_weight_bits": mixed["average_weight_bits"],
                   "sensitivity_seconds": mixed["sensitivity_seconds"]}
        artifacts = [out.with_suffix(".bits.json")]  # study.bits_file beside the model
    save_model(out, qmodel, kind="quantized", detector=payload["detector"],
               classes=payload["classes"], quant=quant,
               extra={"stride": payload["stride"], "input_size": payload["input_size"],
                      "activation_ranges": activation_ranges(qmodel)})
    if mixed is not None:
        write_json(artifacts[0], {"model": name.model, **mixed})
    _log_job(params, "ptq", model=name.model,
             metrics={"calibration_batches": calibration["batches"],
                      "quantized_layers": quant["quantized_layers"], **metrics},
             tags={"calibration_fingerprint": calibration["fingerprint"], "bits": name.bits_label},
             artifacts=artifacts)
    return quant


def _mixed_precision(params: dict, name: study.ModelName, fp32, batches):
    """Mixed-precision PTQ of `fp32`: returns the model and the per-layer allocation report."""
    from torch.utils.data import DataLoader

    from quantdet.data.dataset import DetectionDataset, collate_detections
    from quantdet.quant.mixed import mixed_precision_quantize

    cfg, ptq_cfg = params["quant"]["mixed"], params["quant"]["ptq"]
    dataset = DetectionDataset(f"{study.PREPARED}/calib", params["models"]["input_size"],
                               augment=False)
    loader = DataLoader(dataset, batch_size=ptq_cfg["calib_batch_size"], shuffle=False,
                        collate_fn=collate_detections)
    labelled = []
    for images, targets, _ in loader:
        if len(labelled) == cfg["sensitivity_batches"]:
            break
        labelled.append((images, targets))
    qmodel, report = mixed_precision_quantize(
        fp32, batches, labelled, budget=name.weight_bits, bit_choices=cfg["bit_choices"],
        act_bits=name.act_bits, method=cfg["observer"], ptq_params=ptq_cfg,
        metric=cfg["sensitivity"])
    log.info("%s: %.3f average weight bits (budget %d), sensitivity pass %.1f s", name.model,
             report["average_weight_bits"], name.weight_bits, report["sensitivity_seconds"])
    return qmodel, report


def qat(params: dict, model: str, out: str | None = None) -> dict:
    from quantdet.data.dataset import DetectionDataset, SeededSubset, collate_detections
    from quantdet.data.degraded import DegradedDataset
    from quantdet.models.io import load_model
    from quantdet.quant.outlier import QuantErrorLoss
    from quantdet.quant.qat import get_recipe, prepare_qat, stop_tracking
    from quantdet.train.loop import fit
    from quantdet.zeroshot.ait import ait_recipe

    name = study.parse_model_name(model)
    zero_shot = study.is_zero_shot(name)
    recipe = ait_recipe(params["quant"]["zeroshot"]["observer"]) if zero_shot else get_recipe(name.method)
    out = Path(out or study.model_file(name.model))
    qat_cfg, ptq_cfg, seed = params["quant"]["qat"], params["quant"]["ptq"], name.run_seed(params)
    _set_threads(params["train"]["threads"])
    fp32, payload = load_model(_require(study.model_file(name.fp32_source)))
    calib = CalibrationSet(params, seed=seed, split=study.calibration_split(name))  # generated for AIT
    qmodel, config = prepare_qat(fp32, recipe, name.weight_bits, name.act_bits, calib,
                                 ptq_cfg["calib_batches"], ptq_cfg["percentile"],
                                 qat_cfg["ema_momentum"], outlier=qat_cfg["outlier"])
    degradations = None
    if zero_shot:
        training = _ait_training(params, teacher=fp32, generated=calib.split, seed=seed)
    else:
        dataset = DetectionDataset(_require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                                   augment=True, seed=seed)
        if qat_cfg.get("images") is not None and qat_cfg["images"] < len(dataset):
            dataset = SeededSubset(dataset, qat_cfg["images"], seed)  # a per-epoch budget
        if recipe.degraded_batches:
            d = params["quant"]["degradations"]
            dataset = DegradedDataset(dataset, d["names"], d["p"], d["severities"], seed)
            degradations = dataset.identity()
        training = {"dataset": dataset, "epochs": qat_cfg["epochs"], "batch_size": qat_cfg["batch_size"],
                    "lr": qat_cfg["lr"], "weight_decay": params["train"]["weight_decay"],
                    "warmup_iters": qat_cfg["warmup_iters"], "collate_fn": collate_detections,
                    "workers": params["train"]["workers"]}
    start = time.perf_counter()
    error_loss = (QuantErrorLoss(qmodel, qat_cfg["outlier"]["loss_weight"])
                  if recipe.outlier_aware else nullcontext())
    with distributed.process_group(), error_loss as extra_loss:
        history = fit(qmodel, **training, seed=seed,
                      checkpoint_path=Path("results/checkpoints") / f"{name.model}.ckpt",
                      threads=params["train"]["threads"], description=f"qat {name.model}",
                      mixed_precision=False, extra_loss=extra_loss)
    if not distributed.is_main():  # rank 0 writes the model and logs the run
        return {"model": name.model, "rank": distributed.rank(), "history": history}
    stop_tracking(qmodel)
    qmodel.eval()
    quant = {**config, "method": recipe.name, "stage": "qat", "recipe": recipe.description,
             "calibration": calib.info(),
             "training_degradations": degradations, "source": study.model_file(name.fp32_source)}
    if zero_shot:
        quant["training_data"] = {"generator": f"{calib.split}/generator.pt",
                                  "ait": params["quant"]["zeroshot"]["ait"]}
    _save_trained(params, "qat", name, out, qmodel, payload, quant, history, start,
                  tags={"recipe": recipe.name})
    return quant


def _save_trained(params, stage, name, out, qmodel, payload, quant, history, start, tags) -> None:
    """Write a model trained by `qat` or `mimic` (with its history and tracked ranges) and log
    the job, with the last epoch's numbers as metrics."""
    from quantdet.models.io import save_model
    from quantdet.quant.ptq import activation_ranges

    save_model(out, qmodel, kind="quantized", detector=payload["detector"],
               classes=payload["classes"], quant=quant,
               extra={"stride": payload["stride"], "input_size": payload["input_size"],
                      "history": history, "activation_ranges": activation_ranges(qmodel)})
    last = history["epochs"][-1] if history.get("epochs") else {}
    _log_job(params, stage, model=name.model,
             metrics={"train_seconds": time.perf_counter() - start,
                      **{k: v for k, v in last.items() if isinstance(v, (int, float))}},
             tags={"calibration_fingerprint": quant["calibration"]["fingerprint"],
                   "bits": name.bits_label, **tags})


def _ait_training(params: dict, teacher, generated: str, seed: int) -> dict:
    """`fit` arguments for AIT: fresh GDFQ generator samples labelled by the FP32 model, the
    KL loss, SGD (no weight decay: the inflation predicts the step exactly) and inflation."""
    from quantdet.zeroshot.ait import GeneratedBatches, GradientInflation, distillation_loss
    from quantdet.zeroshot.generator import load_generator

    cfg = params["quant"]["zeroshot"]["ait"]
    generator = load_generator(_require(Path(generated) / "generator.pt"))
    dataset = GeneratedBatches(generator, teacher, cfg["images_per_epoch"], seed)
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
    from quantdet.models.io import load_model
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
    calib = CalibrationSet(params, seed=seed)
    qmodel, config = prepare_qat(student, recipe, name.weight_bits, name.act_bits, calib,
                                 ptq_cfg["calib_batches"], ptq_cfg["percentile"],
                                 params["quant"]["qat"]["ema_momentum"])
    term = None
    if variant.mimic:
        import torch

        torch.manual_seed(seed)  # r's initial weights: the same run gives the same model
        add_adaptation(qmodel, payload["detector"]["fpn_channels"],
                       teacher_payload["detector"]["fpn_channels"])
        term = MimicTerm(qmodel, teacher, variant, step=cfg["step"], roi_size=cfg["roi_size"],
                         roi_topk=cfg["roi_topk"])
        # The teacher runs in FP32: under bf16 autocast two runs of the same job gave different
        # students on this CPU (oneDNN), and a rerun must reproduce its model.
    dataset = DetectionDataset(_require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                               augment=True, seed=seed)
    if cfg["images"] is not None and cfg["images"] < len(dataset):
        dataset = SeededSubset(dataset, cfg["images"], seed)
    start = time.perf_counter()
    with distributed.process_group():
        history = fit(qmodel, dataset, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                      weight_decay=params["train"]["weight_decay"], warmup_iters=cfg["warmup_iters"],
                      seed=seed, checkpoint_path=Path("results/checkpoints") / f"{name.model}.ckpt",
                      threads=params["train"]["threads"], collate_fn=collate_detections,
                      extra_loss=term, description=f"mimic {name.model}", mixed_precision=False,
                      workers=params["train"]["workers"])
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
        sessions = {"fp32_onnx": fp32, "int8_onnx": int8}
        with _without_side_paths(torch_model, out, payload, exp_cfg) as variants:
            for key, variant in (variants or {}).items():  # outlier-aware: side-path cost
                sessions[f"int8_onnx_{key}"] = variant["session"]
            latency = compare_latency(sessions, latency_input, exp_cfg["latency_runs"])
        if variants:
            report["outlier_side_paths"] = {
                **graph.get("side_paths", {}), "weights_kept_fp16": variants["plain"]["outliers"],
                "extra_bytes": out.stat().st_size - variants["plain"]["size_bytes"],
                "size_bytes_without": variants["plain"]["size_bytes"],
                "latency_ms_with": latency["int8_onnx"],
                "latency_ms_without": latency["int8_onnx_plain"],
                "latency_ms_without_side_paths_only": latency["int8_onnx_no_side_paths"],
                "note": "without = the same model with its outlier weights dropped: no side "
                        "paths and no 8-bit output requantization (plain QDQ export); "
                        "without_side_paths_only keeps the 8-bit requantization"}
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


@contextmanager
def _without_side_paths(torch_model, out: Path, payload: dict, exp_cfg: dict):
    """For an outlier-aware model: its ONNX exports with the outliers dropped ("plain": also
    without the 8-bit output requantization; "no_side_paths": with it), in a temporary folder,
    as onnxruntime sessions with their file sizes; None for other models."""
    import tempfile

    from quantdet.export.onnx_export import export_onnx
    from quantdet.export.runner import OrtDetector
    from quantdet.quant.outlier import outlier_layers, side_paths_disabled

    layers = [m for m in outlier_layers(torch_model) if m.has_outliers]
    if not layers:
        yield None
        return
    outliers = sum(int(m.outlier_mask.sum()) for m in layers)
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, keep in (("plain", False), ("no_side_paths", True)):
            path = Path(tmp) / f"{key}-{out.name}"
            with side_paths_disabled(torch_model, keep_output_quant=keep):
                export_onnx(torch_model, path, payload["input_size"], exp_cfg["opset"])
            variants[key] = {"session": OrtDetector(path, threads=exp_cfg["threads"]),
                             "size_bytes": path.stat().st_size, "outliers": outliers}
        yield variants


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


def evaluate(params: dict, model: str, out: str | None = None) -> dict:
    """Every condition (clean, each corruption at each severity) for one model, in one process:
    the model loads once, and the many small evaluations pay no start-up cost."""
    name = study.parse_model_name(model)
    out = Path(out or study.eval_dir(model))
    cfg = params["evaluate"]
    _set_threads(cfg["threads"])
    splits = {c: [_require(study.split_dir(c, s)) for s in study.severities_of(c, params)]
              for c in study.conditions(params)}
    net, stride = _load_for_evaluation(name, cfg["threads"])
    start = time.perf_counter()
    summary = {}
    with atomic_directory(out) as tmp:
        for condition in splits:
            results = _evaluate_severities(params, name, condition, net, stride,
                                           tmp / condition, out / condition)
            summary[condition] = {r["severity"]: r["metrics"] for r in results}
    _log_job(params, "evaluate", model=model,
             metrics={f"{c}.{s}.{k}": v for c, by_severity in summary.items()
                      for s, metrics in by_severity.items()
                      for k, v in metrics.items() if v is not None and k in ("AP", "AP50")}
             | {"evaluate_seconds": time.perf_counter() - start},
             artifacts=[out / c / "metrics.json" for c in splits])
    return summary


def _evaluate_severities(params, name, condition, net, stride, tmp: Path, out: Path) -> list:
    from quantdet.evaluation.evaluate import evaluate_split

    cfg = params["evaluate"]
    tmp.mkdir(parents=True, exist_ok=True)
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
    evals = [study.eval_metrics_file(m, c)
             for m in study.evaluated_models(params) for c in study.conditions(params)]
    exports = [f"{study.MODELS}/{q}.export.json" for q in study.quantized_models(params)]
    return evals, exports


def report(params: dict, out_root: str = "results") -> dict:
    from quantdet.report.aggregate import write_study_report

    evals, exports = report_inputs(params)
    for path in evals + exports:
        _require(path)
    mixed = {m: read_json(_require(study.bits_file(m))) for m in study.quantized_models(params)
             if study.parse_model_name(m).mixed_precision}
    generators = params["quant"]["zeroshot"]["generators"]
    grids = {g: _require(Path(study.synthetic_dir(g)) / "grid.png") for g in generators}
    generated = {g: read_json(_require(Path(study.synthetic_dir(g)) / "summary.json")) for g in generators}
    summary = write_study_report(evals, exports, params, out_root=out_root, mixed_bits=mixed,
                                 generated_grids=grids, generated_info=generated)
    metrics = {m: {k: v for k, v in r.items() if isinstance(v, (int, float))}
               for m, r in summary.get("robustness", {}).items()}
    _log_job(params, "report", metrics=metrics,
             artifacts=[Path(out_root) / "report.md", Path(out_root) / "plots",
                        Path(out_root) / "metrics", Path(out_root) / "tables"])
    return summary


