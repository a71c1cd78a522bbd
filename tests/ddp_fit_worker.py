"""Trains a BatchNorm-free tiny detector-like model with quantdet's `fit`, alone or as one rank
under torchrun (tests/test_distributed.py runs both), and saves the trained weights (rank 0).

Without BatchNorm and with a loss that is a mean over images, a data-parallel step is the
single-process step on the global batch up to float rounding, so the two runs must agree.
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantdet.train import distributed
from quantdet.train.loop import fit


class NoNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.down = nn.Conv2d(8, 16, 3, 2, 1)
        self.head = nn.Conv2d(16, 3, 1)
        self.box = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = F.relu(self.down(F.relu(self.stem(x))))
        return self.head(x), self.box(x)


def per_image_mean_loss(outputs, targets, stride):
    scores, boxes = outputs
    goal = torch.stack(targets).view(-1, 1, 1, 1)
    loss = (scores - goal).pow(2).mean() + (boxes - 2 * goal).pow(2).mean()
    return loss, {"squared": loss.item()}


def collate(items):
    return torch.stack([image for image, _ in items]), [target for _, target in items]


def main(out: str, batch_size: int) -> None:
    generator = torch.Generator().manual_seed(1)
    data = [(torch.rand(3, 32, 32, generator=generator), torch.rand((), generator=generator))
            for _ in range(24)]
    torch.manual_seed(0)
    model = NoNormNet()
    with distributed.process_group():
        history = fit(model, data, epochs=2, batch_size=batch_size, lr=0.01, weight_decay=1e-4,
                      warmup_iters=2, seed=0, checkpoint_path=Path(out).with_suffix(".ckpt"),
                      threads=1, loss_fn=per_image_mean_loss, collate_fn=collate)
    if distributed.is_main():
        torch.save({"state_dict": model.state_dict(), "history": history}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
