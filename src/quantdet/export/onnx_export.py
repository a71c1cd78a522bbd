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


# CPU features whose int8 dot product (u8 x s8 -> s32, one instruction) never saturates
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
WEIGHT_TYPES = ("auto", "int8", "uint8")


def weight_type(setting: str = "auto") -> tuple[str, str]:
    """(int8 | uint8, why): the integer type of the exported weights.

    onnxruntime's U8S8 kernels (uint8 activations x int8 weights) on an x86 CPU without VNNI
    multiply with `vpmaddubsw`, which adds two u8 x s8 products into an int16 and saturates:
    the integer convolutions then differ from the model's arithmetic (measured here: 20% of a
    W8A8 test model's outputs within one quantization step of PyTorch's, against 99.9% with
    uint8 weights). onnxruntime's documentation advises U8U8 there. A uint8 weight is the
    int8 one plus 128 with zero point 128: the same values, so the same model; on a CPU with
    VNNI, int8 weights run the faster U8S8 kernels exactly. `auto` picks by this CPU."""
    if setting not in WEIGHT_TYPES:
        raise ValueError(f"export.weight_type: {setting!r} is none of {', '.join(WEIGHT_TYPES)}")
    if setting != "auto":
        return setting, "export.weight_type"
    from quantdet.environment import cpu_flags

    found = [f for f in VNNI_FLAGS if f in cpu_flags()]
    if found:
        return "int8", f"auto: this CPU has {found[0]} (U8S8 kernels exact and fastest)"
    return "uint8", ("auto: this CPU has no VNNI (avx512_vnni, avx_vnni, amx_int8), where onnxruntime's "
                     "U8S8 kernels saturate; U8U8 runs the same integers exactly")


