"""Deployment precisions of an FP32 detector (matrix.precisions): the ladder QRID's table
crosses every detector with, beside quantdet's static integer models.

    fp16          onnxruntime: the FP32 ONNX model converted to float16 (inputs and outputs
                  kept float32); openvino: the FP32 ONNX model at inference precision f16
    bf16          openvino: inference precision bf16 (AMX where the CPU has it); torch: the FP32
                  PyTorch model under torch.autocast(bfloat16), as PyTorch users run it
    int8_dynamic  onnxruntime: `quantize_dynamic` at its defaults (weights int8, activations
                  quantized per batch at run time)

A runtime is never trusted to have run what it was asked: each precision's model is checked
after the runtime compiled it (onnxruntime's optimized graph, OpenVINO's runtime model, the
dtype PyTorch's convolutions returned), and a precision that the runtime turned back into
float32 is refused with what it ran instead. `probe` asks the same of a one-convolution
model, so that `quantdet validate` refuses a (precision, runtime) pair this machine cannot
run before a study starts.
"""
from __future__ import annotations

import functools
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from quantdet.errors import QuantdetError

PRECISIONS = {   # precision -> the runtimes that can run it, and its label in tables
    "fp16": {"runtimes": ("onnxruntime", "openvino"), "label": "FP16"},
    "bf16": {"runtimes": ("openvino", "torch"), "label": "BF16"},
    "int8_dynamic": {"runtimes": ("onnxruntime",), "label": "INT8 dynamic"},
}
UNSUPPORTED = {   # (precision, runtime) pairs quantdet does not run, and why
    ("fp16", "torch"): "quantdet deploys FP16 through an ONNX runtime (onnxruntime or openvino)",
    ("bf16", "onnxruntime"): "onnxruntime's CPU execution provider has no bfloat16 convolution kernels",
    ("int8_dynamic", "openvino"): "onnxruntime's quantize_dynamic writes ConvInteger and "
                                  "DynamicQuantizeLinear, onnxruntime's own integer operators; "
                                  "for OpenVINO's integer path use the nncf peer",
    ("int8_dynamic", "torch"): "PyTorch's dynamic quantization covers Linear and LSTM layers, not "
                               "convolutions, so it would leave a detector in float",
}
OV_HINT = {"fp16": "f16", "bf16": "bf16"}
CONV_OPS = ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "NhwcFusedConv")


def label(precision: str) -> str:
    return PRECISIONS[precision]["label"]


def refusal(precision: str, runtime: str) -> str | None:
    """Why quantdet does not run a (precision, runtime) pair (None: it does)."""
    if precision not in PRECISIONS:
        return f"unknown precision (known: {', '.join(PRECISIONS)})"
    if runtime in PRECISIONS[precision]["runtimes"]:
        return None
    return UNSUPPORTED.get((precision, runtime), f"{runtime} is not a runtime of {precision}")


# ---------------------------------------------------------------------------- conversion
def convert(fp32_onnx, precision: str, out) -> dict:
    """Write the onnxruntime model of a precision from the FP32 ONNX model; returns what the
    conversion did (operator counts before and after)."""
    import onnx

    source = onnx.load(str(fp32_onnx))
    before = Counter(n.op_type for n in source.graph.node)
    out = Path(out)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        converted = convert_float_to_float16(source, keep_io_types=True)
        onnx.save(converted, str(out))
        tool = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"
    elif precision == "int8_dynamic":
        import logging

        from onnxruntime.quantization import quantize_dynamic

        # it logs through the module-level logging.info/warning, which give the root logger a
        # stderr handler when it has none: inside Snakemake's process every line Snakemake
        # logs would then print twice. Its notices (pre-process, per-tensor) are silenced, and
        # the root logger is left as it was found.
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32_onnx), str(out))
        finally:
            root.setLevel(level)
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
        tool = "onnxruntime.quantization.quantize_dynamic (defaults: QInt8 weights, per-tensor)"
    else:
        raise QuantdetError(f"{precision}: no onnxruntime conversion ({refusal(precision, 'onnxruntime')})")
    after = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    record = {"tool": tool, "operators_fp32": dict(sorted(before.items())),
              "operators": dict(sorted(after.items()))}
    if precision == "int8_dynamic":
        record["quantized_operators"] = {op: after[op] for op in ("ConvInteger", "MatMulInteger",
                                                                  "DynamicQuantizeLinear") if after[op]}
        record["float_operators_left"] = {op: after[op] for op in ("Conv", "MatMul", "Gemm") if after[op]}
        record["multiply_accumulates"] = multiply_accumulates(out)
    return record


