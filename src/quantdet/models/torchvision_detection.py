"""torchvision's one-stage detectors (RetinaNet, FCOS, SSDlite) as quantdet networks.

A network here (`TorchvisionNetwork`) holds the torchvision model's ``backbone`` and ``head``
under those names, so its state dict has torchvision's own keys (``backbone.body.conv1.weight``,
``head.classification_head.cls_logits.weight`` ...) and a torchvision state dict of the same
architecture loads into it as it is. Its forward normalises ``[0, 1]`` images itself, runs the
backbone (and FPN) and, per level, the head's convolutions up to their raw outputs, finest
level first:

* retinanet: ``(p3_box B×4A×H×W, p3_cls B×A·C×H×W, ..., p7_box, p7_cls)``
* fcos: ``(p3_box B×4×H×W, p3_cls B×C×H×W, p3_ctr B×1×H×W, ...)`` (the box output before the
  ReLU torchvision's head applies: the ReLU is part of decoding, so the prediction conv's
  output is quantized as it is)
* ssdlite: ``(l0_box B×4A×H×W, l0_cls B×A·(C+1)×H×W, ...)`` (class 0 the background)

Everything torchvision does after these (reshape to anchors, anchor generation, box coding,
sigmoid/softmax scores, top-k, NMS; the matching and losses in training) is float, outside the
network, done by torchvision's own code on a template model of the same config (`_template`):
its `compute_loss` for training and its `postprocess_detections` for decoding. Images are the
network's input size, so no GeneralizedRCNNTransform runs (no resize, boxes in input pixels).
"""
from __future__ import annotations

import functools
import json
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

# ImageNet statistics (RetinaNet, FCOS); SSDlite maps [0, 1] to [-1, 1]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
HALF = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v3_small")
# FPN levels P3-P7 (RetinaNet and FCOS): strides 8 ... 128
FPN_STRIDES = (8, 16, 32, 64, 128)
# SSDlite's finest output (MobileNetV3's C4) is at stride 16
SSD_FINEST_STRIDE = 16
# anchors per location: RetinaNet 3 scales x 3 ratios, FCOS a point, SSDlite ratios [2, 3]
ANCHORS_PER_LOCATION = {"retinanet": 9, "fcos": 1, "ssdlite": 6}
# the size SSDlite's builder probes its backbone's output channels at (its native size)
SSD_PROBE = 320


class TorchvisionNetwork(nn.Module):
    """images B×3×S×S in [0, 1] -> the raw per-level outputs of a torchvision one-stage head."""

    def __init__(self, kind: str, backbone: nn.Module, head: nn.Module, mean, std, num_classes: int):
        super().__init__()
        self.kind = kind
        self.backbone = backbone
        self.head = head
        self.num_classes = int(num_classes)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # torchvision's detection models freeze batch norm as FrozenBatchNorm2d (no
        # num_batches_tracked): their state dicts load here, where it is BatchNorm2d
        self._register_load_state_dict_pre_hook(_add_num_batches_tracked, with_module=True)

    def forward(self, images):
        x = (images - self.pixel_mean) / self.pixel_std
        features = list(self.backbone(x).values())
        outputs = []
        if self.kind == "retinanet":
            cls_head, box_head = self.head.classification_head, self.head.regression_head
            for f in features:
                outputs.append(box_head.bbox_reg(box_head.conv(f)))
                outputs.append(cls_head.cls_logits(cls_head.conv(f)))
        elif self.kind == "fcos":
            cls_head, box_head = self.head.classification_head, self.head.regression_head
            for f in features:
                shared = box_head.conv(f)
                outputs.append(box_head.bbox_reg(shared))
                outputs.append(cls_head.cls_logits(cls_head.conv(f)))
                outputs.append(box_head.bbox_ctrness(shared))
        else:  # ssdlite
            cls_list = self.head.classification_head.module_list
            box_list = self.head.regression_head.module_list
            for i, f in enumerate(features):
                outputs.append(box_list[i](f))
                outputs.append(cls_list[i](f))
        return tuple(outputs)