def unsigned_weights(model: onnx.ModelProto) -> int:
    """Store each int8 weight of a Conv, ConvTranspose, Gemm or MatMul (an int8 initializer
    behind a DequantizeLinear with zero point 0) as uint8, plus 128, with zero point 128: the
    same dequantized values. Returns how many weights were changed."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
               and len(n.input) > 1}
    weights |= {n.input[0] for n in graph.node if n.op_type == "MatMul"}
    changed = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] not in weights or len(node.input) < 3:
            continue
        w, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if w is None or zp is None or w.data_type != onnx.TensorProto.INT8:
            continue
        zp_values = numpy_helper.to_array(zp)
        if np.any(zp_values != 0):
            continue
        values = numpy_helper.to_array(w).astype(np.int16) + 128
        for index, (name, array) in enumerate(((node.input[0], values),
                                               (node.input[2], zp_values.astype(np.int16) + 128))):
            new = f"{name}_u8"
            if new not in inits:
                inits[new] = numpy_helper.from_array(array.astype(np.uint8), new)
                graph.initializer.append(inits[new])
            node.input[0 if index == 0 else 2] = new
        changed += 1
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    return changed


def integer_activation_clips(model: onnx.ModelProto) -> int:
    """Move each float Clip that feeds a QuantizeLinear behind it, onto the integers.

    A quantizer narrower than 8 bits is exported as Clip(x, lo, hi) → QuantizeLinear(uint8):
    the grid's own bounds, then 8-bit saturation. onnxruntime runs a convolution in integers
    only when its output goes straight into a QuantizeLinear (DQ → Conv → Q becomes
    QLinearConv; a ReLU in between is dropped when the zero point makes it redundant), so the
    float Clip made every low-bit convolution a float one. QuantizeLinear is monotone
    (round half to even, then saturate), hence Q(clip(x, a, b)) = clip(Q(x), Q(a), Q(b))
    exactly: the Clip becomes an integer Clip on the uint8 tensor, between QuantizeLinear and
    its DequantizeLinear consumers, and onnxruntime fuses the convolution. Bounds that 8-bit
    saturation already gives (an integer bound of 0 or 255) are left out. Returns the number
    of Clips moved.
    """
    graph = model.graph
    consts = _constant_values(graph)
    users: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    moved = 0
    for clip in list(graph.node):
        if clip.op_type != "Clip" or clip.output[0] in outputs:
            continue
        consumers = users.get(clip.output[0], [])
        if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
            continue
        quant = consumers[0]
        bounds = list(clip.input[1:3]) + [""] * (3 - len(clip.input))
        if any(b and b not in consts for b in bounds) or any(q not in consts for q in quant.input[1:3]) \
                or len(quant.input) < 3 or quant.output[0] in outputs:
            continue
        scale, zp = consts[quant.input[1]], consts[quant.input[2]]
        if scale.size != 1 or zp.dtype not in (np.uint8, np.int8):
            continue
        info = np.iinfo(zp.dtype)

        def quantized(name, default):
            if not name:
                return default
            v = np.float32(consts[name]) / np.float32(scale)
            return int(np.clip(np.rint(v) + int(zp), info.min, info.max))

        lo, hi = quantized(bounds[0], info.min), quantized(bounds[1], info.max)
        quant.input[0] = clip.input[0]
        graph.node.remove(clip)
        moved += 1
        if lo == info.min and hi == info.max:
            continue
        clipped = quant.output[0] + "_clipped"
        names = []
        for bound, value, default in (("min", lo, info.min), ("max", hi, info.max)):
            if value == default:
                names.append("")
                continue
            name = f"{clipped}_{bound}"
            graph.initializer.append(numpy_helper.from_array(np.array(value, zp.dtype), name))
            names.append(name)
        while names and not names[-1]:
            names.pop()
        for user in users.get(quant.output[0], []):
            for i, inp in enumerate(user.input):
                if inp == quant.output[0]:
                    user.input[i] = clipped
        graph.node.append(onnx.helper.make_node("Clip", [quant.output[0], *names], [clipped],
                                                name=clipped))
    if moved:
        used = {i for n in graph.node for i in n.input}
        for init in list(graph.initializer):
            if init.name not in used:
                graph.initializer.remove(init)
        _topological_sort(graph)
    return moved


def sparsify_side_paths(model: onnx.ModelProto) -> dict:
    """Store the outlier side paths (quant/outlier.py) compactly, losslessly.

    In a quantized export every main convolution weight is an int8 initializer, so the float
    Conv weights left are the side paths' kernels: one nonzero per outlier, each an FP16 value
    (or a 0/1). When every value is exactly an FP16 number, the kernel is stored in FP16 and
    followed by a Cast to float: as a sparse initializer (COO, flat int64 indices; onnxruntime
    makes it dense when it loads the model) when that is smaller, else dense. Their Gather
    indices become int32. Returns counts and the bytes of what was rewritten.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    kernel_bytes, kernels, sparse_kernels = 0, 0, 0
    for name in sorted(conv_weights & set(inits)):
        init = inits[name]
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        dense = numpy_helper.to_array(init)
        flat = dense.ravel()
        nz = np.flatnonzero(flat)
        half = flat[nz].astype(np.float16)
        if not np.array_equal(half.astype(np.float32), flat[nz]):
            continue
        graph.initializer.remove(init)
        if nz.size * 10 < flat.size * 2:
            values = numpy_helper.from_array(half, name + "_fp16")
            indices = numpy_helper.from_array(nz.astype(np.int64), name + "_fp16_indices")
            stored = onnx.helper.make_sparse_tensor(values, indices, list(dense.shape))
            graph.sparse_initializer.append(stored)
            sparse_kernels += 1
        else:
            stored = numpy_helper.from_array(dense.astype(np.float16), name + "_fp16")
            graph.initializer.append(stored)
        graph.node.append(onnx.helper.make_node("Cast", [name + "_fp16"], [name],
                                                to=onnx.TensorProto.FLOAT))
        kernel_bytes += stored.ByteSize()
        kernels += 1
    users: dict[str, set] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, set()).add(node.op_type)
    index_bytes = 0
    for init in graph.initializer:
        if (init.data_type == onnx.TensorProto.INT64 and len(init.dims) == 1
                and users.get(init.name) == {"Gather"}):
            idx = numpy_helper.to_array(init)
            if idx.size and np.abs(idx).max() < 2**31:
                init.CopyFrom(numpy_helper.from_array(idx.astype(np.int32), init.name))
                index_bytes += init.ByteSize()
    if kernels:
        _topological_sort(graph)
    return {"fp16_kernels": kernels, "sparse_kernels": sparse_kernels, "kernel_bytes": kernel_bytes,
            "gather_index_bytes": index_bytes}


