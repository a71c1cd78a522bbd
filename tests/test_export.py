import numpy as np
import onnx
import pytest
import torch

from quantdet.export.fidelity import compare_latency, output_agreement
from quantdet.export.onnx_export import export_onnx
from quantdet.export.runner import OrtDetector
from quantdet.quant.graph import activation_quantizers
from quantdet.quant.modules import QuantConv2d
from quantdet.quant.ptq import post_training_quantize
from tests.quant_models import tiny_model


@pytest.fixture(scope="module", params=[8, 4])
def exported(request, tmp_path_factory):
    bits = request.param
    torch.manual_seed(0)
    model = tiny_model()
    batches = [torch.rand(8, 3, 32, 32) for _ in range(3)]
    q = post_training_quantize(model, batches, "minmax", bits, bits, {"calib_batches": 3})
    path = tmp_path_factory.mktemp("onnx") / f"tiny-w{bits}a{bits}.onnx"
    info = export_onnx(q, path, 32, 17, metadata={"quantdet.bits": f"W{bits}A{bits}"})
    return bits, q, path, info


def test_qdq_nodes_carry_our_scales_and_zero_points(exported):
    bits, q, path, info = exported
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    act_scales = sorted(float(a.scale) for a in activation_quantizers(q))
    exported_scales = sorted({float(values[n.input[1]]) for n in proto.graph.node
                              if n.op_type == "QuantizeLinear"})
    assert exported_scales == pytest.approx(sorted(set(act_scales)), rel=1e-6)
    zps = [values[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.uint8 for z in zps)  # uint8 activations


def test_every_conv_weight_is_an_int8_per_channel_initializer(exported):
    bits, q, path, info = exported
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 6 and info["integer_weights"] == 6
    qconvs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight = inits[dq.input[0]]
        assert weight.data_type == onnx.TensorProto.INT8
        scale = inits.get(dq.input[1])
        assert scale is not None and len(scale.dims) == 1 and scale.dims[0] == weight.dims[0]
        ints = onnx.numpy_helper.to_array(weight)
        assert np.abs(ints).max() <= 2 ** (bits - 1)  # values stay on the low-bit grid
    all_ints = sorted(tuple(onnx.numpy_helper.to_array(inits[producers[c.input[1]].input[0]]).ravel())
                      for c in convs)
    ours = sorted(tuple(m.integer_weight().numpy().ravel()) for m in qconvs)
    assert all_ints == ours


def test_metadata_is_written(exported):
    bits, _, path, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["quantdet.bits"] == f"W{bits}A{bits}"


def test_onnxruntime_matches_fake_quantized_model_within_one_step(exported):
    bits, q, path, _ = exported
    torch.manual_seed(1)
    images = torch.rand(16, 3, 32, 32)
    report = output_agreement(q, OrtDetector(path), images, bits)
    # onnxruntime requantizes in integer arithmetic: an off-by-one rounding upstream is
    # expected now and then, and weighs more on a 4-bit grid
    min_fraction = 0.99 if bits == 8 else 0.95
    for name, frac in report["within_one_step_fraction"].items():
        assert frac >= min_fraction, (name, report)
        assert report["max_abs_diff"][name] <= 3 * report["quant_step"][name]


def test_fp32_export_matches_pytorch(tmp_path):
    model = tiny_model()
    path = tmp_path / "fp32.onnx"
    info = export_onnx(model, path, 32, 17)
    assert info["integer_weights"] == 0
    x = torch.rand(2, 3, 32, 32)
    for a, b in zip(model(x), OrtDetector(path)(x)):
        assert torch.allclose(a, b, atol=1e-4)


def test_latency_comparison_reports_each_session(exported, tmp_path):
    _, _, path, _ = exported
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(tiny_model(), fp32, 32, 17)
    images = np.random.rand(2, 3, 32, 32).astype(np.float32)
    lat = compare_latency({"fp32": OrtDetector(fp32), "int8": OrtDetector(path)}, images, runs=3)
    assert set(lat) == {"fp32", "int8"} and all(v > 0 for v in lat.values())
