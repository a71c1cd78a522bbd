import numpy as np
import onnx
import pytest
import torch

from quantdet.export.fidelity import output_agreement
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
        # int8, or uint8 = int8 + 128 with zero point 128 where this CPU's int8 kernels saturate
        unsigned = info["weight_type"]["type"] == "uint8"
        assert weight.data_type == (onnx.TensorProto.UINT8 if unsigned else onnx.TensorProto.INT8)
        assert (onnx.numpy_helper.to_array(inits[dq.input[2]]) == (128 if unsigned else 0)).all()
        scale = inits.get(dq.input[1])
        assert scale is not None and len(scale.dims) == 1 and scale.dims[0] == weight.dims[0]
        ints = onnx.numpy_helper.to_array(weight).astype(np.int32) - (128 if unsigned else 0)
        assert np.abs(ints).max() <= 2 ** (bits - 1)  # values stay on the low-bit grid
    offset = 128 if info["weight_type"]["type"] == "uint8" else 0
    all_ints = sorted(tuple(onnx.numpy_helper.to_array(inits[producers[c.input[1]].input[0]]).astype(np.int32).ravel()
                            - offset) for c in convs)
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


def test_uint8_weights_are_the_int8_model_and_run_exactly_on_any_cpu(exported, tmp_path):
    """Both weight types give the same model: int8 and uint8 (+128, zero point 128) exports of
    one quantized model agree with each other and with PyTorch, whatever this CPU. On a CPU
    without VNNI the int8 one saturates in onnxruntime's U8S8 kernels (measured on an AMD EPYC
    without it: 20% of outputs within one step), which is why `auto` picks uint8 there."""
    from quantdet.export.onnx_export import weight_type

    bits, q, _, _ = exported
    torch.manual_seed(1)
    images = torch.rand(16, 3, 32, 32)
    paths = {}
    for kind in ("int8", "uint8"):
        paths[kind] = tmp_path / f"{kind}.onnx"
        info = export_onnx(q, paths[kind], 32, 17, weights=kind)
        assert info["weight_type"]["type"] == kind and info["weight_type"]["unsigned"] == (6 if kind == "uint8" else 0)
    report = output_agreement(q, OrtDetector(paths["uint8"]), images, bits)
    for name, frac in report["within_one_step_fraction"].items():
        assert frac >= (0.99 if bits == 8 else 0.95), (name, report)
    if weight_type("auto")[0] == "int8":   # VNNI: the int8 kernels are exact too
        ours = output_agreement(q, OrtDetector(paths["int8"]), images, bits)
        assert min(ours["within_one_step_fraction"].values()) >= (0.99 if bits == 8 else 0.95)


def test_fp32_export_matches_pytorch(tmp_path):
    model = tiny_model()
    path = tmp_path / "fp32.onnx"
    info = export_onnx(model, path, 32, 17)
    assert info["integer_weights"] == 0
    x = torch.rand(2, 3, 32, 32)
    for a, b in zip(model(x), OrtDetector(path)(x)):
        assert torch.allclose(a, b, atol=1e-4)


