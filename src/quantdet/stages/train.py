"""pretrain: an FP32 detector trained from scratch (or from timm weights) with the one loop."""
from __future__ import annotations

import time
from pathlib import Path

from quantdet import study
from quantdet.errors import QuantdetError
from quantdet.io_utils import sha256_of, write_json
from quantdet.stages.common import log_job, require, set_threads
from quantdet.train import distributed

def detector_config(params: dict, role: str, num_classes: int) -> dict:
    """The model file's detector config for `models.<role>` (its family's `config`)."""
    from quantdet import detectors

    cfg = study.model_params(params, role)
    return detectors.of_params(cfg).config(cfg, num_classes)


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

    from quantdet import detectors
    from quantdet.data.dataset import DetectionDataset, collate_detections
    from quantdet.models.io import save_model
    from quantdet.train.device import numerics_tags
    from quantdet.train.loop import fit

    name = study.ModelName(role, "pretrain", None, None, None, "torch", seed)
    seed = name.run_seed(params)
    out = Path(out or study.model_file(name.model))
    train_cfg, model_cfg = params["train"], study.model_params(params, role)
    if model_cfg.get("checkpoint"):
        return import_checkpoint(params, role, out, seed)
    set_threads(train_cfg["threads"])
    dataset = DetectionDataset(require(f"{study.PREPARED}/train"), params["models"]["input_size"],
                               augment=True, seed=seed, letterbox=detectors.of_params(model_cfg).letterbox)
    detector = detector_config(params, role, len(dataset.category_ids))
    # The initial weights come from the study seed: torch seeds each process randomly, so an
    # unseeded init would differ between runs (and between the ranks of a data-parallel job).
    torch.manual_seed(seed)
    family = detectors.of(detector)
    model = detectors.build(detector, pretrained=bool(detector.get("pretrained")))
    checkpoint = Path("results/checkpoints") / f"{name.model}.ckpt"
    start = time.perf_counter()
    with distributed.process_group():
        history = fit(model, dataset, epochs=model_cfg.get("epochs", train_cfg["epochs"]),
                      batch_size=train_cfg["batch_size"], lr=model_cfg.get("lr", train_cfg["lr"]),
                      weight_decay=train_cfg["weight_decay"], warmup_iters=train_cfg["warmup_iters"],
                      seed=seed, checkpoint_path=checkpoint,
                      threads=train_cfg["threads"], collate_fn=collate_detections,
                      loss_fn=family.loss_fn(model), description=f"pretrain {name.model}",
                      mixed_precision=use_mixed_precision(train_cfg["mixed_precision"]),
                      workers=train_cfg["workers"], tf32=train_cfg["tf32"])
    seconds = time.perf_counter() - start
    if not distributed.is_main():  # rank 0 writes the model and logs the run
        return {"model": out.stem, "rank": distributed.rank(), "history": history}
    classes = {"category_ids": list(dataset.category_ids), "names": list(dataset.class_names)}
    save_model(out, model, kind="fp32", detector=detector, classes=classes,
               extra={"history": history, "stride": family.stride(detector), "seed": seed,
                      "input_size": params["models"]["input_size"]})
    summary = {"model": out.stem, "seconds": round(seconds, 1), "history": history}
    write_json(out.with_suffix(".train.json"), summary)
    last = history["epochs"][-1] if history.get("epochs") else {}
    log_job(params, "pretrain", model=out.stem, role=role,
             metrics={"train_seconds": seconds, **{k: v for k, v in last.items()
                                                   if isinstance(v, (int, float))}},
             tags=numerics_tags(history["numerics"]), artifacts=[out.with_suffix(".train.json")])
    return summary


