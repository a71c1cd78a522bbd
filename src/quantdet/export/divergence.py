"""Where a quantized ONNX model departs from its FP32 model: each convolution's output in the
one against the same convolution's in the other, on the same images.

The report names the layers that differ most for any deployed model that lost more than half
of its FP32 model's P (quantdet.report.losses): the usual cause of an INT8 detector that
detects nothing is one tensor forced onto a scale that does not fit it (a head's concatenation
of boxes and scores on one scale), and the first convolutions after it show it.

Convolutions are matched by their order in the graph (both graphs sorted topologically): names
differ between exports (batch norm folded into a convolution renames it), order does not,
since quantization inserts Quantize/DequantizeLinear pairs but neither adds nor removes a
convolution. Graphs with different numbers of convolutions are not matched (said so). Each
quantized convolution is read as the QDQ graph computes it (dequantized inputs, float
output), in onnxruntime, with the intermediate outputs exposed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CONVOLUTIONS = ("Conv", "ConvTranspose")


def _conv_outputs(model) -> list[tuple[str, str]]:
    """(node name, output tensor) of each convolution, in graph order."""
    return [(node.name or node.output[0], node.output[0]) for node in model.graph.node
            if node.op_type in CONVOLUTIONS]


def _run_with_outputs(path: Path, tensors: list[str], images: np.ndarray, threads: int) -> list[np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.astype(np.float32)}
    return session.run(tensors, feed)


def layer_divergence(fp32_onnx, quantized_onnx, images: np.ndarray, top: int = 8, threads: int = 1) -> dict:
    """Relative error ‖q − f‖ / ‖f‖ of each convolution's output over ``images``, the ``top``
    largest first, named by the FP32 graph's nodes."""
    import onnx

    reference = _conv_outputs(onnx.load(str(fp32_onnx), load_external_data=False))
    quantized = _conv_outputs(onnx.load(str(quantized_onnx), load_external_data=False))
    if len(reference) != len(quantized) or not reference:
        return {"matched": False,
                "why": f"{len(reference)} convolutions in the FP32 graph, {len(quantized)} in the quantized one"}
    try:
        fp32_values = _run_with_outputs(Path(fp32_onnx), [t for _, t in reference], images, threads)
        quant_values = _run_with_outputs(Path(quantized_onnx), [t for _, t in quantized], images, threads)
    except Exception as err:   # a diagnosis: its failure is recorded, never the job's
        return {"matched": False, "why": f"onnxruntime could not expose the convolutions' outputs: "
                                         f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"}
    layers = []
    for index, ((layer, _), f, q) in enumerate(zip(reference, fp32_values, quant_values)):
        f, q = np.asarray(f, dtype=np.float64), np.asarray(q, dtype=np.float64)
        if f.shape != q.shape:
            return {"matched": False, "why": f"convolution {index} ({layer}): output {f.shape} in FP32, {q.shape} quantized"}
        norm = float(np.linalg.norm(f))
        layers.append({"index": index, "layer": layer,
                       "relative_error": float(np.linalg.norm(q - f) / norm) if norm > 0 else float(np.linalg.norm(q))})
    ranked = sorted(layers, key=lambda r: -r["relative_error"])
    return {"matched": True, "convolutions": len(layers), "images": int(len(images)),
            "measure": "relative L2 error of each convolution's output, quantized vs FP32 ONNX, same images",
            "largest": ranked[:top], "median_relative_error": float(np.median([r["relative_error"] for r in layers]))}
