"""retinanet: torchvision's RetinaNet (ResNet + FPN P3-P7, 9 anchors per location, focal loss),
the detector of FQN's W4A4 results. Raw outputs per level: box deltas B×36×H×W and class logits
B×9C×H×W; torchvision's anchors, box coding, top-k and NMS decode them in float
(`quantdet.models.torchvision_detection`)."""
from quantdet.detectors import register_detector
from quantdet.detectors._torchvision import TorchvisionFamily
from quantdet.detectors._torchvision import RESNETS


@register_detector
class RetinaNet(TorchvisionFamily):
    name = kind = "retinanet"
    title = "RetinaNet"
    backbones = RESNETS
    example_arch = "resnet18"
    description = ("torchvision RetinaNet (arch: resnet18/34/50/101 + FPN P3-P7 at fpn_channels, focal loss); "
                   "quantized: backbone, FPN, both heads' convs to the raw per-level maps; float: anchors, "
                   "box coding, top-k, NMS")
