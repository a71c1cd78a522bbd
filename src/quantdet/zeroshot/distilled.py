"""ZeroQ distilled data: images optimised until the FP32 model's BatchNorm layers see the
statistics they saw during training.

Images start as Gaussian noise in the model's normalised input space (mean 0, std 1, as
ZeroQ) and are optimised there with Adam on the BN-statistics loss plus the input-statistics
term; after every step they are projected back onto valid pixels ([0, 1] before
normalisation), so the saved 8-bit images are what was optimised.
"""
from __future__ import annotations

import torch

from quantdet.zeroshot.bn_stats import BatchNormStatistics, input_statistics_loss


# The optimised space of a detector that takes [0, 1] images as they are (no normalisation in
# the network): centred on mid-grey, [0, 1] spanning ±2 units, as ImageNet statistics roughly do.
UNNORMALISED = (0.5, 0.25)


def pixel_normalisation(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's input mean and std (1×3×1×1): images in [0, 1] are normalised by them
    (its family's `input_statistics`; UNNORMALISED for a network taking [0, 1] input)."""
    from quantdet import detectors

    stats = detectors.of_model(model).input_statistics(model)
    if stats is None:
        return tuple(torch.full((1, 3, 1, 1), v) for v in UNNORMALISED)
    return stats


def distill_images(model, num_images: int, image_size: int, *, batch_size: int, steps: int,
                   lr: float, seed: int) -> tuple[torch.Tensor, dict]:
    """Return (num_images×3×S×S images in [0, 1], history of the loss per batch).

    Each batch is optimised on its own: BatchNorm statistics are batch statistics, so the
    batch is the unit the loss constrains. The optimisation runs on the training device (CUDA
    when present); the starting noise is drawn on the CPU, the images are returned there.
    """
    from quantdet.train.device import training_device

    device = training_device()
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    mean, std = pixel_normalisation(model)
    low, high = (0 - mean) / std, (1 - mean) / std
    generator = torch.Generator().manual_seed(seed)
    images, history = [], {"first_loss": [], "last_loss": []}
    with BatchNormStatistics(model) as bns:
        for start in range(0, num_images, batch_size):
            n = min(batch_size, num_images - start)
            z = torch.randn(n, 3, image_size, image_size, generator=generator).to(device)
            z = torch.max(torch.min(z, high), low).requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=lr)
            for step in range(steps):
                model(z * std + mean)
                loss = bns.loss() + input_statistics_loss(z)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    z.copy_(torch.max(torch.min(z, high), low))
                if step == 0:
                    history["first_loss"].append(loss.item())
            with torch.no_grad():  # the loss of the final, projected images
                model(z * std + mean)
                history["last_loss"].append((bns.loss() + input_statistics_loss(z)).item())
            images.append((z.detach() * std + mean).clamp(0, 1).cpu())
    return torch.cat(images), history
