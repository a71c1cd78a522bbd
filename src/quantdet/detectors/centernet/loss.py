"""TTFNet training targets and loss: focal loss on elliptical Gaussian centres, GIoU on ltrb boxes.

Every box spreads an elliptical Gaussian over the output grid whose radii follow the box's width
and height (TTFNet, alpha = 0.54). The heatmap learns the Gaussians with CenterNet's
penalty-reduced focal loss; the box branch is trained at every cell inside a Gaussian with a
GIoU loss weighted by the Gaussian, so cells near the centre, which decoding will pick, count most.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from quantdet.detectors.centernet.decode import ltrb_to_boxes

GAUSSIAN_ALPHA = 0.54  # TTFNet: Gaussian radius as a fraction of the half box side
HEATMAP_WEIGHT = 1.0
BOX_WEIGHT = 5.0       # TTFNet's GIoU weight; balances the two losses' gradients


def _pad_targets(targets: list[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lists of per-image boxes -> B×M×4 boxes, B×M labels and a B×M validity mask."""
    most = max(1, max(len(t["labels"]) for t in targets))
    boxes = torch.zeros(len(targets), most, 4, device=device)
    labels = torch.zeros(len(targets), most, dtype=torch.long, device=device)
    valid = torch.zeros(len(targets), most, dtype=torch.bool, device=device)
    for b, target in enumerate(targets):
        n = len(target["labels"])
        boxes[b, :n] = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(n, 4)
        labels[b, :n] = torch.as_tensor(target["labels"], device=device)
        valid[b, :n] = True
    return boxes, labels, valid


def box_gaussians(boxes: torch.Tensor, valid: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """B×M×H×W truncated elliptical Gaussians, exactly 1 at each box's centre cell, 0 for padding."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / (2 * stride)
    centre_x = centre[..., 0].floor().clamp(0, width - 1)
    centre_y = centre[..., 1].floor().clamp(0, height - 1)
    sides = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0) / stride
    radius_x = (sides[..., 0] * GAUSSIAN_ALPHA / 2).floor()  # whole cells, as TTFNet draws them
    radius_y = (sides[..., 1] * GAUSSIAN_ALPHA / 2).floor()
    sigma_x = ((2 * radius_x + 1) / 6)[..., None, None]
    sigma_y = ((2 * radius_y + 1) / 6)[..., None, None]
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32).view(1, 1, 1, width)
    dx = xs - centre_x[..., None, None]
    dy = ys - centre_y[..., None, None]
    gaussian = torch.exp(-(dx**2 / (2 * sigma_x**2) + dy**2 / (2 * sigma_y**2)))
    inside = (dx.abs() <= radius_x[..., None, None]) & (dy.abs() <= radius_y[..., None, None])
    return gaussian * (inside & valid[..., None, None])


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of centres."""
    positive = target.eq(1).float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive_loss = -((1 - p) ** 2) * log_p * positive
    negative_loss = -((1 - target) ** 4) * p**2 * log_not_p * (1 - positive)
    return (positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1)


def generalized_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    top_left = torch.max(pred[..., :2], target[..., :2])
    bottom_right = torch.min(pred[..., 2:], target[..., 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_pred = (pred[..., 2:] - pred[..., :2]).clamp(min=0).prod(-1)
    area_target = (target[..., 2:] - target[..., :2]).clamp(min=0).prod(-1)
    union = area_pred + area_target - intersection + eps
    enclosing = (torch.max(pred[..., 2:], target[..., 2:]) - torch.min(pred[..., :2], target[..., :2])).prod(-1) + eps
    return intersection / union - (enclosing - union) / enclosing


def detection_loss(outputs: tuple[torch.Tensor, torch.Tensor], targets: list[dict], stride: int
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    heatmap_logits, box_ltrb = outputs
    batch, num_classes, height, width = heatmap_logits.shape
    boxes, labels, valid = _pad_targets(targets, heatmap_logits.device)
    gaussians = box_gaussians(boxes, valid, height, width, stride)  # B×M×H×W

    one_hot = F.one_hot(labels, num_classes).float() * valid[..., None]  # B×M×C
    heatmap_target = (gaussians[:, :, None] * one_hot[..., None, None]).amax(dim=1)  # B×C×H×W
    heatmap_loss = focal_loss(heatmap_logits.float(), heatmap_target)

    # Where Gaussians overlap, the smaller box owns the cell (TTFNet draws large boxes first).
    areas = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)  # B×M
    owner_area = torch.where(gaussians > 0, areas[..., None, None], torch.full_like(gaussians, float("inf")))
    owner = owner_area.argmin(dim=1)  # B×H×W
    owned = torch.isfinite(owner_area.amin(dim=1))
    # Each box's Gaussian sums to log(area): larger boxes weigh a bit more, but not by their area.
    box_weight = gaussians * (torch.log1p(areas) / gaussians.flatten(2).sum(-1).clamp(min=1e-6))[..., None, None]
    cell_weight = box_weight.gather(1, owner[:, None]).squeeze(1) * owned
    target_boxes = boxes.gather(1, owner.flatten(1)[..., None].expand(-1, -1, 4))  # B×HW×4

    pred_boxes = ltrb_to_boxes(box_ltrb, stride).flatten(1, 2)
    weights = cell_weight.flatten(1)
    trained = weights > 0
    giou = generalized_iou(pred_boxes[trained], target_boxes[trained])
    box_loss = (weights[trained] * (1 - giou)).sum() / (weights.sum() + 1e-4)

    total = HEATMAP_WEIGHT * heatmap_loss + BOX_WEIGHT * box_loss
    return total, {"heatmap": heatmap_loss.item(), "box": box_loss.item()}
