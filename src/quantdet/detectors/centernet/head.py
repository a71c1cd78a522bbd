"""CenterNet/TTFNet-style dense head: class-centre heatmap and distances to the box sides."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantdet.detectors.centernet.fpn import conv_bn_relu

HEATMAP_PRIOR = 0.1  # CenterNet: initial centre probability, keeps the focal loss stable at start
BOX_SCALE = 16.0     # TTFNet: ReLU output × 16 px, so an initial output of ~1 is a mid-size box


def _branch(in_channels: int, channels: int, depth: int, outputs: int) -> nn.Sequential:
    layers = [conv_bn_relu(in_channels if i == 0 else channels, channels) for i in range(depth)]
    # The prediction conv has no BN: its bias carries the prior, and its output is what is decoded.
    return nn.Sequential(*layers, nn.Conv2d(channels, outputs, kernel_size=1))


class CenterHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels: int = 64, depth: int = 2):
        super().__init__()
        self.heatmap = _branch(in_channels, channels, depth, num_classes)
        self.box = _branch(in_channels, channels, depth, 4)
        nn.init.normal_(self.heatmap[-1].weight, std=0.01)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
        nn.init.normal_(self.box[-1].weight, std=0.01)
        nn.init.constant_(self.box[-1].bias, 1.0)  # start alive: a negative start would be a dead ReLU

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # ReLU then a constant scale: non-negative distances with one elementwise op after the
        # conv, which stays exact under per-tensor quantization of the output.
        return self.heatmap(features), F.relu(self.box(features)) * BOX_SCALE
