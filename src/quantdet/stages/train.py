"""pretrain: an FP32 detector trained from scratch (or from timm weights) with the one loop."""
from __future__ import annotations

import time
from pathlib import Path

from quantdet import study
from quantdet.io_utils import write_json
from quantdet.stages.common import log_job, require, set_threads
from quantdet.train import distributed

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
    from quantdet.train.device import numerics_tags
    from quantdet.train.loop import fit

    name = study.ModelName(role, "pretrain", None, None, None, "torch", seed)
    seed = name.run_seed(params)
    out = Path(out or study.model_file(name.model))
    train_cfg, model_cfg = params["train"], params["models"][role]
    set_threads(train_cfg["threads"])
    dataset = DetectionDataset(require(f"{study.PREPARED}/train"), params["models"]["input_size"],
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
                      workers=train_cfg["workers"], tf32=train_cfg["tf32"])
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
    log_job(params, "pretrain", model=out.stem, role=role,
             metrics={"train_seconds": seconds, **{k: v for k, v in last.items()
                                                   if isinstance(v, (int, float))}},
             tags=numerics_tags(history["numerics"]), artifacts=[out.with_suffix(".train.json")])
    return summary
