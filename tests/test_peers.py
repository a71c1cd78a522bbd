"""The peer quantizers (methods/ort_static.py, methods/nncf_peer.py) on a tiny FP32 ONNX model:
each writes a QDQ model with int8 weight initializers that onnxruntime loads and whose outputs
stay near the FP32 model's; the registry lists them without importing their tools."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from quantdet.export.onnx_export import export_onnx
from quantdet.export.runner import OrtDetector
from quantdet.methods import get_method
from tests.quant_models import tiny_model


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("peer") / "fp32.onnx"
    export_onnx(tiny_model(), path, 32, 17)
    return path


def _calibration():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(4, 3, 32, 32, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("peer", ["ort_minmax", "nncf", "nncf_mixed"])
def test_a_peer_writes_a_qdq_model_with_int8_weights_onnxruntime_runs(fp32_onnx, tmp_path, peer):
    method = get_method("peer", peer)
    out = tmp_path / f"{peer}.onnx"
    settings = method.quantize_onnx(fp32_onnx, out, iter(_calibration()), {})
    json.dumps(settings)  # the peer stage writes them to its summary
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 6
    for conv in convs:  # every conv weight: an int8 initializer behind a DequantizeLinear
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for fp32, quantized in zip(OrtDetector(fp32_onnx)(x), OrtDetector(out)(x)):
        assert fp32.shape == quantized.shape
        scale = float(fp32.abs().max())
        assert float((fp32 - quantized).abs().max()) < 0.1 * scale + 1e-3


def test_the_nncf_peers_record_the_tool_version_and_preset(fp32_onnx, tmp_path):
    import nncf

    default = get_method("peer", "nncf").quantize_onnx(fp32_onnx, tmp_path / "a.onnx", iter(_calibration()), {})
    mixed = get_method("peer", "nncf_mixed").quantize_onnx(fp32_onnx, tmp_path / "b.onnx", iter(_calibration()), {})
    assert default["tool"] == mixed["tool"] == "nncf" and default["version"] == nncf.__version__
    assert default["preset"].startswith("default") and mixed["preset"] == "mixed"
    assert default["calibration_items"] == 12  # one per image, every image
    # performance: symmetric activations (zero points 0 or 128 depending on sign); mixed: asymmetric
    zero_points = []
    for path in (tmp_path / "a.onnx", tmp_path / "b.onnx"):
        proto = onnx.load(str(path))
        values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        zero_points.append({int(np.asarray(values[n.input[2]]).ravel()[0]) for n in proto.graph.node
                            if n.op_type == "QuantizeLinear" and len(n.input) > 2})
    assert zero_points[0] <= {0, 128} and not zero_points[1] <= {0, 128}


def test_listing_the_peers_imports_neither_nncf_nor_torch():
    code = ("import sys; from quantdet.methods import names; p = names('peer'); "
            "assert {'ort_minmax', 'nncf', 'nncf_mixed'} <= set(p), p; "
            "assert 'nncf' not in sys.modules and 'torch' not in sys.modules, "
            "[m for m in ('nncf', 'torch') if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)
