"""Zero-shot quantization parts: BN-statistics loss, ZeroQ, the GDFQ generator, AIT."""
import pytest
import torch
import torch.nn as nn

from quantdet.detectors.centernet.network import build_detector
from quantdet.quant.modules import QuantConv2d
from quantdet.zeroshot.ait import (GradientInflation, changed_fraction, distillation_loss,
                                   inflation_factor)
from quantdet.zeroshot.bn_stats import BatchNormStatistics
from quantdet.zeroshot.distilled import distill_images
from quantdet.zeroshot.generator import ConditionalGenerator, detection_class_loss, train_generator
from tests.quant_models import tiny_model


def _set_running_statistics(model, x):
    """Give every BN layer the statistics its input has for x (upstream layers first)."""
    with BatchNormStatistics(model) as bns, torch.no_grad():
        for index, layer in enumerate(bns.layers):
            model(x)
            mean, std = bns.recorded[index]
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(std ** 2)


def _detector_with_statistics(seed=0):
    """A small detector whose BN layers hold non-trivial running statistics."""
    torch.manual_seed(seed)
    model = build_detector("resnet10t", num_classes=3, fpn_channels=16, head_channels=16)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            smooth = nn.functional.interpolate(torch.rand(8, 3, 8, 8), size=64, mode="bilinear")
            model(smooth)
    return model.eval()


def test_bn_loss_is_zero_at_the_running_statistics_and_positive_elsewhere():
    model = tiny_model()
    x = torch.rand(6, 3, 32, 32)
    _set_running_statistics(model, x)
    with BatchNormStatistics(model) as bns:
        model(x)
        assert bns.loss().item() < 1e-10
        model(torch.rand(6, 3, 32, 32) * 3)
        assert bns.loss().item() > 1e-3


def test_bn_loss_needs_batchnorm_layers():
    with pytest.raises(ValueError, match="no BatchNorm"):
        BatchNormStatistics(nn.Conv2d(3, 3, 1))


def test_zeroq_lowers_the_bn_loss_and_gives_valid_images():
    model = _detector_with_statistics()
    images, history = distill_images(model, 4, 64, batch_size=4, steps=15, lr=0.1, seed=0)
    assert images.shape == (4, 3, 64, 64)
    assert 0 <= images.min() and images.max() <= 1
    assert history["last_loss"][0] < 0.85 * history["first_loss"][0]


def test_generator_output_shape_and_range():
    generator = ConditionalGenerator(num_classes=5, image_size=32, noise_dim=8, channels=8)
    noise, labels = torch.randn(3, 8) * 10, torch.tensor([0, 4, 2])
    out = generator(noise, labels)
    assert out.shape == (3, 3, 32, 32)
    assert out.min() >= -1 and out.max() <= 1
    images = generator.sample(noise, labels)
    assert 0 <= images.min() and images.max() <= 1


def test_class_term_prefers_the_sampled_class_at_the_strongest_cells():
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[0, 1, 2, 2] = logits[1, 2, 0, 0] = 5.0
    right = detection_class_loss(logits, torch.tensor([1, 2]), topk=1)
    wrong = detection_class_loss(logits, torch.tensor([0, 0]), topk=1)
    assert right < 0.05 < wrong


def test_generator_training_brings_bn_statistics_closer():
    model = _detector_with_statistics()
    _, history = train_generator(model, 3, 64, iterations=25, batch_size=4, lr=1e-2, betas=(0.5, 0.999),
                                 bns_weight=1.0, class_topk=2, noise_dim=8, channels=8, seed=0)
    assert sum(history["bns"][-5:]) < 0.9 * sum(history["bns"][:5])


def test_distillation_loss_is_zero_against_itself_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = (torch.randn(2, 3, 8, 8), torch.rand(2, 4, 8, 8) * 10 + 1)
    loss, _ = distillation_loss(teacher, teacher, stride=4)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    other = (teacher[0] + torch.randn(2, 3, 8, 8), teacher[1])
    assert distillation_loss(other, teacher, stride=4)[0].item() > 0.01


def _toy_layer(bits=4, seed=0):
    torch.manual_seed(seed)
    layer = QuantConv2d.from_float(nn.Conv2d(8, 8, 3), bits)
    layer.weight.grad = torch.randn_like(layer.weight) * 1e-4
    return layer


def test_gradient_inflation_reaches_the_change_fraction_within_its_step_budget():
    layer, lr, rho = _toy_layer(), 0.01, 0.2
    calls = []

    def fraction(kappa):
        calls.append(kappa)
        return changed_fraction(layer, lr * kappa * layer.weight.grad)

    assert fraction(1.0) < rho
    calls.clear()
    kappa = inflation_factor(fraction, rho, kappa_cap=1e6)
    doublings = sum(1 for k in calls if k == int(k) and k > 1 and (int(k) & (int(k) - 1)) == 0)
    assert len(calls) <= 1 + doublings + 5  # κ = 1, doubling, at most 5 bisection steps
    assert changed_fraction(layer, lr * kappa * layer.weight.grad) >= rho
    assert changed_fraction(layer, lr * kappa / 2 * layer.weight.grad) < rho


def test_gradient_inflation_respects_its_cap():
    layer = _toy_layer()
    kappa = inflation_factor(lambda k: changed_fraction(layer, 0.01 * k * layer.weight.grad), 0.2, kappa_cap=4)
    assert kappa == 4


def test_inflated_sgd_step_changes_the_fraction_of_integer_weights():
    layer = _toy_layer()
    model = nn.Sequential(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inflation = GradientInflation(total_iters=10, rho_start=0.2, rho_end=0.0, kappa_max=1e6, warmup_iters=0)
    before = layer.integer_weight().clone()
    parts = inflation(model, optimizer, iteration=0)
    optimizer.step()
    changed = (layer.integer_weight() != before).float().mean().item()
    assert parts["kappa"] > 1 and changed >= 0.2
    assert inflation.rho(10) == 0.0 and inflation.rho(5) == pytest.approx(0.1)


def test_kappa_cap_warms_up():
    inflation = GradientInflation(total_iters=100, rho_start=0.1, rho_end=0.0, kappa_max=64, warmup_iters=9)
    caps = [inflation.kappa_cap(i) for i in range(12)]
    assert caps == sorted(caps) and caps[0] < 10 and caps[-1] == 64