def _add_num_batches_tracked(module, state_dict, prefix, *args):
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
            key = f"{prefix}{name}.num_batches_tracked" if name else f"{prefix}num_batches_tracked"
            if f"{key[:-len('num_batches_tracked')]}running_mean" in state_dict and key not in state_dict:
                state_dict[key] = torch.tensor(0, dtype=torch.long)


# ---- building ----------------------------------------------------------------------------------

def per_level(kind: str) -> int:
    """Raw outputs per level."""
    return 3 if kind == "fcos" else 2


def _weights(arch: str, pretrained: bool):
    """torchvision's ImageNet weights enum of a backbone, or None."""
    if not pretrained:
        return None
    import torchvision.models as tvm

    return tvm.get_model_weights(arch).DEFAULT


def _resnet_fpn(arch: str, fpn_channels: int, p6_from_p5: bool, pretrained: bool = False):
    """A ResNet (BatchNorm2d, trainable: trained here) with an FPN over C3-C5 and P6/P7
    (torchvision's RetinaNet and FCOS layout), at `fpn_channels`."""
    from torchvision.models import resnet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = getattr(resnet, arch)(weights=_weights(arch, pretrained), norm_layer=nn.BatchNorm2d)
    c5 = body.inplanes  # channels of layer4's output
    in_channels = [c5 // 4, c5 // 2, c5]
    extra = LastLevelP6P7(fpn_channels if p6_from_p5 else c5, fpn_channels)
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels,
                           fpn_channels, extra_blocks=extra)


def retinanet_anchors(scale: float = 1.0):
    """torchvision's RetinaNet anchors (3 sizes per octave from 32, 64, ..., 512 px on P3-P7, 3
    aspect ratios) with every size times `scale`: at 1, torchvision's own generator. At 128 px
    input the objects of small-object data are 8-32 px, below its smallest anchor."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(float(x * scale * 2 ** (k / 3)) if scale != 1.0 else int(x * 2 ** (k / 3))
                        for k in range(3)) for x in (32, 64, 128, 256, 512))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def fcos_groups(channels: int) -> int:
    """GroupNorm groups of FCOS's head: torchvision's 32 at its 256 channels (its checkpoints
    are unchanged), fewer below, so that every group holds at least 8 channels. With 32 groups
    of 2 channels (64 channels), P7's 1x1 map below 256 px normalises 2 values per group: the
    output is +-1 whatever the input, and training from scratch diverged to NaN at batch 1."""
    return min(32, int(channels) // 8)


def build_torchvision(config: dict, pretrained: bool = False):
    """The torchvision detection model (RetinaNet/FCOS/SSD) a config describes, initialised
    as torchvision does; `pretrained`: the backbone's ImageNet weights (a download)."""
    kind, arch, classes = config["family"], config["arch"], int(config["num_classes"])
    if kind == "retinanet":
        from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

        backbone = _resnet_fpn(arch, config["fpn_channels"], p6_from_p5=True, pretrained=pretrained)
        model = RetinaNet(backbone, classes, anchor_generator=retinanet_anchors(config.get("anchor_scale") or 1.0))
        model.head = RetinaNetHead(backbone.out_channels, model.anchor_generator.num_anchors_per_location()[0],
                                   classes)
        return model
    if kind == "fcos":
        from torchvision.models.detection.fcos import FCOS

        backbone = _resnet_fpn(arch, config["fpn_channels"], p6_from_p5=True, pretrained=pretrained)
        model = FCOS(backbone, classes)
        groups = fcos_groups(config["fpn_channels"])
        for module in model.head.modules():
            if isinstance(module, nn.GroupNorm):
                module.num_groups = groups
        return model
    if kind == "ssdlite":
        from torchvision.models import mobilenetv3
        from torchvision.models.detection import _utils as det_utils
        from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
        from torchvision.models.detection.ssd import SSD
        from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init

        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        # as torchvision's builder: the reduced tail (Table 6 of MobileNetV3) unless ImageNet
        # weights are loaded (config["pretrained"] fixes the architecture, `pretrained` the weights)
        imagenet = bool(config.get("pretrained"))
        body = getattr(mobilenetv3, arch)(weights=_weights(arch, pretrained), norm_layer=norm_layer,
                                          reduced_tail=not imagenet)
        if not pretrained:
            _normal_init(body)
        backbone = _mobilenet_extractor(body, 6, norm_layer)
        size = (SSD_PROBE, SSD_PROBE)
        anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
        out_channels = det_utils.retrieve_out_channels(backbone, size)
        head = SSDLiteHead(out_channels, anchors.num_anchors_per_location(), classes + 1, norm_layer)
        return SSD(backbone, anchors, size, classes + 1, head=head, image_mean=HALF[0], image_std=HALF[1],
                   score_thresh=0.001, nms_thresh=0.55, detections_per_img=300, topk_candidates=300)
    raise ValueError(f"not a torchvision family: {kind!r}")


