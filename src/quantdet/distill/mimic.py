"""Quantization mimic (Wei et al., ECCV 2018): the student learns the detection task and,
on regions of interest, the teacher's feature map, both maps passed through a uniform
quantizer:

    L = L_det + λ · 1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖² / D

f are the detector's feature maps (its family's `feature_taps`: an FPN output, a YOLO neck's
outputs; with several maps the term is their mean) pooled with RoIAlign on N regions: the ground-truth boxes and
the student's top-scoring predictions of the batch; r is a learned 1×1 convolution from the
student's channels to the teacher's; Q(x) = s · round(x / s) with full-precision
(straight-through) gradients. On the teacher's ReLU features Q has the paper's levels
{0, s, 2s, …}; on r(f_s), which may be negative, the grid continues below zero so that no
region is cut off from the gradient.

Our choice: the squared norm is divided by D = C·k·k, the elements of a pooled region. The
paper's unnormalised sum over D = 96·7·7 = 4704 elements would make λ = 1 weigh the mimic term
thousands of times the detection loss; per element, λ = 1 weighs them comparably, and the λ
sweep shows where the mimic term starts to dominate ("gradient focusing").

Variants (model names student-mimic-{variant}-w{b}a{b}): `alone` (no mimic term), `plain`
(mimic without Q), `qmimic` (quantization mimic); `_l{λ}` sets λ with `p` for the decimal
point (`qmimic_l0p1` is λ = 0.1, `qmimic_l10` is λ = 10).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import roi_align

from quantdet.distill.variants import MimicVariant, parse_variant  # noqa: F401 (re-exported)
from quantdet import detectors
from quantdet.quant.quantizer import round_ste

ADAPTATION = "mimic_adaptation"


def uniform_quantize(x: torch.Tensor, step: float) -> torch.Tensor:
    """s · round(x / s) with the straight-through gradient (full-precision gradients)."""
    return round_ste(x / step) * step


def _config(model: nn.Module) -> dict:
    return getattr(model, "detector_config", None) or {}


def tap_names(model: nn.Module) -> list[str]:
    """The modules whose outputs mimic distils (the detector family's feature taps)."""
    return detectors.of_model(model).feature_taps(model)


def feature_module(model: nn.Module, name: str | None = None) -> nn.Module:
    """A feature tap's module (default: the first), in an FP32 or a quantized model."""
    name = name or tap_names(model)[0]
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no {name} module: not the detector its config names") from None


class FeatureTap:
    """Keeps the output of one feature tap (default: the family's first) in the model's latest
    forward pass (a forward hook)."""

    def __init__(self, model: nn.Module, name: str | None = None):
        self.features: torch.Tensor | None = None
        self._handle = feature_module(model, name).register_forward_hook(self._keep)

    def _keep(self, _module, _args, output):
        self.features = output

    def remove(self) -> None:
        self._handle.remove()


def regions_of_interest(targets: list[dict], outputs, decode, topk: int) -> list[torch.Tensor]:
    """Per image, the ground-truth boxes and the student's `topk` best detections (xyxy, input
    pixels; ``decode``: the student's ``detectors.Decoder``); the detections are detached: they
    choose where to mimic, nothing more."""
    detections = decode(tuple(o.detach() for o in outputs), score_threshold=0.0,
                        max_detections=topk) if topk > 0 else None
    rois = []
    for b, target in enumerate(targets):
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        if detections is not None:
            boxes = torch.cat([boxes.to(detections[b]["boxes"].device), detections[b]["boxes"].float()])
        rois.append(boxes)
    return rois


def pooled(features: torch.Tensor, rois: list[torch.Tensor], size: int, stride: int) -> torch.Tensor:
    """RoIAlign of the regions (input-pixel boxes) on a stride-`stride` map: N×C×size×size."""
    rois = [r.to(features.device, features.dtype) for r in rois]
    return roi_align(features, rois, output_size=size, spatial_scale=1.0 / stride,
                     sampling_ratio=2, aligned=True)


def mimic_loss(teacher_rois: torch.Tensor, student_rois: torch.Tensor, adaptation: nn.Module,
               step: float | None) -> torch.Tensor:
    """1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖² / D; no Q when step is None (plain mimic)."""
    adapted = adaptation(student_rois)
    teacher_rois = teacher_rois.detach()
    if step is not None:
        adapted, teacher_rois = uniform_quantize(adapted, step), uniform_quantize(teacher_rois, step)
    if adapted.shape[0] == 0:
        return adapted.sum() * 0.0
    return 0.5 * ((teacher_rois - adapted) ** 2).flatten(1).mean(1).mean()


def add_adaptation(student: nn.Module, student_channels, teacher_channels) -> nn.Module:
    """r: a 1×1 convolution (one per feature tap when given lists of channels), registered on
    the student so the training loop's optimiser trains it (remove it with `remove_adaptation`
    before saving)."""
    if isinstance(student_channels, (list, tuple)):
        if len(student_channels) == 1:
            student_channels, teacher_channels = student_channels[0], teacher_channels[0]
        else:
            adaptation = nn.ModuleList(nn.Conv2d(s, t, kernel_size=1)
                                       for s, t in zip(student_channels, teacher_channels))
            student.add_module(ADAPTATION, adaptation)
            return adaptation
    adaptation = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    student.add_module(ADAPTATION, adaptation)
    return adaptation


def remove_adaptation(student: nn.Module) -> None:
    if hasattr(student, ADAPTATION):
        delattr(student, ADAPTATION)


class MimicTerm:
    """`fit`'s extra_loss: λ · mimic loss between the frozen teacher's and the student's
    feature maps (each of the family's taps; the mean over taps) on the batch's regions of
    interest."""

    def __init__(self, student: nn.Module, teacher: nn.Module, variant: MimicVariant, *, step: float,
                 roi_size: int, roi_topk: int, teacher_autocast: bool = False):
        self.variant, self.step, self.roi_size, self.roi_topk = variant, step, roi_size, roi_topk
        # channels_last as the student in `fit`: oneDNN's CPU convolutions are faster in NHWC
        self.teacher = teacher.eval().to(memory_format=torch.channels_last)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        student_taps, teacher_taps = tap_names(student), tap_names(self.teacher)
        if len(student_taps) != len(teacher_taps):
            raise ValueError(f"mimic: the student has {len(student_taps)} feature taps, the teacher "
                             f"{len(teacher_taps)}: their detectors must tap the same levels")
        self.student_taps = [FeatureTap(student, n) for n in student_taps]
        self.teacher_taps = [FeatureTap(self.teacher, n) for n in teacher_taps]
        self.teacher_autocast = teacher_autocast
        self._decoders: dict = {}

    def _decoder(self, student, input_size: int):
        # nms_iou 0.6: the regions' NMS, not the evaluation's setting
        if input_size not in self._decoders:
            self._decoders[input_size] = detectors.Decoder(_config(student), input_size, nms_iou=0.6)
        return self._decoders[input_size]

    def __call__(self, student, images, targets, outputs) -> tuple[torch.Tensor, dict]:
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16,
                                             enabled=self.teacher_autocast):
            self.teacher.to(images.device)(images)
        rois = regions_of_interest(targets, outputs, self._decoder(student, images.shape[-1]), self.roi_topk)
        adaptation = getattr(student, ADAPTATION)
        adaptations = list(adaptation) if isinstance(adaptation, nn.ModuleList) else [adaptation]
        losses = []
        for s_tap, t_tap, r in zip(self.student_taps, self.teacher_taps, adaptations):
            teacher_map, student_map = t_tap.features.float(), s_tap.features.float()
            stride = images.shape[-1] // student_map.shape[-1]
            losses.append(mimic_loss(pooled(teacher_map, rois, self.roi_size, stride),
                                     pooled(student_map, rois, self.roi_size, stride),
                                     r, self.step if self.variant.quantized else None))
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        return self.variant.weight * loss, {"mimic": loss.item(), "rois": float(sum(len(r) for r in rois))}

    def remove(self) -> None:
        for tap in self.student_taps + self.teacher_taps:
            tap.remove()