def _read_torch_file(path: Path):
    """The file's content if it holds tensors and plain Python only (a quantdet model file, a
    state dict): torch's safe loader imports no class a pickle names. Else None: the family reads
    its own format (an Ultralytics checkpoint pickles its network's classes)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a pickled network, truncated, or not a torch file: the family says which
        return None


def load_trained(model_params: dict, path: Path, class_names: list[str], key: str):
    """(FP32 network, detector config) from a user's trained checkpoint: a quantdet FP32 model
    file (any family), a plain PyTorch state dict of the network `models.<role>` describes, or
    the family's native format (yolo: a `yolo train` best.pt). The classes must be the
    dataset's, in its order."""
    from quantdet import detectors
    from quantdet.models.io import build_from_config

    if not path.is_file():
        raise QuantdetError(f"{key}.checkpoint: {path}: file not found")
    family = detectors.of_params(model_params)
    content = _read_torch_file(path)
    if isinstance(content, dict) and content.get("kind") == "fp32" and "detector" in content:
        names = list(content.get("classes", {}).get("names", []))
        if names != list(class_names):
            raise QuantdetError(f"{path}: its classes differ from the dataset's\n  checkpoint ({len(names)}): "
                                f"{names}\n  dataset ({len(class_names)}): {list(class_names)}")
        model = build_from_config(content["detector"])
        model.load_state_dict(content["state_dict"])
        return model, dict(content["detector"])
    if isinstance(content, dict) and isinstance(content.get("model"), dict) and "optimizer" in content:
        content = content["model"]  # torchvision references' checkpoint: {"model", "optimizer", ...}
    if isinstance(content, dict) and content and all(hasattr(v, "shape") for v in content.values()):
        config = family.config(model_params, len(class_names))
        model = detectors.build(config)
        try:
            missing, unexpected = model.load_state_dict(content, strict=False)
        except RuntimeError as e:  # same keys, other shapes
            shapes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
            raise QuantdetError(f"{path}: a state dict that does not fit {family.describe(config)} with "
                                f"{len(class_names)} classes: {len(shapes)} tensors of other shapes "
                                f"(e.g. {shapes[0] if shapes else e})") from None
        if missing or unexpected:
            raise QuantdetError(f"{path}: a state dict that does not fit {family.describe(config)} with "
                                f"{len(class_names)} classes: {len(missing)} missing keys (e.g. "
                                f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        return model, config
    model, config = family.load_checkpoint(path, list(class_names), len(class_names))
    model.detector_config = dict(config)
    return model, config


def import_checkpoint(params: dict, role: str, out: Path, seed: int) -> dict:
    """pretrain with `models.<role>.checkpoint`: no training; the user's trained network is
    written as the study's FP32 model, its file's sha256 in the model file, MLflow and report."""
    from quantdet.data.dataset import DetectionDataset
    from quantdet.models.io import save_model

    model_cfg = study.model_params(params, role)
    path = Path(model_cfg["checkpoint"])
    dataset = DetectionDataset(require(f"{study.PREPARED}/train"), params["models"]["input_size"])
    start = time.perf_counter()
    model, config = load_trained(model_cfg, path, list(dataset.class_names), study.model_key(role))
    digest = sha256_of(path)
    config = {**config, "checkpoint": str(path), "checkpoint_sha256": digest}
    from quantdet import detectors

    family = detectors.of(config)
    classes = {"category_ids": list(dataset.category_ids), "names": list(dataset.class_names)}
    imported = {"path": str(path), "sha256": digest, "bytes": path.stat().st_size}
    history = {"epochs": [], "imported": imported}
    save_model(out, model, kind="fp32", detector=config, classes=classes,
               extra={"history": history, "stride": family.stride(config), "seed": seed,
                      "input_size": params["models"]["input_size"], "checkpoint": imported})
    summary = {"model": out.stem, "seconds": round(time.perf_counter() - start, 1), "history": history}
    write_json(out.with_suffix(".train.json"), summary)
    log_job(params, "pretrain", model=out.stem, role=role, metrics={"train_seconds": 0.0},
            tags={"quantdet.checkpoint.path": str(path), "quantdet.checkpoint.sha256": digest},
            artifacts=[out.with_suffix(".train.json")])
    return summary
