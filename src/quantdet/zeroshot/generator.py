"""GDFQ: a class-conditional generator trained against the frozen FP32 detector.

Architecture as GDFQ's: the class embedding multiplies the noise, a linear layer maps it to a
C×S/4×S/4 map, then two (×2 nearest upsample, 3×3 conv, BatchNorm, LeakyReLU 0.2) blocks and a
3×3 conv to RGB with tanh. Its output in [-1, 1] becomes an image in [0, 1] as (x + 1) / 2.

Training loss: class term + bns_weight · BNS (GDFQ: 0.1), Adam lr 1e-3, betas (0.5, 0.999).
GDFQ's class term is the cross-entropy of a classifier's output; a dense detector has no
single output per image, so we adapt it (our choice): for an image generated for class y,
take the k cells where the detector's class-y heatmap is strongest and ask that y is
detected there: the binary cross-entropy of the class-y logit towards 1
(an object is present) plus the softmax cross-entropy over the classes' logits towards y
(and it is of class y). This makes the generator draw confident objects of the sampled
class, which is what the detector's activations on real images look like.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantdet.zeroshot.bn_stats import BatchNormStatistics


def _upsample_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True)]


class ConditionalGenerator(nn.Module):
    """``forward(noise B×D, labels B) -> images B×3×S×S in [-1, 1]``."""

    def __init__(self, num_classes: int, image_size: int, noise_dim: int = 64, channels: int = 64):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image size {image_size} is not a multiple of 4")
        self.num_classes, self.image_size, self.noise_dim = num_classes, image_size, noise_dim
        self.init_size = image_size // 4
        self.embedding = nn.Embedding(num_classes, noise_dim)
        self.project = nn.Linear(noise_dim, channels * self.init_size ** 2)
        self.channels = channels
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(channels),
            *_upsample_block(channels, channels),
            *_upsample_block(channels, channels // 2),
            nn.Conv2d(channels // 2, 3, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.project(self.embedding(labels) * noise)
        return self.blocks(x.view(-1, self.channels, self.init_size, self.init_size))

    def config(self) -> dict:
        """The constructor arguments, saved with the weights so the generator can be rebuilt."""
        return {"num_classes": self.num_classes, "image_size": self.image_size,
                "noise_dim": self.noise_dim, "channels": self.channels}

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] on the generator's device (eval mode: the BatchNorm layers use
        their running statistics)."""
        self.eval()
        device = self.project.weight.device
        return (self(noise.to(device), labels.to(device)) + 1) / 2


def sample_inputs(n: int, num_classes: int, noise_dim: int, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(n, noise_dim, generator=generator),
            torch.randint(0, num_classes, (n,), generator=generator))


def detection_class_loss(heatmap_logits: torch.Tensor, labels: torch.Tensor, topk: int) -> torch.Tensor:
    """GDFQ's class term for a dense detector (see the module docstring)."""
    batch, num_classes = heatmap_logits.shape[:2]
    logits = heatmap_logits.float().flatten(2)                     # B×C×HW
    own = logits[torch.arange(batch), labels]                       # B×HW: class-y logits
    cells = own.topk(min(topk, own.shape[1]), dim=1).indices       # B×k strongest cells
    present = F.binary_cross_entropy_with_logits(own.gather(1, cells), torch.ones_like(cells, dtype=own.dtype))
    at_cells = logits.gather(2, cells[:, None].expand(-1, num_classes, -1))  # B×C×k
    which = F.cross_entropy(at_cells, labels[:, None].expand(-1, cells.shape[1]))
    return present + which


def train_generator(detector: nn.Module, num_classes: int, image_size: int, *, iterations: int,
                    batch_size: int, lr: float, betas: tuple[float, float], bns_weight: float,
                    class_topk: int, noise_dim: int, channels: int, seed: int
                    ) -> tuple[ConditionalGenerator, dict]:
    """Train a generator against the frozen FP32 `detector`, on the training device (CUDA when
    present; the noise is drawn on the CPU, so a seed gives the same inputs anywhere); returns
    it on that device and the loss history."""
    from quantdet import detectors
    from quantdet.train.device import training_device

    class_logits = detectors.of_model(detector).class_logits
    device = training_device()
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    generator = ConditionalGenerator(num_classes, image_size, noise_dim, channels).to(device)
    detector.eval().to(device)
    for p in detector.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr, betas=tuple(betas))
    history = {"class": [], "bns": []}
    generator.train()
    with BatchNormStatistics(detector) as bns:
        for _ in range(iterations):
            noise, labels = (t.to(device) for t in sample_inputs(batch_size, num_classes, noise_dim, rng))
            images = (generator(noise, labels) + 1) / 2
            heatmap_logits = class_logits(detector(images))
            class_loss = detection_class_loss(heatmap_logits, labels, class_topk)
            bns_loss = bns.loss()
            loss = class_loss + bns_weight * bns_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["class"].append(class_loss.item())
            history["bns"].append(bns_loss.item())
    return generator.eval(), history


def save_generator(path, generator: ConditionalGenerator, **extra) -> None:
    from quantdet.models.io import cpu_state_dict

    torch.save({"config": generator.config(), "state_dict": cpu_state_dict(generator), **extra}, path)


def load_generator(path) -> ConditionalGenerator:
    """Rebuild a generator saved by `save_generator` (in eval mode)."""
    from quantdet.errors import QuantdetError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise QuantdetError(f"{path}: generator checkpoint not found (run zeroshot_data for gdfq)") from None
    generator = ConditionalGenerator(**payload["config"])
    generator.load_state_dict(payload["state_dict"])
    return generator.eval()