INTEGER_MAC_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
FLOAT_MAC_OPS = ("Conv", "MatMul", "Gemm")


def multiply_accumulates(path) -> dict:
    """The multiply-accumulates of one image through the model's convolutions and matrix
    products, by the arithmetic their operator runs in: how much of a dynamically quantized
    model runs in integer. Shapes are those of one run in onnxruntime on a zero image (ONNX
    shape inference leaves the spatial sizes after a Resize unknown)."""
    import math

    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    weights = {i.name: list(i.dims) for i in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in INTEGER_MAC_OPS + FLOAT_MAC_OPS]

    def weight_of(node):
        return node.input[3] if node.op_type in ("QLinearConv", "QLinearMatMul") else node.input[1]

    # a weight behind a DequantizeLinear (QDQ) has its initializer's shape
    behind = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    wanted = {n.output[0] for n in nodes}
    wanted |= {weight_of(n) for n in nodes if weight_of(n) not in weights and behind.get(weight_of(n)) not in weights}
    present = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in sorted(wanted - present))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in value.shape]
        feeds[value.name] = np.zeros(shape, dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    shapes = dict(zip(names, (list(a.shape) for a in session.run(names, feeds))))
    counts = {"integer": 0, "float": 0}
    for node in nodes:
        w = weights.get(weight_of(node)) or weights.get(behind.get(weight_of(node))) or shapes[weight_of(node)]
        out = shapes[node.output[0]]
        if "Conv" in node.op_type:   # per output element: C_in / groups x kernel
            macs = math.prod(out) * math.prod(w[1:])
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
            macs = math.prod(out) * w[1]
        else:                         # per output element: the reduced dimension
            macs = math.prod(out) * w[-2]
        counts["integer" if node.op_type in INTEGER_MAC_OPS else "float"] += int(macs)
    total = counts["integer"] + counts["float"]
    return {"integer": counts["integer"], "float": counts["float"],
            "integer_share": counts["integer"] / total if total else None}


# ---------------------------------------------------------------------------- what ran
def ort_executed(path, threads: int = 1) -> dict:
    """The convolutions of onnxruntime's optimized graph by the arithmetic they run in: a
    float16 model whose convolutions onnxruntime turned into float32 (with Casts around them:
    its CPU provider lacks the kernel) shows here as float32 convolutions."""
    import onnx
    import onnxruntime as ort

    fd, optimized = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = optimized
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(optimized, load_external_data=False).graph
    finally:
        os.remove(optimized)
    types = {i.name: i.data_type for i in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]})
    convs = Counter()
    for node in graph.node:
        if node.op_type not in CONV_OPS:
            continue
        if node.op_type in ("ConvInteger", "QLinearConv"):
            convs["int8"] += 1
            continue
        # the weight's type; fused or layout-changed weights lose it: then the node's domain
        # tells (onnxruntime's NCHWc and fused float kernels are float32)
        dtype = types.get(node.input[1]) if len(node.input) > 1 else None
        convs[{onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.FLOAT: "fp32"}.get(dtype, "fp32")] += 1
    return {"runtime": "onnxruntime", "version": ort.__version__,
            "convolutions_by_precision": dict(sorted(convs.items())),
            "casts": sum(1 for n in graph.node if n.op_type == "Cast")}


def ov_executed(compiled) -> dict:
    """OpenVINO's compiled model: its inference precision and the runtime precision of its
    convolutions (the runtime model's `runtimePrecision` per layer)."""
    import openvino as ov

    convs, layers = Counter(), Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" not in info:
            continue
        precision = str(info["runtimePrecision"].astype(str))
        layers[precision] += 1
        layer = str(info["layerType"].astype(str)) if "layerType" in info else ""
        if "Convolution" in layer:
            convs[precision] += 1
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {"runtime": "openvino", "version": ov.__version__,
            "precision_hint": hint.to_string() if hasattr(hint, "to_string") else str(hint),
            "convolutions_by_precision": dict(sorted(convs.items())),
            "layers_by_precision": dict(sorted(layers.items()))}


EXPECTED = {"fp16": ("fp16", "f16"), "bf16": ("bf16",), "int8_dynamic": ("int8",)}