def build_network(config: dict, pretrained: bool = False) -> TorchvisionNetwork:
    from quantdet.errors import QuantdetError

    try:
        model = build_torchvision(config, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        raise QuantdetError(f"models.<role>.pretrained: torchvision's ImageNet weights of {config['arch']} are a "
                            f"download from download.pytorch.org, which failed ({type(e).__name__}: {e}); set "
                            "pretrained: false, or give a trained state dict as checkpoint") from None
    mean, std = HALF if config["family"] == "ssdlite" else IMAGENET
    return TorchvisionNetwork(config["family"], model.backbone, model.head, mean, std, config["num_classes"])


@functools.lru_cache(maxsize=16)
def _template_for(key: str):
    config = json.loads(key)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: not from the job's RNG
        torch.manual_seed(0)
        model = build_torchvision(config)
    model.backbone = None  # only its post-processing, matcher, box coder and losses are used
    return model.eval()


def _template(config: dict):
    """A torchvision model of this config, for its loss and post-processing code (its weights
    are never used), cached per config."""
    keys = ("family", "arch", "num_classes", "fpn_channels", "anchor_scale")
    return _template_for(json.dumps({k: config.get(k) for k in keys}, sort_keys=True))


# ---- raw outputs -> torchvision's head outputs and anchors ---------------------------------------

def _to_anchors(t, k: int):
    """B×(A·k)×H×W -> B×(H·W·A)×k, torchvision's order (location-major, then anchor)."""
    n, _, h, w = t.shape
    return t.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


def _levels(outputs, kind: str):
    step = per_level(kind)
    return [outputs[i:i + step] for i in range(0, len(outputs), step)]


def head_outputs(outputs, config: dict):
    """Per level, torchvision's head outputs: {"bbox_regression": [B×N_l×4], "cls_logits":
    [B×N_l×K] (+ "bbox_ctrness" for FCOS)}, and the feature-map-shaped tensors anchors need."""
    kind = config["family"]
    classes = int(config["num_classes"]) + (1 if kind == "ssdlite" else 0)
    out = {"bbox_regression": [], "cls_logits": []}
    if kind == "fcos":
        out["bbox_ctrness"] = []
    maps = []
    for level in _levels(outputs, kind):
        box, cls = level[0].float(), level[1].float()
        if kind == "fcos":
            box = F.relu(box)
            out["bbox_ctrness"].append(_to_anchors(level[2].float(), 1))
        out["bbox_regression"].append(_to_anchors(box, 4))
        out["cls_logits"].append(_to_anchors(cls, classes))
        maps.append(cls)
    return out, maps


def input_size_of(outputs, config: dict) -> int:
    """The input size from the finest level's height (inputs are multiples of 32 here)."""
    kind = config["family"]
    finest = SSD_FINEST_STRIDE if kind == "ssdlite" else FPN_STRIDES[0]
    return int(outputs[1].shape[-2]) * finest


def anchors_for(template, maps, input_size: int):
    """Per image, the anchors of every level concatenated (torchvision's order)."""
    from torchvision.models.detection.image_list import ImageList

    n = maps[0].shape[0]
    images = ImageList(maps[0].new_empty(n, 3, input_size, input_size), [(input_size, input_size)] * n)
    return template.anchor_generator(images, maps)


def loss(outputs, targets, config: dict):
    """torchvision's training loss of the family on raw outputs: (total, {part: float})."""
    from torchvision.ops import boxes as box_ops

    kind = config["family"]
    template = _template(config)
    per_lvl, maps = head_outputs(outputs, config)
    heads = {k: torch.cat(v, 1) for k, v in per_lvl.items()}
    input_size = input_size_of(outputs, config)
    anchors = anchors_for(template, maps, input_size)
    device = heads["cls_logits"].device
    targets = [_positive(t, device, 1 if kind == "ssdlite" else 0) for t in targets]
    if kind == "retinanet":
        parts = template.compute_loss(targets, heads, anchors)
    elif kind == "fcos":
        counts = [m.shape[-2] * m.shape[-1] for m in maps]
        parts = template.compute_loss(targets, heads, anchors, counts)
    else:
        matched = []
        for anchors_i, t in zip(anchors, targets):
            if t["boxes"].numel() == 0:
                matched.append(torch.full((anchors_i.size(0),), -1, dtype=torch.int64, device=device))
            else:
                matched.append(template.proposal_matcher(box_ops.box_iou(t["boxes"], anchors_i)))
        parts = template.compute_loss(targets, heads, anchors, matched)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _positive(target: dict, device, label_offset: int) -> dict:
    """A target with only the boxes of positive width and height (augmentation can crop a box to
    a line; torchvision's box coders take the log of its size), labels shifted by the offset."""
    boxes = target["boxes"].to(device).float()
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep], "labels": target["labels"].to(device).long()[keep] + label_offset}


