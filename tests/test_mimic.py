"""Quantization mimic: variants, the loss, RoI pooling and feature taps on real detectors."""
import pytest
import torch
import torch.nn as nn

from quantdet.distill.mimic import (ADAPTATION, FeatureTap, MimicTerm, add_adaptation, mimic_loss,
                                    parse_variant, pooled, remove_adaptation, uniform_quantize)
from quantdet.detectors.centernet.network import build_detector
from quantdet.methods import get_method
from quantdet.quant.qat import prepare_qat


@pytest.mark.parametrize("name, mimic, quantized, weight", [
    ("alone", False, False, 1.0), ("plain", True, False, 1.0), ("qmimic", True, True, 1.0),
    ("qmimic_l0p1", True, True, 0.1), ("qmimic_l10", True, True, 10.0), ("plain_l2p5", True, False, 2.5)])
def test_variants(name, mimic, quantized, weight):
    v = parse_variant(name, default_weight=1.0)
    assert (v.mimic, v.quantized, v.weight) == (mimic, quantized, weight)


@pytest.mark.parametrize("name", ["alone_l2", "qmimic_0p1", "mimic", "qmimic_l"])
def test_bad_variants_are_rejected(name):
    with pytest.raises(ValueError, match="not a mimic variant"):
        parse_variant(name, 1.0)


def _identity_adaptation(channels):
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return conv


@pytest.mark.parametrize("step", [None, 0.25])
def test_mimic_loss_is_zero_for_identical_features(step):
    features = torch.rand(5, 6, 7, 7) * 3
    assert mimic_loss(features, features.clone(), _identity_adaptation(6), step).item() == 0.0


@pytest.mark.parametrize("step", [None, 0.25])
def test_mimic_gradient_reaches_the_adaptation_layer_and_the_student(step):
    torch.manual_seed(0)
    teacher = torch.rand(5, 8, 7, 7) * 3
    student = torch.rand(5, 6, 7, 7, requires_grad=True)
    adaptation = nn.Conv2d(6, 8, 1)
    mimic_loss(teacher, student, adaptation, step).backward()
    assert adaptation.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0


def test_uniform_quantizer_levels_and_straight_through_gradient():
    x = torch.tensor([0.0, 0.1, 0.2, 0.4, 1.0], requires_grad=True)
    q = uniform_quantize(x, 0.25)
    assert q.tolist() == [0.0, 0.0, 0.25, 0.5, 1.0]
    q.sum().backward()
    assert x.grad.tolist() == [1.0] * 5


def test_roi_pooling_on_the_stride_4_map():
    features = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    out = pooled(features, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])], size=2, stride=4)
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0, 0, 0] < out[0, 0, 1, 1]


def test_feature_taps_and_mimic_term_on_fp32_teacher_and_quantized_student():
    torch.manual_seed(0)
    teacher = build_detector("resnet10t", num_classes=3, fpn_channels=24, head_channels=16).eval()
    student = build_detector("resnet10t", num_classes=3, fpn_channels=16, head_channels=16).eval()
    qstudent, _ = prepare_qat(student, get_method("qat", "fqn").recipe, 8, 8, [torch.rand(2, 3, 64, 64)], 1, 0.999, 0.1)
    tap = FeatureTap(qstudent)
    qstudent(torch.rand(2, 3, 64, 64))
    assert tap.features.shape == (2, 16, 16, 16)
    tap.remove()

    adaptation = add_adaptation(qstudent, 16, 24)
    term = MimicTerm(qstudent, teacher, parse_variant("qmimic", 1.0), step=0.25, roi_size=3, roi_topk=2)
    qstudent.train()
    images = torch.rand(2, 3, 64, 64)
    outputs = qstudent(images)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    loss, parts = term(qstudent, images, targets, outputs)
    assert parts["rois"] == 1 + 2 * 2  # one ground-truth box, two detections per image
    loss.backward()
    assert adaptation.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in qstudent.named_parameters() if not n.startswith(ADAPTATION))
    term.remove()
    remove_adaptation(qstudent)
    assert not any(k.startswith(ADAPTATION) for k in qstudent.state_dict())
