"""centernet: quantdet's own detector, a timm backbone + FPN merged to stride 4 + CenterNet-style
dense head (class heatmap and ltrb box distances per cell).

Raw outputs: (heatmap logits B×C×S/4×S/4, box ltrb B×4×S/4×S/4). Decoding: 3×3 peak picking,
top-k, boxes around the cell centres, class-wise NMS (``quantdet.detectors.centernet.decode``).
"""
from __future__ import annotations

from pathlib import Path

from quantdet.detectors import register_detector
from quantdet.detectors.base import DetectorFamily
from quantdet.errors import ParamsError, QuantdetError

# The FPN's output is the ReLU ending its finest merge (FeaturePyramid.merges[0]); it keeps
# this name in quantized (FX-traced, BN-folded) models, whose graph drops the fpn module.
FEATURE_MODULE = "fpn.merges.0.2"
STRIDE = 4


@register_detector
class CenterNet(DetectorFamily):
    name = "centernet"
    description = ("timm backbone (any name with features_only) + FPN to stride 4 + "
                   "CenterNet-style heatmap/ltrb head; quantdet's own, trained from scratch")

    def architectures(self) -> list[str]:
        return ["any timm model with features_only at strides 4-32, e.g. resnet10t, resnet18d, "
                "mobilenetv3_large_100, efficientnet_b0"]

    def example(self) -> dict:
        return {"detector": self.name, "backbone": "resnet10t", "fpn_channels": 8, "head_channels": 8,
                "pretrained": False}

    @staticmethod
    def _backbone(model_params: dict) -> str:
        return model_params.get("arch") or model_params.get("backbone") or ""

    def check(self, model_params: dict, key: str) -> None:
        import difflib

        import timm  # lazily: it imports torch, which reading params does not otherwise need

        name = self._backbone(model_params)
        if not name:
            raise ParamsError(f"{key}.backbone: centernet needs a timm backbone name")
        checkpoint = model_params.get("checkpoint")
        if checkpoint and not Path(checkpoint).expanduser().is_file():
            raise ParamsError(f"{key}.checkpoint: {checkpoint} does not exist (a quantdet model file "
                              "or a state dict of this network)")
        # Hub and local weights name no registered architecture; a `.tag` names pretrained weights.
        if ":" in name:
            return
        known = timm.list_models()
        architecture = name.split(".", 1)[0]
        if architecture not in known:
            close = difflib.get_close_matches(architecture, known, n=5)
            hint = f" (close names: {', '.join(close)})" if close else " (timm.list_models() lists them)"
            raise ParamsError(f"{key}.backbone: timm has no model {name!r}{hint}")

    def config(self, model_params: dict, num_classes: int) -> dict:
        return {"family": self.name, "backbone": self._backbone(model_params), "num_classes": num_classes,
                "fpn_channels": model_params["fpn_channels"], "head_channels": model_params["head_channels"],
                "pretrained": model_params.get("pretrained", False)}

    def build(self, config: dict, pretrained: bool = False):
        from quantdet.detectors.centernet.network import build_detector

        return build_detector(config["backbone"], config["num_classes"], config["fpn_channels"],
                              config["head_channels"], pretrained=pretrained)

    def load_checkpoint(self, path, class_names, num_classes):
        raise QuantdetError(f"{path}: centernet reads quantdet model files only")

    def loss_fn(self, model):
        from quantdet.detectors.centernet.loss import detection_loss

        return detection_loss

    def decode(self, outputs, config, input_size, *, score_threshold, max_detections, nms_iou):
        from quantdet.detectors.centernet.decode import decode_detections

        return decode_detections(tuple(outputs), STRIDE, score_threshold=score_threshold,
                                 max_detections=max_detections, nms_iou=nms_iou)

    def output_names(self, config: dict) -> list[str]:
        return ["heatmap", "boxes"]

    def class_logits(self, outputs):
        return outputs[0]

    def stride(self, config: dict) -> int:
        return STRIDE

    def feature_taps(self, model) -> list[str]:
        return [FEATURE_MODULE]

    def tap_channels(self, config: dict) -> list[int]:
        return [config["fpn_channels"]]

    def layer_group(self, target: str) -> str:
        """`backbone.layer2.0.conv1` -> backbone.layer2; the backbone's stem (conv1, act1,
        maxpool) -> backbone.stem; `head.heatmap.1.0` -> head.heatmap.1 (one hidden layer of a
        head); BatchNorm-folded convolutions (`backbone_layer1_0_conv2_bnfolded_4`) by their conv."""
        if "." not in target and "_bnfolded" in target:
            target = target.split("_bnfolded")[0].replace("_", ".")
        parts = target.split(".")
        if parts[0] == "head":
            return ".".join(parts[:3])
        if parts[0] == "backbone" and len(parts) > 1 and not parts[1].startswith(("layer", "stage", "block")):
            return "backbone.stem"
        return ".".join(parts[:2])

    def input_statistics(self, model):
        return model.pixel_mean.detach(), model.pixel_std.detach()

    def describe(self, config: dict) -> str:
        return f"`{self._backbone(config)}` (FPN + anchor-free head)"
