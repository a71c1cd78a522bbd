"""Detector = timm backbone (any name) + FPN merged to stride 4 + CenterNet-style dense head."""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

from quantdet.detectors.centernet.fpn import FeaturePyramid
from quantdet.detectors.centernet.head import CenterHead

PYRAMID_STRIDES = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pyramid_positions(reductions: list[int], backbone: str) -> list[int]:
    """Positions, among the backbone's feature outputs, of the last map at each pyramid stride."""
    positions = []
    for stride in PYRAMID_STRIDES:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ValueError(f"backbone {backbone!r} has no feature map at stride {stride} (has {reductions})")
        positions.append(matches[-1])
    return positions


class Detector(nn.Module):
    """``forward(images B×3×S×S in [0, 1]) -> (heatmap_logits B×C×S/4×S/4, box_ltrb B×4×S/4×S/4)``.

    ``box_ltrb`` holds distances in input pixels from each cell centre to the box's four sides.
    """

    stride = 4

    def __init__(self, backbone: str, num_classes: int, fpn_channels: int = 64, head_channels: int = 64,
                 pretrained: bool = False, head_depth: int = 2):
        super().__init__()
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.backbone = timm.create_model(backbone, pretrained=pretrained, features_only=True)
        info = self.backbone.feature_info
        self.pyramid_positions = _pyramid_positions(info.reduction(), backbone)
        in_channels = [info.channels()[i] for i in self.pyramid_positions]
        self.fpn = FeaturePyramid(in_channels, fpn_channels)
        self.head = CenterHead(fpn_channels, num_classes, head_channels, head_depth)
        # Normalisation lives in the model as fixed buffers: callers feed [0, 1] images, and
        # ImageNet-pretrained weights see the statistics they were trained on.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)
        pyramid = [features[i] for i in self.pyramid_positions]
        return self.head(self.fpn(pyramid))


def build_detector(backbone: str, num_classes: int, fpn_channels: int = 64, head_channels: int = 64,
                   pretrained: bool = False) -> Detector:
    return Detector(backbone, num_classes, fpn_channels, head_channels, pretrained)
