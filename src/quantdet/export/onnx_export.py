"""ONNX export: the FP32 model as is, the quantized model as QDQ with integer weights.

The quantized model is exported through torch's fake-quantize ops (which become
QuantizeLinear/DequantizeLinear pairs with our scales and zero points); then every weight's
QuantizeLinear is evaluated here, once, so the file stores int8 weight initializers followed
by DequantizeLinear — what onnxruntime and TensorRT expect of a QDQ model.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantdet.io_utils import atomic_path

OUTPUT_NAMES = ["heatmap", "boxes"]


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Store Constant nodes' tensors as initializers (scales and zero points become named,
    inspectable initializers, as in onnxruntime's own QDQ models)."""
    graph = model.graph
    for node in list(graph.node):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            graph.node.remove(node)


def integerize_weights(model: onnx.ModelProto, layer_bits: dict[str, int] | None = None) -> int:
    """Replace QuantizeLinear(float weight) by the integer weight it produces. Returns the count.

    ONNX stores weights as int8 whatever their bit width; `layer_bits` (layer name → bits, the
    weight initializer being `{layer}.weight`) clamps each layer's integers to its own narrower
    signed range, as the fake-quantized layer does.
    """
    layer_bits = layer_bits or {}
    graph = model.graph
    consts = _constant_values(graph)
    initializers = {init.name for init in graph.initializer}
    replaced = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            continue
        w = consts[node.input[0]].astype(np.float32)
        scale = consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]] if len(node.input) > 2 else np.zeros((), np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp_b = scale.reshape(shape), zp.reshape(shape)
        else:
            zp_b = zp
        info = np.iinfo(zp.dtype)
        lo, hi = info.min, info.max
        bits = layer_bits.get(node.input[0].removesuffix(".weight"))
        if bits is not None and info.min < 0:
            lo, hi = max(lo, -(2 ** (bits - 1))), min(hi, 2 ** (bits - 1) - 1)
        q = np.clip(np.rint(w / scale) + zp_b.astype(np.int32), lo, hi).astype(zp.dtype)
        name = node.input[0] + "_quantized"
        graph.initializer.append(numpy_helper.from_array(q, name))
        for user in graph.node:
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = name
        graph.node.remove(node)
        replaced += 1
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used and init.name not in {o.name for o in graph.output}:
            graph.initializer.remove(init)
    return replaced


def export_onnx(model: torch.nn.Module, path: str | Path, input_size: int, opset: int,
                metadata: dict | None = None) -> dict:
    """Export a detector (FP32 or fake-quantized) to ONNX with a dynamic batch axis.

    A quantized model's weight bit width per layer goes into metadata_props as JSON
    (`quantdet.layer_weight_bits`), since the int8 initializers do not show it.
    """
    model = model.eval()
    layer_bits = {name: int(m.weight_bits) for name, m in model.named_modules()
                  if hasattr(m, "weight_bits")}
    metadata = dict(metadata or {})
    if layer_bits:
        metadata["quantdet.layer_weight_bits"] = json.dumps(layer_bits, sort_keys=True)
    dummy = torch.zeros(1, 3, input_size, input_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=OUTPUT_NAMES,
                          dynamic_axes={"images": {0: "batch"},
                                        **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                          do_constant_folding=True)
        proto = onnx.load(str(tmp))
        constants_to_initializers(proto)
        integer_weights = integerize_weights(proto, layer_bits)
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return {"path": str(path), "integer_weights": integer_weights, **graph_summary(proto)}


def graph_summary(proto: onnx.ModelProto) -> dict:
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    int_inits = sum(1 for i in proto.graph.initializer
                    if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {"op_counts": ops, "integer_initializers": int_inits}
