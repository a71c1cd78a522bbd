"""Turn an FP32 model into a fake-quantized one (FX graph passes).

Placement follows what integer runtimes execute: every conv/linear gets quantized weights and
a quantized input; a conv's output (after its ReLU, if one follows) is quantized when it feeds
another quantized layer, so onnxruntime sees DQ → Conv → Q and runs an integer kernel;
max-pool and nearest upsampling reuse their input's quantizer. Final prediction layers take
quantized inputs and weights and give float outputs.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from quantdet.quant.fold import fold_batchnorm
from quantdet.quant.modules import QUANT_MODULES, ActQuantizer, OutputQuantizer, QuantConv2d, QuantLinear

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6)
# Ops whose output values lie on their input's quantization grid.
_GRID_PRESERVING_MODULES = (nn.MaxPool2d, nn.Upsample, nn.Flatten)
_GRID_PRESERVING_FUNCTIONS = (F.max_pool2d, torch.flatten)


def _module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_quant_layer(gm, node) -> bool:
    return isinstance(_module(gm, node), (QuantConv2d, QuantLinear))


def _is_quantizer(gm, node) -> bool:
    return isinstance(_module(gm, node), ActQuantizer)


def _is_relu(gm, node) -> bool:
    m = _module(gm, node)
    if m is not None:
        return isinstance(m, _RELU_MODULES)
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS


def _preserves_grid(gm, node) -> bool:
    m = _module(gm, node)
    if m is not None:
        if isinstance(m, nn.Upsample):
            return m.mode == "nearest"
        return isinstance(m, _GRID_PRESERVING_MODULES)
    if node.op == "call_function":
        if node.target is F.interpolate:
            return node.kwargs.get("mode", "nearest") == "nearest"
        return node.target in _GRID_PRESERVING_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("flatten", "view", "reshape")
    return False


def _feeds_quant_layer(gm, node, memo) -> bool:
    """Whether some path from node reaches a quantized layer."""
    if node in memo:
        return memo[node]
    memo[node] = False
    memo[node] = any(_is_quant_layer(gm, u) or _feeds_quant_layer(gm, u, memo) for u in node.users)
    return memo[node]


class _Inserter:
    def __init__(self, gm, make_quantizer):
        self.gm, self.make, self.count = gm, make_quantizer, 0

    def quantize_output(self, node: fx.Node, reuse: str | None = None) -> fx.Node:
        """Insert a quantizer after node and route every user of node through it."""
        if reuse is None:
            name = f"act_quant_{self.count}"
            self.count += 1
            self.gm.add_submodule(name, self.make())
            kwargs = {}
        else:
            name, kwargs = reuse, {"observe": False}
        with self.gm.graph.inserting_after(node):
            q = self.gm.graph.call_module(name, (node,), kwargs)
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        return q


def insert_quantizers(gm: fx.GraphModule, make_quantizer) -> int:
    ins = _Inserter(gm, make_quantizer)
    memo: dict = {}
    for node in list(gm.graph.nodes):
        if _is_quant_layer(gm, node):
            x = node.args[0]
            if isinstance(x, fx.Node) and not _is_quantizer(gm, x):
                ins.quantize_output(x)
            out = node
            relus = [u for u in node.users if _is_relu(gm, u)]
            if len(node.users) == 1 and relus:
                out = relus[0]
            if _feeds_quant_layer(gm, out, memo) and not all(_is_quantizer(gm, u) for u in out.users):
                ins.quantize_output(out)
        elif _preserves_grid(gm, node) and _feeds_quant_layer(gm, node, memo):
            x = node.args[0]
            if not isinstance(x, fx.Node):
                continue
            if not _is_quantizer(gm, x):
                x = ins.quantize_output(x)
            if not all(_is_quantizer(gm, u) for u in node.users):
                ins.quantize_output(node, reuse=x.target)
    gm.recompile()
    return ins.count


def quantize_outputs(gm: fx.GraphModule, act_bits: int) -> int:
    """An OutputQuantizer after every raw output a quantized layer computes (families with
    `integer_outputs`): the prediction convs then run as integer kernels as well."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    count = 0

    def wrap(arg):
        nonlocal count
        if isinstance(arg, fx.Node) and _is_quant_layer(gm, arg):
            name = f"output_quant_{count}"
            count += 1
            gm.add_submodule(name, OutputQuantizer(act_bits))
            with gm.graph.inserting_after(arg):
                return gm.graph.call_module(name, (arg,))
        return arg

    output.args = fx.node.map_arg(output.args, wrap)
    gm.recompile()
    return count


