"""fcos: torchvision's FCOS (ResNet + FPN P3-P7, anchor-free: one point per location, focal +
GIoU + centerness losses). Raw outputs per level: ltrb B×4×H×W (before its ReLU), class logits
B×C×H×W, centerness B×1×H×W; decoded in float by torchvision's own post-processing."""
from quantdet.detectors import register_detector
from quantdet.detectors._torchvision import TorchvisionFamily
from quantdet.detectors._torchvision import RESNETS


@register_detector
class Fcos(TorchvisionFamily):
    name = kind = "fcos"
    title = "FCOS"
    backbones = RESNETS
    example_arch = "resnet18"
    description = ("torchvision FCOS (arch: resnet18/34/50/101 + FPN P3-P7 at fpn_channels, a multiple of 8; GroupNorm of at least 8 channels a group; "
                   "anchor-free); quantized: backbone, FPN, head convs to the raw per-level maps (GroupNorm "
                   "float); float: points, box decoding, top-k, NMS")
