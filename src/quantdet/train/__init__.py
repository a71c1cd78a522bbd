"""The one training loop (checkpoint, resume) shared by FP32 pre-training, QAT and distillation.

`fit` lives in quantdet.train.loop; this package does not import it, so that light stages
(corrupt, report) that only need quantdet.train.distributed do not pay torch's import time."""
