"""ssdlite: torchvision's SSDlite (MobileNetV3 + SSDlite extra layers, 6 levels from stride 16,
6 default boxes per location, softmax over C+1 classes with hard negative mining). Raw outputs
per level: box deltas B×24×H×W and class logits B×6(C+1)×H×W (class 0 the background);
decoded in float by torchvision's own post-processing. Its native size is 320 px."""
from quantdet.detectors import register_detector
from quantdet.detectors._torchvision import TorchvisionFamily
from quantdet.detectors._torchvision import MOBILENETS


@register_detector
class SSDLite(TorchvisionFamily):
    name = kind = "ssdlite"
    title = "SSDlite"
    backbones = MOBILENETS
    example_arch = "mobilenet_v3_small"
    fpn = False
    description = ("torchvision SSDlite (arch: mobilenet_v3_large/small + extra layers, 6 levels; native 320 px); "
                   "quantized: backbone, extra layers, head convs to the raw per-level maps; float: default "
                   "boxes, box coding, softmax, top-k, NMS")