def gather_before_dequantize(model: onnx.ModelProto) -> int:
    """Gather(DequantizeLinear(q)) → DequantizeLinear(Gather(q)) for a per-tensor DQ.

    The outlier side paths gather a few channels of a quantized input: gathering the integers
    first dequantizes only those channels, where the float Gather needed the whole input
    dequantized (and onnxruntime, which folds the main path's DQ into QLinearConv, ran that
    DQ just for the side path). Exact: a per-tensor DQ is elementwise. Returns the count.
    """
    graph = model.graph
    consts = _constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    moved = 0
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in producers:
            continue
        dq = producers[node.input[0]]
        if dq.op_type != "DequantizeLinear" or any(
                i not in consts or consts[i].size != 1 for i in dq.input[1:]):
            continue
        gathered = node.output[0] + "_quantized"
        index = list(graph.node).index(node)
        graph.node.insert(index + 1, onnx.helper.make_node(
            "DequantizeLinear", [gathered, *dq.input[1:]], [node.output[0]],
            name=(node.name or node.output[0]) + "_dequantize"))
        node.input[0] = dq.input[0]
        node.output[0] = gathered
        moved += 1
    if moved:
        _topological_sort(graph)
    return moved


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so every input is produced before it is used (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {
        s.values.name for s in graph.sparse_initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("ONNX graph has a cycle or an undefined input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def output_names(model) -> list[str]:
    """The raw outputs' names: the detector family's, for the config the network carries."""
    from quantdet import detectors

    config = getattr(model, "detector_config", None) or {}
    return detectors.of(config).output_names(config)


def export_onnx(model: torch.nn.Module, path: str | Path, input_size: int, opset: int,
                metadata: dict | None = None, integer_clips: bool = True,
                output_names: list[str] | None = None, weights: str = "auto") -> dict:
    """Export a detector (FP32 or fake-quantized) to ONNX with a dynamic batch axis.

    A grid narrower than 8 bits keeps its clamp as an integer Clip after QuantizeLinear
    (`integer_activation_clips`), which onnxruntime runs on integer kernels; with
    `integer_clips=False` the clamp stays a float Clip before QuantizeLinear (the same values:
    onnxruntime then runs those convolutions in float, while OpenVINO folds the float Clip
    into its FakeQuantize and measured 5-10% faster on that form).

    A quantized model's weight bit width per layer goes into metadata_props as JSON
    (`quantdet.layer_weight_bits`), since the int8 initializers do not show it; its weights'
    integer type (`weight_type`: int8, or uint8 on a CPU whose int8 kernels saturate) and why,
    as `quantdet.weight_type`.
    """
    model = model.eval()
    names = output_names or globals()["output_names"](model)
    layer_bits = {name: int(m.weight_bits) for name, m in model.named_modules()
                  if hasattr(m, "weight_bits")}
    metadata = dict(metadata or {})
    if layer_bits:
        metadata["quantdet.layer_weight_bits"] = json.dumps(layer_bits, sort_keys=True)
    dummy = torch.zeros(1, 3, input_size, input_size)
    with atomic_path(path, checksum=True) as tmp, warnings.catch_warnings():   # <path>.sha256
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=names,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          do_constant_folding=True)
        proto = onnx.load(str(tmp))
        constants_to_initializers(proto)
        integer_weights = integerize_weights(proto, layer_bits)
        integer_clips = integer_activation_clips(proto) if integer_weights and integer_clips else 0
        side_paths = sparsify_side_paths(proto) if integer_weights else None
        if side_paths and side_paths["fp16_kernels"]:
            side_paths["integer_gathers"] = gather_before_dequantize(proto)
        chosen = None
        if integer_weights:
            chosen, why = weight_type(weights)
            unsigned = unsigned_weights(proto) if chosen == "uint8" else 0
            metadata["quantdet.weight_type"] = json.dumps({"type": chosen, "why": why, "unsigned": unsigned})
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    info = {"path": str(path), "integer_weights": integer_weights, "integer_clips": integer_clips,
            **graph_summary(proto)}
    if chosen:
        info["weight_type"] = json.loads(metadata["quantdet.weight_type"])
    if side_paths and side_paths["fp16_kernels"]:
        info["side_paths"] = side_paths
    return info


def graph_summary(proto: onnx.ModelProto) -> dict:
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    int_inits = sum(1 for i in proto.graph.initializer
                    if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {"op_counts": ops, "integer_initializers": int_inits}


def add_metadata(path: str | Path, metadata: dict) -> None:
    """Set metadata_props of an ONNX file in place (keys already there are replaced)."""
    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.save(proto, str(path))
