"""AIT ("It's All In the Teacher", CVPR 2022): fine-tune the quantized student on generated
images against the FP32 model's outputs only, with gradient inflation.

- Loss: no labels and no cross-entropy, only the KL divergence to the FP32 model's outputs.
  The class heatmap is a per-cell, per-class Bernoulli distribution: the loss is the
  Bernoulli KL(teacher ‖ student), normalised by the teacher's total centre mass (the number
  of "objects" it sees, as the focal loss normalises by the number of centres). The box
  regression has no distribution to take a KL of and gets no term: a GIoU term between
  student and teacher boxes, weighted by the teacher's confidence, lowered W4A4 AP on our
  data (0.404 against 0.409 with KL only, after 16 iterations).
- Gradient inflation: with low-bit weights most small updates round back to the same
  integer and training stalls. Before each SGD step, each quantized layer's gradient is
  multiplied by κ, the smallest factor (κ doubled from 1, then up to 5 bisection steps) for
  which at least a fraction ρ of the layer's integer weights change. κ is capped by a
  linear warm-up, and ρ decays linearly over training.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from quantdet.quant.modules import QuantConv2d, QuantLinear
from quantdet.quant.recipe import QATRecipe


def ait_recipe(observer: str) -> QATRecipe:
    """Activation ranges calibrated on generated images with `observer` and then kept fixed:
    tracking them on generated batches during training lowered AP."""
    return QATRecipe("ait", observer, None, False, False,
                     f"AIT: {observer} ranges calibrated on generated images; fine-tuned on GDFQ "
                     "generator samples with the KL divergence to the FP32 model only, SGD with "
                     "gradient inflation")



SEARCH_STEPS = 5  # AIT: bisection steps after doubling


# ---------------------------------------------------------------------------- loss
def distillation_loss(outputs, teacher_outputs, stride: int, class_logits=None) -> tuple[torch.Tensor, dict]:
    """Bernoulli KL(FP32 ‖ student) of the class maps (`fit`'s loss_fn signature;
    ``class_logits(outputs)``: the detector family's class logits, default the first output)."""
    class_logits = class_logits or (lambda o: o[0])
    heatmap = class_logits(outputs).float()
    teacher = class_logits(teacher_outputs).to(heatmap.device).float()
    p = torch.sigmoid(teacher)
    kl = (p * (F.logsigmoid(teacher) - F.logsigmoid(heatmap))
          + (1 - p) * (F.logsigmoid(-teacher) - F.logsigmoid(-heatmap)))
    kl = kl.sum() / p.sum().clamp(min=1.0)
    return kl, {"kl": kl.item()}


# ---------------------------------------------------------------------------- data
class GeneratedBatches(torch.utils.data.Dataset):
    """Generated training batches: item i of an epoch is a (noise, class) pair seeded by
    (seed, epoch, i), so every epoch sees fresh images and a resumed run the same ones.
    `collate` stacks the noise and classes (drawn on the CPU, so a batch is the same on any
    device); `prepare`, `fit`'s prepare_batch, draws the images with the generator and the FP32
    model's outputs, the loss's targets, on the training device."""

    def __init__(self, generator, teacher, num_images: int, seed: int):
        self.generator, self.teacher = generator.eval(), teacher.eval()
        self.num_images, self.seed, self.epoch = num_images, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        noise = torch.from_numpy(rng.standard_normal(self.generator.noise_dim).astype(np.float32))
        return noise, int(rng.integers(self.generator.num_classes))

    def collate(self, items):
        noise = torch.stack([n for n, _ in items])
        labels = torch.tensor([c for _, c in items])
        return noise, labels

    @torch.no_grad()
    def prepare(self, batch, device):
        noise, labels = (t.to(device, non_blocking=True) for t in batch)
        self.generator.to(device)
        self.teacher.to(device)
        images = self.generator.sample(noise, labels)
        return images, tuple(o.detach() for o in self.teacher(images))


# ---------------------------------------------------------------------------- gradient inflation
def changed_fraction(layer, update: torch.Tensor) -> float:
    """Fraction of the layer's integer weights that differ after `weight -= update`, on the
    layer's current quantization grid."""
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    scale = layer.weight_scale().detach().view(shape)
    weight = layer.weight.detach()
    before = torch.clamp(torch.round(weight / scale), layer.wqmin, layer.wqmax)
    after = torch.clamp(torch.round((weight - update) / scale), layer.wqmin, layer.wqmax)
    return (before != after).float().mean().item()


def inflation_factor(fraction_at: Callable[[float], float], rho: float, kappa_cap: float,
                     search_steps: int = SEARCH_STEPS) -> float:
    """The smallest κ in [1, kappa_cap] with fraction_at(κ) ≥ ρ: κ doubles from 1 until the
    fraction is reached, then `search_steps` bisections between κ/2 and κ. Returns the cap
    when even the cap does not reach ρ."""
    kappa = 1.0
    if rho <= 0 or fraction_at(kappa) >= rho:
        return kappa
    while True:
        if kappa >= kappa_cap:
            return kappa_cap
        kappa = min(2 * kappa, kappa_cap)
        if fraction_at(kappa) >= rho:
            break
    low, high = max(1.0, kappa / 2), kappa
    for _ in range(search_steps):
        middle = (low + high) / 2
        if fraction_at(middle) >= rho:
            high = middle
        else:
            low = middle
    return high


class GradientInflation:
    """`fit`'s after_backward hook: inflate each quantized layer's gradient before the step.

    The update an SGD step will make is predicted exactly (lr, momentum buffer, no weight
    decay), so "a fraction ρ of the integer weights changes" holds for the step taken.
    """

    def __init__(self, total_iters: int, rho_start: float, rho_end: float, kappa_max: float,
                 warmup_iters: int, search_steps: int = SEARCH_STEPS):
        self.total_iters, self.rho_start, self.rho_end = max(1, total_iters), rho_start, rho_end
        self.kappa_max, self.warmup_iters, self.search_steps = kappa_max, warmup_iters, search_steps

    def rho(self, iteration: int) -> float:
        progress = min(1.0, iteration / self.total_iters)
        return self.rho_start + (self.rho_end - self.rho_start) * progress

    def kappa_cap(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return self.kappa_max
        return 1 + (self.kappa_max - 1) * (iteration + 1) / (self.warmup_iters + 1)

    @torch.no_grad()
    def __call__(self, model, optimizer, iteration: int) -> dict:
        group = optimizer.param_groups[0]
        lr, momentum = group["lr"], group.get("momentum", 0.0)
        rho, cap = self.rho(iteration), self.kappa_cap(iteration)
        kappas, reached = [], []
        for layer in model.modules():
            if not isinstance(layer, (QuantConv2d, QuantLinear)) or layer.weight.grad is None:
                continue
            grad = layer.weight.grad
            buffer = optimizer.state.get(layer.weight, {}).get("momentum_buffer")

            def update(kappa, grad=grad, buffer=buffer):
                step = kappa * grad if buffer is None else momentum * buffer + kappa * grad
                return lr * step

            kappa = inflation_factor(lambda k: changed_fraction(layer, update(k)), rho, cap,
                                     self.search_steps)
            grad.mul_(kappa)
            kappas.append(kappa)
            reached.append(changed_fraction(layer, update(1.0)))
        if not kappas:
            return {}
        return {"kappa": float(np.mean(kappas)), "rho": rho, "changed": float(np.mean(reached))}
