"""One evaluator for every model: a PyTorch module (FP32 or fake-quantized) or an onnxruntime
session goes through the same batching, decoding and COCO metrics."""
from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from quantdet.data.dataset import DetectionDataset, collate_detections
from quantdet.evaluation.coco_metrics import coco_box_metrics


def to_coco_detections(decoded: list[dict], metas: list[dict], category_ids: list[int]) -> list[dict]:
    """Boxes in network-input pixels → COCO results in original image coordinates."""
    results = []
    for det, meta in zip(decoded, metas):
        boxes = det["boxes"]
        if any(meta.get("offset", (0, 0))):   # a centred letterbox (the detector family's)
            left, top = meta["offset"]
            boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        boxes = boxes / meta["scale"]
        if meta.get("clip"):   # the family's own evaluation clips to the image (yolo: Ultralytics')
            height, width = meta["orig_size"]
            boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                                 boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), det["scores"].tolist(),
                                                  det["labels"].tolist()):
            results.append({"image_id": int(meta["image_id"]),
                            "category_id": int(category_ids[label]),
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": round(float(score), 5)})
    return results


@torch.no_grad()
def predict(model, dataset: DetectionDataset, *, decode, batch_size: int) -> list[dict]:
    """COCO results of `model` on `dataset`; ``decode``: raw outputs → detections (the
    detector's ``detectors.Decoder``)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=collate_detections)
    # NHWC: oneDNN's CPU convolutions run about 1.5x faster in it (PyTorch models only)
    layout = torch.channels_last if isinstance(model, torch.nn.Module) else torch.contiguous_format
    if isinstance(model, torch.nn.Module):
        model.to(memory_format=layout)
    detections = []
    for images, _, metas in loader:
        outputs = model(images.contiguous(memory_format=layout))
        decoded = decode(outputs)
        detections += to_coco_detections(decoded, metas, dataset.category_ids)
    return detections


def evaluate_split(model, split_dir, *, input_size: int, decode, batch_size: int, letterbox=None
                   ) -> tuple[dict, list[dict], dict]:
    """COCO box metrics of model on one split folder; returns (metrics, detections, timing).
    ``letterbox``: the detector family's (quantdet.detectors.letterbox_of)."""
    dataset = DetectionDataset(split_dir, input_size, augment=False, letterbox=letterbox)
    start = time.perf_counter()
    detections = predict(model, dataset, decode=decode, batch_size=batch_size)
    seconds = time.perf_counter() - start
    metrics = coco_box_metrics(dataset.coco, detections)
    return metrics, detections, {"num_images": len(dataset), "seconds": round(seconds, 3)}
