"""Simulated vs deployed: does onnxruntime's integer model compute what the fake-quantized
PyTorch model computes? (How fast it is: quantdet.export.latency, one process per model.)"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou


BATCH = 16


@torch.no_grad()
def batch_outputs(torch_model, ort_model, images: torch.Tensor) -> tuple[list, list]:
    """Both models' raw outputs, batch by batch: computed once, compared by both checks."""
    batches = images.split(BATCH)
    return [torch_model(b) for b in batches], [ort_model(b) for b in batches]


@torch.no_grad()
def output_agreement(torch_model, ort_model, images: torch.Tensor, act_bits: int,
                     outputs: tuple[list, list] | None = None, names: list[str] | None = None) -> dict:
    """Compare raw outputs element by element.

    The tolerance unit is one quantization step of an activation quantizer covering the
    output's range at the model's activation bit width: a one-step difference in some
    upstream rounding (onnxruntime rounds its requantization in integer arithmetic) moves
    outputs by about that much.
    """
    sim_batches, dep_batches = outputs or batch_outputs(torch_model, ort_model, images)
    sim = [torch.cat(t) for t in zip(*sim_batches)]
    dep = [torch.cat(t) for t in zip(*dep_batches)]
    report = {"max_abs_diff": {}, "quant_step": {}, "within_one_step_fraction": {}}
    names = names or getattr(ort_model, "output_names", None) or [f"output{i}" for i in range(len(sim))]
    for name, s, d in zip(names, sim, dep):
        step = float((s.max() - s.min()) / (2**act_bits - 1))
        diff = (s - d).abs()
        report["max_abs_diff"][name] = float(diff.max())
        report["quant_step"][name] = step
        report["within_one_step_fraction"][name] = float((diff <= step).float().mean())
    report["num_images"] = int(images.shape[0])
    return report


@torch.no_grad()
def detection_agreement(torch_model, ort_model, images, decode, min_score: float = 0.3,
                        outputs: tuple[list, list] | None = None) -> float:
    """Fraction of the simulated model's confident detections that the deployed model also
    makes (same class, IoU ≥ 0.5); ``decode``: the detector's ``detectors.Decoder``."""
    matched = total = 0
    sim_batches, dep_batches = outputs or batch_outputs(torch_model, ort_model, images)
    for sim_out, dep_out in zip(sim_batches, dep_batches):
        sim, dep = decode(sim_out), decode(dep_out)
        for a, b in zip(sim, dep):
            keep = a["scores"] >= min_score
            boxes, labels = a["boxes"][keep], a["labels"][keep]
            total += len(boxes)
            if len(boxes) == 0 or len(b["boxes"]) == 0:
                continue
            iou = box_iou(boxes, b["boxes"])
            same = labels[:, None] == b["labels"][None, :]
            matched += int(((iou >= 0.5) & same).any(dim=1).sum())
    return matched / total if total else float("nan")
