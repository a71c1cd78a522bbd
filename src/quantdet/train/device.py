"""Where a training job computes, with which numerics, and how many loader workers feed it.

- `training_device()`: the CUDA device of this process (a torchrun rank's own) when CUDA is
  there, else the CPU. `fit` and the zero-shot generators train on it.
- `set_tf32(enabled)`: TF32 for CUDA matmuls and cuDNN convolutions (params `train.tf32`).
  PyTorch's CUDA default runs convolutions in TF32 (10-bit mantissa); quantdet's default is
  off, so that a GPU job computes FP32 as the CPU does: measured on an H200, oaqat's
  quantization-error term was 1.32 with TF32 and 0.90 on the CPU for the same epoch; with TF32
  off the two agreed to 3-4 decimals.
- `numerics(device, autocast)`: the record of what ran (device, GPU, autocast dtype, TF32),
  kept in the model file and the job's MLflow run.
- `loader_workers(setting)`: `train.workers`, with `auto` resolved.
"""
from __future__ import annotations

import os

import torch


def training_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for CUDA matmuls and cuDNN convolutions (nothing changes on a CPU)."""
    if not torch.cuda.is_available():  # nothing to set; leaves torch's flags consistent
        return
    precision = "tf32" if enabled else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = precision
        conv.fp32_precision = precision
        # RNNs alike: torch refuses the legacy allow_tf32 query (PT2E reads it) when they differ
        torch.backends.cudnn.rnn.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> dict:
    """Whether CUDA matmuls and cuDNN convolutions may use TF32 now."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        # "none" defers to the global torch.backends.fp32_precision
        def effective(p):
            return (torch.backends.fp32_precision if p == "none" else p) == "tf32"
        return {"matmul": effective(matmul.fp32_precision), "conv": effective(conv.fp32_precision)}
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "conv": bool(torch.backends.cudnn.allow_tf32)}


def numerics(device: torch.device, autocast: torch.dtype | None, processes: int = 1) -> dict:
    """What a training job computed with: device, GPU, autocast dtype and TF32 (on CUDA; TF32
    does not exist on a CPU, recorded as false there)."""
    cuda = device.type == "cuda"
    tf32 = tf32_enabled() if cuda else {"matmul": False, "conv": False}
    return {"device": device.type, "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "autocast": str(autocast).removeprefix("torch.") if autocast is not None else None,
            "tf32": tf32["matmul"] or tf32["conv"], "tf32_matmul": tf32["matmul"],
            "tf32_conv": tf32["conv"], "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda) if cuda else None, "processes": processes}


def numerics_tags(record: dict) -> dict[str, str]:
    """The record as MLflow tags (`quantdet.numerics.*`)."""
    return {f"quantdet.numerics.{k}": str(v) for k, v in record.items() if v is not None}


def available_cpus() -> int:
    """CPUs this job was given: SLURM's cpus-per-task, else those the process may run on."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(setting, processes_on_node: int = 1, cuda: bool | None = None) -> int:
    """DataLoader workers per training process. An integer is taken as it is. `auto`: on CUDA,
    the job's CPUs shared by its processes on this node, one kept for each training process
    (a GPU job is bound by loading its images); on a CPU, 0: the training threads use the CPUs,
    and loading in the training process costs least there."""
    if setting != "auto":
        return int(setting)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        return 0
    return max(0, available_cpus() // max(1, processes_on_node) - 1)


class Fp32StridedConvOnLines:
    """Under CPU bf16 autocast, a strided convolution whose input has a side of 1 (FPN's P6/P7
    below 128 px, SSDlite's last extra layers) runs in FP32. torch 2.14.1's oneDNN bf16 kernel
    returns a wrong weight gradient there, NaN or off by orders of magnitude: measured for a
    3x3 stride-2 conv of 32-256 channels on a 16x32x1x1 input (scripts/bf16_conv_check.py).
    The forward hooks are in place only inside the `with` block (the training loop)."""

    def __init__(self, model: torch.nn.Module, enabled: bool):
        self.model, self.enabled, self.handles, self.guarded = model, enabled, [], 0

    @staticmethod
    def _affected(module, x) -> bool:
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride,)
        kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,)
        return (isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() == 4
                and max(stride) > 1 and max(kernel) > 1 and min(x.shape[-2:]) == 1
                and torch.is_autocast_enabled("cpu"))

    def _before(self, module, args):
        if not self._affected(module, args[0]):
            return None
        context = torch.autocast("cpu", enabled=False)
        context.__enter__()
        module._quantdet_fp32_context = context
        self.guarded += 1
        return (args[0].float(), *args[1:])

    @staticmethod
    def _after(module, _args, _output):
        context = module.__dict__.pop("_quantdet_fp32_context", None)
        if context is not None:
            context.__exit__(None, None, None)

    def __enter__(self):
        if self.enabled:
            for module in self.model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    self.handles.append(module.register_forward_pre_hook(self._before))
                    self.handles.append(module.register_forward_hook(self._after, always_call=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False
