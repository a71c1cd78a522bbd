"""Model files: an FP32 detector or a quantized one, saved with the config that rebuilds it.

FP32:       {"kind": "fp32", "detector": the detector family's config (quantdet.detectors), "classes": ..., "state_dict": ...}
quantized:  the same plus {"kind": "quantized", "quant": quantize_model kwargs + metadata}
            (mixed precision: quant["layer_bits"], layer name → weight bits)
A quantized model is rebuilt by quantizing a fresh detector of the same config (same graph,
same quantizer placement) and loading the saved state (folded weights, scales, zero points).
"""
from __future__ import annotations

from pathlib import Path

import torch

from quantdet.errors import QuantdetError
from quantdet.integrity import verify_file
from quantdet.io_utils import atomic_path


def cpu_state_dict(module) -> dict:
    """The state dict with every tensor on the CPU: a file written by a GPU job loads with a
    plain `torch.load` on a machine without one."""
    state = module.state_dict()
    for key, value in state.items():  # in place: the OrderedDict keeps its _metadata (versions)
        if isinstance(value, torch.Tensor):
            state[key] = value.detach().cpu()
    return state


def save_model(path, model, *, kind: str, detector: dict, classes: dict, extra: dict | None = None,
               quant: dict | None = None) -> None:
    payload = {"kind": kind, "detector": detector, "classes": classes,
               "state_dict": cpu_state_dict(model), "quant": quant, **(extra or {})}
    with atomic_path(path, checksum=True) as tmp:   # <path>.sha256: checked by read_model_file
        torch.save(payload, tmp)


def read_model_file(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise QuantdetError(f"{path}: model file not found (run the stage that makes it first)")
    verify_file(path)   # a flipped byte: refused naming the file (no sidecar: accepted as is)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise QuantdetError(f"{path}: not a readable quantdet model file ({e})") from None


def build_from_config(detector: dict, quant: dict | None = None):
    from quantdet import detectors

    model = detectors.build(detector, pretrained=False)  # the weights come from the file
    if quant is None:
        return model
    from quantdet.quant.graph import quantize_model, set_quant_mode
    from quantdet.quant.modules import QUANTIZE

    qmodel = quantize_model(model, quant["weight_bits"], quant["act_bits"], quant["observer"],
                            quant.get("observer_kwargs") or {}, quant.get("layer_bits"))
    if quant.get("outlier"):  # outlier-aware layers; their masks come with the state dict
        from quantdet.quant.outlier import attach_outlier_layers
        attach_outlier_layers(qmodel, quant["observer"])
    set_quant_mode(qmodel, QUANTIZE)
    if quant.get("learnable_steps"):
        from quantdet.quant.qat import make_learnable
        make_learnable(qmodel)
    return qmodel


def load_model(path):
    """Return (model in eval mode, the file's payload without the weights)."""
    payload = read_model_file(path)
    model = build_from_config(payload["detector"], payload.get("quant"))
    model.load_state_dict(payload.pop("state_dict"))
    if payload.get("quant"):
        model.quant_info = payload["quant"]
    return model.eval(), payload
