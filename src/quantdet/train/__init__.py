"""The one training loop (checkpoint, resume) shared by FP32 pre-training, QAT and distillation."""
from quantdet.train.loop import fit

__all__ = ["fit"]
