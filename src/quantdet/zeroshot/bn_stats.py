"""BatchNorm statistics as a teacher signal (ZeroQ, GDFQ).

Each BatchNorm layer of a trained FP32 model holds the mean and variance of its input over
the training data. An input batch whose statistics, layer by layer, match those running
statistics looks like training data to the model, without any training image. This module
records the batch statistics with hooks and measures their distance to the running ones.

Quantized models have their BatchNorm folded into the convolutions, so the statistics are
always read from the FP32 model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# The input is normalised inside the detector; in that space ZeroQ asks for mean 0, std 1.
INPUT_MEAN, INPUT_STD = 0.0, 1.0


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of an N×C×H×W batch.

    The variance is unbiased, as in the running variance BatchNorm keeps, so a batch whose
    statistics are the running ones gives a loss of exactly zero.
    """
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), unbiased=True)
    return mean, var.clamp(min=0).sqrt()


class BatchNormStatistics:
    """Context manager recording the input statistics of every BatchNorm layer of `model`.

    >>> with BatchNormStatistics(model) as bns:
    ...     model(images)
    ...     loss = bns.loss()   # then backward: the statistics keep their gradients
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError("model has no BatchNorm layers: BN statistics come from the FP32 model "
                             "(quantized models have BatchNorm folded)")
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> "BatchNormStatistics":
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._recorder(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.recorded.clear()

    def _recorder(self, index: int):
        def hook(_module, args):
            self.recorded[index] = batch_statistics(args[0])
        return hook

    def loss(self) -> torch.Tensor:
        """Mean over layers of the mean squared distance of batch mean and std to the running
        mean and std (GDFQ's BNS term), for the last forward pass; clears the record."""
        if not self.recorded:
            raise RuntimeError("no forward pass recorded since the last loss()")
        terms = []
        for index, (mean, std) in self.recorded.items():
            layer = self.layers[index]
            running_std = layer.running_var.sqrt()
            terms.append(((mean - layer.running_mean) ** 2).mean() + ((std - running_std) ** 2).mean())
        self.recorded = {}
        return torch.stack(terms).mean()


def input_statistics_loss(normalized: torch.Tensor) -> torch.Tensor:
    """ZeroQ's extra term: the normalised input should have per-channel mean 0 and std 1."""
    mean, std = batch_statistics(normalized)
    return ((mean - INPUT_MEAN) ** 2).mean() + ((std - INPUT_STD) ** 2).mean()