def _optimized_ops(path, tmp_path) -> list[str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_low_bit_export_runs_integer_convolutions_in_onnxruntime(exported, tmp_path):
    """A 4-bit grid rides on 8-bit integer kernels: the activation clamps are integer Clips
    after QuantizeLinear, so onnxruntime fuses every quantized-output conv into QLinearConv."""
    bits, q, path, info = exported
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    if bits < 8:
        assert info["integer_clips"] == len(clips) > 0
    else:
        assert info["integer_clips"] == 0 and not clips
    # every Clip works on integers: its input is a QuantizeLinear's output, its bounds uint8
    values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for clip in clips:
        assert producers[clip.input[0]].op_type == "QuantizeLinear"
        assert all(values[b].dtype == np.uint8 for b in clip.input[1:] if b)
    if bits < 8:  # the float Clips, kept on request, are the same values
        float_path = tmp_path / "float-clips.onnx"
        assert export_onnx(q, float_path, 32, 17, integer_clips=False)["integer_clips"] == 0
        x = torch.rand(4, 3, 32, 32)
        for a, b in zip(OrtDetector(path)(x), OrtDetector(float_path)(x)):
            assert torch.allclose(a, b, atol=1e-5)
    ops = _optimized_ops(path, tmp_path)
    # the tiny model: 4 convs whose output is quantized, 2 prediction convs with float outputs
    assert ops.count("QLinearConv") == 4
    assert ops.count("Conv") + ops.count("FusedConv") == 2
    assert ops.count("QLinearAdd") == 2


def test_integer_clip_is_exactly_the_float_clip(tmp_path):
    """Q(clip(x, a, b)) == clip(Q(x), Q(a), Q(b)): the rewrite changes no value, for bounds on
    the grid or off it, either bound alone, any zero point."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from quantdet.export.onnx_export import integer_activation_clips

    x = np.concatenate([np.random.default_rng(0).normal(0, 3, 20000),
                        np.arange(-400, 400) * 0.025]).astype(np.float32)  # ties at half steps
    for lo, hi, scale, zp in ((0.0, 0.75, 0.05, 0), (-0.4, 0.35, 0.05, 8), (-0.37, 1.23, 0.01, 40),
                              (None, 0.7, 0.1, 3), (-1.0, None, 0.02, 200), (-50.0, 50.0, 0.05, 0)):
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
                 helper.make_tensor("z", TensorProto.UINT8, [], [zp])]
        bounds = []
        for name, v in (("lo", lo), ("hi", hi)):
            if v is None:
                bounds.append("")
            else:
                inits.append(helper.make_tensor(name, TensorProto.FLOAT, [], [v]))
                bounds.append(name)
        nodes = [helper.make_node("Clip", ["x", *bounds], ["c"]),
                 helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        assert integer_activation_clips(rewritten) == 1
        onnx.checker.check_model(rewritten)
        assert [n.op_type for n in rewritten.graph.node if n.op_type == "Clip"] in ([], ["Clip"])
        run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {"x": x})[0] for m in (model, rewritten)]
        np.testing.assert_array_equal(run[0], run[1])


def test_layer_divergence_names_the_convolution_that_departs_from_fp32(tmp_path):
    """Convolutions matched by order between the FP32 and the QDQ graph (their names differ:
    batch norm folded); a W8A8 model stays close everywhere, and a weight scale spoiled by hand
    in one convolution puts that convolution first."""
    import copy

    from quantdet.export.divergence import layer_divergence

    torch.manual_seed(0)
    model = tiny_model().eval()
    export_onnx(model, tmp_path / "fp32.onnx", 32, 17)
    q = post_training_quantize(copy.deepcopy(model), [torch.rand(8, 3, 32, 32) for _ in range(3)], "minmax", 8, 8,
                               {"calib_batches": 3})
    export_onnx(q, tmp_path / "q.onnx", 32, 17)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)).numpy()
    report = layer_divergence(tmp_path / "fp32.onnx", tmp_path / "q.onnx", images)
    assert report["matched"] and report["convolutions"] == 6 and report["images"] == 4
    assert report["largest"][0]["relative_error"] < 0.1, report
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    scale = inits[producers[convs[2].input[1]].input[1]]
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 4, scale.name))
    onnx.save(proto, str(tmp_path / "spoiled.onnx"))
    spoiled = layer_divergence(tmp_path / "fp32.onnx", tmp_path / "spoiled.onnx", images)
    assert spoiled["largest"][0]["index"] == 2 and spoiled["largest"][0]["relative_error"] > 0.5, spoiled
    # one convolution fewer: not matched, and said why
    assert "convolutions" in layer_divergence(tmp_path / "fp32.onnx", _fewer_convs(tmp_path), images)["why"]


def _fewer_convs(tmp_path):
    proto = onnx.load(str(tmp_path / "fp32.onnx"))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.output[0] not in {o.name for o in proto.graph.output})
    relu = onnx.helper.make_node("Identity", [conv.input[0]], [conv.output[0]])
    index = list(proto.graph.node).index(conv)
    proto.graph.node.remove(conv)
    proto.graph.node.insert(index, relu)
    path = tmp_path / "fewer.onnx"
    onnx.save(proto, str(path))
    return path
