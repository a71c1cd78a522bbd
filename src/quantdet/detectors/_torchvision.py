"""What the torchvision families (retinanet, fcos, ssdlite) share: one class, each family a
subclass naming its kind, backbones and strides. The networks, losses and decoding are in
`quantdet.models.torchvision_detection` (imported inside the hooks: listing the families loads
neither torch nor torchvision).

Quantized region: the whole network the forward runs, backbone, FPN (or SSDlite's extra layers)
and every conv of the heads up to their raw per-level outputs, whose prediction convs get 8-bit
output quantizers (every conv an integer kernel in onnxruntime). Float, outside the integer
model: the reshape to anchors, anchor generation, box coding, sigmoid/softmax scores, top-k and
NMS (torchvision's own post-processing), and in training its matching and losses. FCOS's heads
keep their GroupNorm float (no BatchNorm to fold); the ReLU on its box output is applied in
decoding.
"""
from __future__ import annotations

import re
from pathlib import Path

from quantdet.detectors.base import DetectorFamily
from quantdet.errors import ParamsError, QuantdetError

DEFAULT_FPN_CHANNELS = 256   # torchvision's
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v3_small")


class TorchvisionFamily(DetectorFamily):
    kind = ""                      # retinanet | fcos | ssdlite
    backbones: tuple = ()
    example_arch = ""
    title = ""                     # "RetinaNet"
    integer_outputs = True
    letterbox = None               # torchvision pads right/bottom with zeros, as quantdet does
    fpn = True                     # an FPN (P3-P7) rather than SSDlite's extra layers

    # ---- what it accepts ---------------------------------------------------------------
    def example(self) -> dict:
        params = {"detector": self.name, "arch": self.example_arch}
        if self.fpn:
            params["fpn_channels"] = 32
        return params

    def architectures(self) -> list[str]:
        return list(self.backbones)

    def _fpn_channels(self, model_params: dict) -> int:
        return int(model_params.get("fpn_channels") or DEFAULT_FPN_CHANNELS)

    def check(self, model_params: dict, key: str) -> None:
        import difflib

        arch = model_params.get("arch")
        checkpoint = model_params.get("checkpoint")
        if not arch:
            raise ParamsError(f"{key}.arch: the {self.name} family needs a backbone, one of "
                              f"{', '.join(self.backbones)} (a checkpoint is a state dict: it names none)")
        if arch not in self.backbones:
            close = difflib.get_close_matches(str(arch), self.backbones, n=3, cutoff=0.4)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ParamsError(f"{key}.arch: {self.name} has no backbone {arch!r}{hint}; it takes "
                              f"{', '.join(self.backbones)}")
        if checkpoint and not Path(checkpoint).expanduser().is_file():
            raise ParamsError(f"{key}.checkpoint: {checkpoint} does not exist (a torchvision state dict of "
                              f"this {self.title})")
        if model_params.get("anchor_scale") is not None and self.kind != "retinanet":
            raise ParamsError(f"{key}.anchor_scale: only retinanet's anchors take a scale ({self.name}'s "
                              "are " + ("points at each stride" if self.kind == "fcos" else
                                        "relative to the input (min_ratio, max_ratio)") + ")")
        channels = self._fpn_channels(model_params)
        if self.kind == "fcos" and (channels % 8 or channels < 32):
            raise ParamsError(f"{key}.fpn_channels: fcos's head normalises with GroupNorm, at least 8 "
                              f"channels per group (32 groups from 256 channels, as torchvision): {channels} "
                              "must be a multiple of 8, and at least 32")

    # ---- building ----------------------------------------------------------------------
    def config(self, model_params: dict, num_classes: int) -> dict:
        """``{"family", "arch", "num_classes", "fpn_channels" (FPN families), "pretrained",
        "tap_channels"}``."""
        self.check(model_params, "models.<role>")
        config = {"family": self.name, "arch": str(model_params["arch"]), "num_classes": int(num_classes),
                  "pretrained": bool(model_params.get("pretrained", False))}
        if self.fpn:
            config["fpn_channels"] = self._fpn_channels(model_params)
        scale = model_params.get("anchor_scale")
        if scale is not None and float(scale) != 1.0:   # torchvision's sizes: no key, as before
            config["anchor_scale"] = float(scale)
        network = self._build(config)
        taps = self.feature_taps(network)
        if not self.fpn:  # SSDlite's depend on the MobileNet: kept for its quantized graphs
            config["tap_names"] = taps
        config["tap_channels"] = _tap_channels(network, taps)
        return config

    def _build(self, config: dict, pretrained: bool = False):
        from quantdet.models.torchvision_detection import build_network

        return build_network(config, pretrained=pretrained)

    def build(self, config: dict, pretrained: bool = False):
        network = self._build(config, pretrained)
        network.detector_config = dict(config)
        return network

    def load_checkpoint(self, path: Path, class_names: list[str], num_classes: int):
        raise QuantdetError(f"{path}: the {self.name} family reads a PyTorch state dict of its network "
                            f"(torch.save(model.state_dict()), or torchvision references' checkpoint with its "
                            "'model' entry) or a quantdet model file: this file is neither")

    # ---- training and decoding ---------------------------------------------------------
    def loss_fn(self, model):
        from quantdet import detectors
        from quantdet.models import torchvision_detection as tvd

        config = detectors.config_of(model)

        def loss(outputs, targets, stride=None):
            return tvd.loss(outputs, targets, config)

        return loss

    def decode(self, outputs, config, input_size, *, score_threshold, max_detections, nms_iou):
        from quantdet.models import torchvision_detection as tvd

        return tvd.decode(outputs, config, input_size, score_threshold=score_threshold,
                          max_detections=max_detections, nms_iou=nms_iou)

    def class_logits(self, outputs):
        from quantdet.models import torchvision_detection as tvd

        return tvd.class_logits(outputs, self.kind)

    def output_names(self, config: dict) -> list[str]:
        parts = ("box", "cls", "ctr") if self.kind == "fcos" else ("box", "cls")
        levels = ([f"p{i}" for i in range(3, 8)] if self.fpn else [f"l{i}" for i in range(6)])
        return [f"{level}_{part}" for level in levels for part in parts]

    def stride(self, config: dict) -> int:
        return 8 if self.fpn else 16

    # ---- quantization ------------------------------------------------------------------
    def feature_taps(self, model) -> list[str]:
        """The module producing each level's feature map, finest first: the FPN's output convs
        (``backbone.fpn.layer_blocks.<i>.0``) and P6/P7 (``backbone.fpn.extra_blocks.p6/p7``);
        SSDlite: the last activation of each backbone output (``backbone.features.0.….2``,
        ``backbone.extra.<i>.2.2``). Their names are the same in the FX-traced, BN-folded graph."""
        if self.fpn:
            return [f"backbone.fpn.layer_blocks.{i}.0" for i in range(3)] + \
                   ["backbone.fpn.extra_blocks.p6", "backbone.fpn.extra_blocks.p7"]
        config = getattr(model, "detector_config", None)
        if config and "tap_names" in config:
            return list(config["tap_names"])
        return _ssd_taps(model)

    def tap_channels(self, config: dict) -> list[int]:
        return [int(c) for c in config["tap_channels"]]

    def layer_group(self, layer_name: str) -> str:
        """``backbone_body_layer2_0_conv1_bnfolded_3`` -> backbone.layer2 (a ResNet stage), the
        stem -> backbone.stem, the FPN -> fpn; SSDlite's MobileNet blocks -> backbone.block<i>,
        its extra layers -> backbone.extra<i>; the heads -> head.classification /
        head.regression (SSDlite per level: head.classification.<i>)."""
        name = layer_name.split("_bnfolded")[0]
        s = r"[._]"
        rules = [(rf"^backbone{s}body{s}(layer\d)", "backbone.{0}"), (rf"^backbone{s}body", "backbone.stem"),
                 (rf"^backbone{s}fpn", "fpn"),
                 (rf"^backbone{s}features{s}\d+{s}(\d+)", "backbone.block{0}"),
                 (rf"^backbone{s}extra{s}(\d+)", "backbone.extra{0}"),
                 (rf"^head{s}(classification|regression){s}head{s}module{s}list{s}(\d+)", "head.{0}.{1}"),
                 (rf"^head{s}(classification|regression){s}head", "head.{0}")]
        for pattern, group in rules:
            match = re.match(pattern, name)
            if match:
                return group.format(*match.groups())
        return re.split(r"[._]", name)[0]

    def input_statistics(self, model):
        return model.pixel_mean.detach(), model.pixel_std.detach()

    def describe(self, config: dict) -> str:
        fpn = f" + FPN {config['fpn_channels']}" if config.get("fpn_channels") else ""
        anchors = f", anchors ×{config['anchor_scale']:g}" if config.get("anchor_scale") else ""
        return f"torchvision {self.title} `{config.get('arch')}`{fpn}{anchors}"


def _tap_channels(network, taps: list[str]) -> list[int]:
    import torch

    channels = []
    for name in taps:
        module = network.get_submodule(name)
        if isinstance(module, torch.nn.Conv2d):
            channels.append(int(module.out_channels))
        else:  # an activation: the channels of the conv before it in its block
            parent = network.get_submodule(name.rsplit(".", 1)[0])
            conv = [m for m in parent.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            channels.append(int(conv.out_channels))
    return channels


def _last_leaf(prefix: str, module) -> str:
    names = [n for n, m in module.named_modules() if not list(m.children())]
    return f"{prefix}.{names[-1]}"


def _ssd_taps(model) -> list[str]:
    """SSDlite: the last leaf module of each backbone output (features.0, features.1, extra.i)."""
    backbone = model.backbone
    taps = [_last_leaf(f"backbone.features.{i}", block) for i, block in enumerate(backbone.features)]
    taps += [_last_leaf(f"backbone.extra.{i}", block) for i, block in enumerate(backbone.extra)]
    return taps
