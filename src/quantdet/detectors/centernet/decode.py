"""Dense head outputs -> per-image detections (peaks, top-k, boxes, NMS).

The same function decodes PyTorch and onnxruntime outputs (callers wrap numpy arrays with
``torch.from_numpy``), so simulated and deployed models are scored identically.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms


def grid_points(height: int, width: int, stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-pixel coordinates of the output cells' centres, the points the ltrb distances start from.

    The loss and the decoder both use this, so a box is encoded and decoded around the same point.
    """
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    return torch.meshgrid(ys, xs, indexing="ij")


def ltrb_to_boxes(box_ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """B×4×H×W side distances -> B×H×W×4 xyxy boxes in input pixels."""
    _, _, height, width = box_ltrb.shape
    py, px = grid_points(height, width, stride, box_ltrb.device)
    left, top, right, bottom = box_ltrb.float().unbind(1)
    return torch.stack((px - left, py - top, px + right, py + bottom), dim=-1)


@torch.no_grad()
def decode_detections(
    outputs: tuple[torch.Tensor, torch.Tensor],
    stride: int,
    score_threshold: float = 0.01,
    max_detections: int = 100,
    nms_iou: float = 0.6,
    pre_nms_topk: int = 200,
) -> list[dict[str, torch.Tensor]]:
    heatmap_logits, box_ltrb = outputs
    batch, num_classes, height, width = heatmap_logits.shape
    scores = heatmap_logits.float().sigmoid()
    # A cell is a centre candidate only where it is the maximum of its 3×3 neighbourhood.
    peaks = F.max_pool2d(scores, kernel_size=3, stride=1, padding=1)
    scores = scores * (scores == peaks)
    topk = min(pre_nms_topk, num_classes * height * width)
    top_scores, top_index = scores.flatten(1).topk(topk, dim=1)
    labels = top_index // (height * width)
    cells = top_index % (height * width)

    boxes = ltrb_to_boxes(box_ltrb, stride).flatten(1, 2)  # B×HW×4
    image_size = torch.tensor([width * stride, height * stride] * 2, dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), image_size)

    detections = []
    for b in range(batch):
        keep = top_scores[b] > score_threshold
        image_boxes = boxes[b, cells[b, keep]]
        image_scores = top_scores[b, keep]
        image_labels = labels[b, keep]
        kept = batched_nms(image_boxes, image_scores, image_labels, nms_iou)[:max_detections]
        detections.append(
            {"boxes": image_boxes[kept], "scores": image_scores[kept], "labels": image_labels[kept].long()}
        )
    return detections
