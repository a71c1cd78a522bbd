"""A detection dataset whose images are degraded on line (DA-QAT, degradation-aware calibration)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from quantdet.corruptions.degrade import apply_degradation, check_degradations, plan_degradation


class DegradedDataset(Dataset):
    """Wraps a DetectionDataset: image i is degraded with probability p by one of `names` at a
    severity drawn from `severities`; targets are unchanged. meta["degradation"] records it."""

    def __init__(self, dataset, names, p: float, severities, seed: int):
        check_degradations(names, severities)
        self.dataset, self.names, self.p = dataset, list(names), p
        self.severities, self.seed, self.epoch = list(severities), seed, 0
        for attr in ("category_ids", "class_names", "coco"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def plan(self, index: int):
        return plan_degradation(index, names=self.names, p=self.p, severities=self.severities,
                                seed=self.seed, epoch=self.epoch)

    def __getitem__(self, index):
        image, target, meta = self.dataset[index]
        degradation = self.plan(index)
        if degradation is not None:
            pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            pixels = apply_degradation(pixels, degradation)
            image = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1).contiguous()
        meta = {**meta, "degradation": None if degradation is None else
                (degradation.corruption, degradation.severity)}
        return image, target, meta

    def identity(self) -> dict:
        """What makes this degraded set: part of a calibration set's fingerprint."""
        return {"names": self.names, "p": self.p, "severities": self.severities, "seed": self.seed}
