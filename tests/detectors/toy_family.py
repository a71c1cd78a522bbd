"""A detector family of a user's own, in one file: a three-conv body to stride 8 and a
single-level dense head (class logits and ltrb distances per cell), trained with quantdet's
heatmap loss and decoded by its peak decoder at stride 8. Registered with quantdet's detector
registry when this module is imported (QUANTDET_DETECTORS=tests.detectors.toy_family); the
registry's contract test (test_contract.py) runs it like the built-in families."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantdet.detectors import register_detector
from quantdet.detectors.base import DetectorFamily

STRIDE = 8


class ToyNet(nn.Module):
    def __init__(self, num_classes: int, width: int):
        super().__init__()
        layers, channels = [], 3
        for i in range(3):
            out = width * (2 if i == 2 else 1)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.box = nn.Conv2d(channels, 4, 1)
        nn.init.constant_(self.cls.bias, -2.0)

    def forward(self, images):
        features = self.body(images)
        return self.cls(features), F.relu(self.box(features)) * STRIDE


@register_detector
class Toy(DetectorFamily):
    name = "toy"
    description = "toy: three convs to stride 8 and a one-level dense head (tests/detectors/toy_family.py)"

    def example(self):
        return {"detector": self.name, "arch": "toy16"}

    def architectures(self):
        return ["toy8", "toy16", "toy32"]

    def check(self, model_params, key):
        from quantdet.errors import ParamsError

        if model_params.get("arch") not in self.architectures():
            raise ParamsError(f"{key}.arch: toy has no architecture {model_params.get('arch')!r}")

    def config(self, model_params, num_classes):
        return {"family": self.name, "arch": model_params["arch"], "num_classes": num_classes}

    def build(self, config, pretrained=False):
        return ToyNet(config["num_classes"], int(config["arch"][3:]))

    def loss_fn(self, model):
        from quantdet.detectors.centernet.loss import detection_loss

        return detection_loss

    def decode(self, outputs, config, input_size, *, score_threshold, max_detections, nms_iou):
        from quantdet.detectors.centernet.decode import decode_detections

        return decode_detections(tuple(outputs), STRIDE, score_threshold=score_threshold,
                                 max_detections=max_detections, nms_iou=nms_iou)

    def output_names(self, config):
        return ["scores", "ltrb"]

    def class_logits(self, outputs):
        return outputs[0]

    def stride(self, config):
        return STRIDE

    def feature_taps(self, model):
        return ["body.8"]

    def tap_channels(self, config):
        return [2 * int(config["arch"][3:])]

    def layer_group(self, layer_name):
        return layer_name.split("_")[0]