def check_executed(precision: str, executed: dict, where: str) -> None:
    """Refuse a model whose runtime ran none of its convolutions at the precision asked for
    (a silent fallback to float32)."""
    convs = executed.get("convolutions_by_precision") or {}
    ran = sum(v for k, v in convs.items() if k in EXPECTED[precision])
    if ran == 0:
        total = sum(convs.values())
        raise QuantdetError(
            f"{where}: {executed['runtime']} {executed.get('version', '')} ran none of the model's "
            f"{total} convolutions in {precision} (it ran them as {', '.join(f'{v} {k}' for k, v in convs.items()) or 'nothing'}): "
            f"this runtime cannot run {precision} on this machine; drop it from matrix.precisions.{precision}")


# ---------------------------------------------------------------------------- runners
class OvPrecisionDetector:
    """An FP32 ONNX model in OpenVINO at an inference precision (f16, bf16), checked after
    compiling; the same callable as quantdet.export.runner.OrtDetector."""

    def __init__(self, path, precision: str, threads: int = 1):
        from quantdet.export.runner import OvDetector

        self._ov = OvDetector(path, threads=threads, precision_hint=OV_HINT[precision])
        self.metadata, self.output_names = self._ov.metadata, self._ov.output_names
        self.detector_config, self.path = self._ov.detector_config, self._ov.path
        self.info = ov_executed(self._ov.compiled) | {"precision": precision}
        check_executed(precision, self.info, str(path))

    def __call__(self, images):
        return self._ov(images)

    def run_numpy(self, images):
        return self._ov.run_numpy(images)

    def eval(self):
        return self


class TorchAutocastDetector:
    """The FP32 PyTorch model under torch.autocast(cpu, bfloat16); float32 outputs. Its first
    call checks that the convolutions ran in bfloat16 (their outputs' dtype)."""

    def __init__(self, model, precision: str = "bf16"):
        import torch

        self.model, self.dtype, self.checked = model.eval(), torch.bfloat16, False
        self.info = {"runtime": "torch", "version": torch.__version__, "precision": precision,
                     "autocast": "torch.autocast('cpu', dtype=torch.bfloat16)"}

    def __call__(self, images):
        import torch

        seen, handles = Counter(), []
        if not self.checked:
            def hook(_module, _inputs, output):
                seen["bf16" if output.dtype == torch.bfloat16 else str(output.dtype).replace("torch.", "")] += 1

            handles = [m.register_forward_hook(hook) for m in self.model.modules()
                       if isinstance(m, torch.nn.modules.conv._ConvNd)]
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=self.dtype):
                outputs = self.model(images)
        finally:
            for h in handles:
                h.remove()
        if not self.checked:
            self.info["convolutions_by_precision"] = dict(sorted(seen.items()))
            check_executed("bf16", self.info, "the FP32 model under bf16 autocast")
            self.checked = True
        return tuple(o.float() for o in outputs)

    def check(self, images) -> None:
        """Run one image (the first call checks what ran)."""
        self(images[:1])

    def eval(self):
        return self


# ---------------------------------------------------------------------------- probes
def _tiny_onnx(path: str) -> None:
    """A one-convolution FP32 model (3 -> 8 channels, 3x3, 32 px)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8   # what every supported onnxruntime reads
    onnx.save(model, path)


@functools.lru_cache(maxsize=None)
def probe(precision: str, runtime: str) -> str | None:
    """Can this machine's `runtime` run `precision`? None if it ran a convolution in it, else
    why not (what it ran instead). Asked of a one-convolution model: milliseconds."""
    reason = refusal(precision, runtime)
    if reason:
        return reason
    try:
        if runtime == "torch":
            import torch

            conv = torch.nn.Conv2d(3, 8, 3)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                dtype = conv(torch.rand(1, 3, 16, 16)).dtype
            return None if dtype == torch.bfloat16 else f"autocast(bfloat16) ran a convolution in {dtype}"
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = str(Path(tmp) / "probe.onnx")
            _tiny_onnx(fp32)
            if runtime == "onnxruntime":
                model = str(Path(tmp) / f"probe-{precision}.onnx")
                convert(fp32, precision, model)
                executed = ort_executed(model)
            else:
                import openvino as ov

                core = ov.Core()
                compiled = core.compile_model(core.read_model(fp32), "CPU",
                                              {"INFERENCE_PRECISION_HINT": OV_HINT[precision],
                                               "INFERENCE_NUM_THREADS": 1})
                executed = ov_executed(compiled)
            check_executed(precision, executed, "a one-convolution model")
    except QuantdetError as err:
        return str(err).split(": ", 1)[1].split("; drop it")[0]
    except Exception as err:   # the runtime refused the model or the hint
        return f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
    return None
