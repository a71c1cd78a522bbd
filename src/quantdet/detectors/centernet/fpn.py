"""Feature pyramid merged down to the stride-4 level, the resolution the dense head predicts at."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    # conv -> BN -> ReLU is the pattern the quantizers fold (BN into the conv) and fuse (ReLU into
    # the int8 kernel); keep every hidden layer of the neck and head in this form.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FeaturePyramid(nn.Module):
    """Top-down FPN over backbone levels at strides (4, 8, 16, 32), returning one stride-4 map.

    Each level's 1×1 lateral is added to the ×2 nearest upsampled coarser level, and a 3×3
    conv refines every merged level (a light U-Net decoder): on small inputs the coarse levels
    carry most of the semantics, and the refinement lets them reach the stride-4 output.
    """

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, kernel_size=1) for c in in_channels)
        self.merges = nn.ModuleList(conv_bn_relu(channels, channels) for _ in in_channels[:-1])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        merged = self.laterals[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            upsampled = F.interpolate(merged, scale_factor=2, mode="nearest")
            merged = self.merges[level](self.laterals[level](features[level]) + upsampled)
        return merged