def remove_identities(gm: fx.GraphModule) -> int:
    """Drop modules that are the identity in eval mode (nn.Identity, dropout), so they do not
    sit between a convolution and its ReLU."""
    removed = 0
    for node in list(gm.graph.nodes):
        if isinstance(_module(gm, node), (nn.Identity, nn.Dropout, nn.Dropout2d)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return removed


def swap_quant_layers(gm: fx.GraphModule, weight_bits: int) -> int:
    swapped = 0
    for node in gm.graph.nodes:
        m = _module(gm, node)
        cls = QUANT_MODULES.get(type(m))
        if cls is None:
            continue
        parent_name, _, attr = node.target.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        setattr(parent, attr, cls.from_float(m, weight_bits))
        swapped += 1
    return swapped


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers with quantized weights, by qualified name in the quantized graph (after
    BatchNorm folding, e.g. `backbone_conv1_bnfolded_0`): the keys of per-layer bit widths."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def layer_weight_bits(model: nn.Module) -> dict[str, int]:
    return {name: m.weight_bits for name, m in quant_layers(model).items()}


def set_layer_weight_bits(model: nn.Module, bits: dict[str, int]) -> None:
    """Give the named layers their own weight bit width (mixed precision); others keep theirs."""
    layers = quant_layers(model)
    unknown = sorted(set(bits) - set(layers))
    if unknown:
        raise ValueError(f"no quantized layer named {unknown[0]!r} "
                         f"({len(unknown)} unknown; known e.g. {sorted(layers)[:3]})")
    for name, b in bits.items():
        layers[name].set_weight_bits(int(b))


def quantize_model(model: nn.Module, weight_bits: int, act_bits: int, observer: str,
                   observer_kwargs: dict | None = None,
                   layer_bits: dict[str, int] | None = None) -> fx.GraphModule:
    """FX-trace a copy of model, fold BatchNorm, quantize weights and activations.

    weight_bits applies to every layer that `layer_bits` (layer name → bits, names as in
    `quant_layers`) does not name. The result starts in calibration mode: run calibration
    batches through it, then call `freeze_quantizers`.
    """
    from quantdet import detectors

    model = copy.deepcopy(model).eval()
    config = getattr(model, "detector_config", None)
    # the quantized region: the whole network as its family lets FX capture it
    gm = fx.symbolic_trace(detectors.of(config).traceable(model) if config else model)
    remove_identities(gm)
    folded = fold_batchnorm(gm)
    layers = swap_quant_layers(gm, weight_bits)
    if layer_bits:
        set_layer_weight_bits(gm, layer_bits)
    kwargs = observer_kwargs or {}
    n_act = insert_quantizers(gm, lambda: ActQuantizer(act_bits, observer, **kwargs))
    if config and getattr(detectors.of(config), "integer_outputs", False):
        n_act += quantize_outputs(gm, act_bits)
    gm.quant_info = {"folded_batchnorms": folded, "quantized_layers": layers,
                     "activation_quantizers": n_act, "weight_bits": weight_bits,
                     "act_bits": act_bits, "observer": observer}
    if layer_bits:
        gm.quant_info["layer_bits"] = dict(layer_bits)
    # keep attributes callers read from detectors (stride, num_classes, ...)
    for attr in ("stride", "num_classes", "detector_config"):
        if hasattr(model, attr):
            setattr(gm, attr, getattr(model, attr))
    return gm


def activation_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def set_quant_mode(model: nn.Module, mode: str) -> None:
    for q in activation_quantizers(model):
        q.mode = mode


def freeze_quantizers(model: nn.Module) -> None:
    for q in activation_quantizers(model):
        q.freeze()