@torch.no_grad()
def decode(outputs, config: dict, input_size: int, *, score_threshold: float, max_detections: int,
           nms_iou: float) -> list[dict]:
    """torchvision's own post-processing of the family (scores above `score_threshold`, its
    top-k candidates per level, box decoding, clipping to the input, class-wise NMS at
    `nms_iou`, the best `max_detections`), labels 0..C-1."""
    kind = config["family"]
    template = _template(config)
    template.score_thresh, template.nms_thresh = float(score_threshold), float(nms_iou)
    template.detections_per_img = int(max_detections)
    per_lvl, maps = head_outputs(tuple(o.float() for o in outputs), config)
    anchors = anchors_for(template, maps, input_size)
    shapes = [(input_size, input_size)] * maps[0].shape[0]
    if kind == "ssdlite":
        heads = {k: torch.cat(v, 1) for k, v in per_lvl.items()}
        detections = template.postprocess_detections(heads, anchors, shapes)
        for d in detections:
            d["labels"] = d["labels"] - 1
    else:
        counts = [h.shape[1] for h in per_lvl["cls_logits"]]
        split = [list(a.split(counts)) for a in anchors]
        detections = template.postprocess_detections(per_lvl, split, shapes)
    return [{"boxes": d["boxes"].float(), "scores": d["scores"].float(), "labels": d["labels"].long()}
            for d in detections]


def class_logits(outputs, kind: str):
    """B×C×N class logits (sigmoid semantics) over every anchor of every level: RetinaNet's and
    FCOS's class logits; SSDlite's log-odds of each class against the background."""
    anchors = ANCHORS_PER_LOCATION[kind]
    logits = []
    for level in _levels(outputs, kind):
        cls = level[1].float()
        n, c, h, w = cls.shape
        per = cls.view(n, anchors, c // anchors, h * w)
        if kind == "ssdlite":
            per = per[:, :, 1:] - per[:, :, :1]
        logits.append(per.permute(0, 2, 1, 3).reshape(n, per.shape[2], -1))
    return torch.cat(logits, 2)
