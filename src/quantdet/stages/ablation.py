"""ablation: where percentile clipping costs accuracy. The FP32 student is calibrated twice at
quant.ablation.bits, with the `percentile` observer at quant.ablation.gamma (FQN's
0.999 by default, the study's own PTQ may use another) and with
min/max, on the same calibration batches; the activation quantizers are grouped by where they
sit in the network, and each group is swapped: percentile everywhere but that group (min/max
there: the points the group loses), and percentile in that group alone. Clean AP on a seeded
draw of val images (quant.ablation.images), written to results/metrics/percentile_ablation.json
for the report."""
from __future__ import annotations

import copy
import time
from pathlib import Path

from quantdet import study
from quantdet.io_utils import write_json
from quantdet.stages.common import decode_params, image_batches, log_job, require, set_threads

ABLATION = "results/metrics/percentile_ablation.json"


def quantizer_groups(qmodel) -> dict[str, list[str]]:
    """Activation quantizer names grouped by the module whose output each quantizes (the
    detector family's `layer_group`); a function's output (add, interpolate, the input
    scaling) joins the group of the module feeding it, or `input`."""
    from quantdet import detectors

    family = detectors.of(detectors.config_of(qmodel))
    groups: dict[str, list[str]] = {}
    owner: dict = {}
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and node.target.startswith("act_quant"):
            members = groups.setdefault(owner.get(node.args[0], "input"), [])
            if node.target not in members:   # a quantizer applied twice (shared ranges)
                members.append(node.target)
            owner[node] = owner.get(node.args[0], "input")
        elif node.op == "call_module":
            owner[node] = family.layer_group(node.target)
        elif node.op in ("call_function", "call_method"):
            feeding = [a for a in node.args if hasattr(a, "op") and a in owner]
            owner[node] = owner[feeding[0]] if feeding else "input"
    return groups


def _swap(qmodel, donor, names):
    model = copy.deepcopy(qmodel)
    for name in names:
        ours, theirs = model.get_submodule(name), donor.get_submodule(name)
        ours.scale.data.copy_(theirs.scale.data)
        ours.zero_point.data.copy_(theirs.zero_point.data)
    return model


def ablation(params: dict, out: str | None = None) -> dict:
    import numpy as np
    import torch

    from quantdet.data.dataset import DetectionDataset
    from quantdet.evaluation.coco_metrics import coco_box_metrics
    from quantdet.evaluation.evaluate import predict
    from quantdet.models.io import load_model
    from quantdet.quant.ptq import post_training_quantize

    cfg = params["quant"]["ablation"]
    set_threads(params["evaluate"]["threads"])
    started = time.perf_counter()
    bits = cfg["bits"]
    size = params["models"]["input_size"]
    model, payload = load_model(require(study.model_file("student-fp32")))
    from quantdet.detectors import Decoder, letterbox_of

    decode = Decoder(payload["detector"], size, **decode_params(params))
    letterbox = letterbox_of(payload["detector"])
    ptq = {**params["quant"]["ptq"], "percentile": cfg["gamma"]}

    def calibrated(observer):
        batches = image_batches(require(f"{study.PREPARED}/calib"), size, ptq["calib_batch_size"], letterbox)
        return post_training_quantize(model, batches, observer, bits, bits, ptq)

    val = DetectionDataset(require(study.split_dir("clean", 0)), size, augment=False, letterbox=letterbox)
    rng = np.random.default_rng(params["study"]["seed"])
    count = min(cfg["images"], len(val))
    indices = sorted(rng.choice(len(val), size=count, replace=False).tolist())
    subset = torch.utils.data.Subset(val, indices)
    subset.category_ids = val.category_ids
    ids = {val.coco["images"][i]["id"] for i in indices}
    gt = {**val.coco, "images": [i for i in val.coco["images"] if i["id"] in ids],
          "annotations": [a for a in val.coco["annotations"] if a["image_id"] in ids]}

    def points(m):
        detections = predict(m, subset, decode=decode, batch_size=params["evaluate"]["batch_size"])
        return 100 * coco_box_metrics(gt, detections)["AP"]

    percentile, minmax = calibrated("percentile"), calibrated("minmax")
    result = {"bits": f"W{bits}A{bits}", "gamma": ptq["percentile"], "images": count,
              "of_images": len(val), "split": study.split_dir("clean", 0),
              "fp32_P": points(model), "percentile_P": points(percentile), "minmax_P": points(minmax),
              "groups": []}
    for group, names in quantizer_groups(percentile).items():
        but = points(_swap(percentile, minmax, names))
        only = points(_swap(minmax, percentile, names))
        result["groups"].append({"group": group, "quantizers": len(names), "P_percentile_but_here": but,
                                 "P_percentile_only_here": only,
                                 "recovered_points": but - result["percentile_P"],
                                 "lost_points_alone": result["minmax_P"] - only})
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(out or ABLATION)
    write_json(out, result)
    log_job(params, "ablation", metrics={"percentile_P": result["percentile_P"],
                                         "minmax_P": result["minmax_P"]}, artifacts=[out])
    return result
