"""Outlier-aware QAT (quant/outlier.py): the weight split, the side path, the error-aware loss,
save/load and the exported side path."""
import numpy as np
import onnx
import pytest
import torch

from quantdet import detectors
from quantdet.export.fidelity import output_agreement
from quantdet.export.onnx_export import export_onnx
from quantdet.export.runner import OrtDetector
from quantdet.models.io import build_from_config, load_model, save_model
from quantdet.quant.graph import quantize_model
from quantdet.quant.modules import QUANTIZE, ActQuantizer, QuantConv2d
from quantdet.quant.outlier import (OutlierQuantConv2d, QuantErrorLoss, attach_outlier_layers,
                                    graph_quantizers, largest_magnitude_mask, outlier_layers,
                                    select_outliers, side_paths_disabled, split_weight)
from quantdet.methods import get_method
from quantdet.quant.qat import prepare_qat
from quantdet.quant.quantizer import symmetric_scale
from tests.quant_models import tiny_model

OUTLIER = {"weight_fraction": 0.02, "channel_fraction": 0.25, "loss_weight": 1.0}


def _oaqat(bits=4, seed=0):
    torch.manual_seed(seed)
    calib = [torch.rand(8, 3, 32, 32) for _ in range(3)]
    return prepare_qat(tiny_model(), get_method("qat", "oaqat").recipe, bits, bits, calib, 3, 0.999, 0.1, OUTLIER)


def test_dense_plus_sparse_is_the_original_weight_exactly():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    w[3, 2, 1, 1] = 40.0
    mask = largest_magnitude_mask(w, 0.01)
    assert int(mask.sum()) == 12 and bool(mask[3, 2, 1, 1])
    dense, sparse = split_weight(w, mask)
    assert torch.equal(dense + sparse, w)
    assert not bool((dense[mask] != 0).any()) and not bool((sparse[~mask] != 0).any())
    assert dense.abs().min() >= 0 and sparse.abs()[mask].min() >= dense.abs().max()


def test_layer_keeps_outliers_off_the_grid_and_in_fp16():
    qmodel, config = _oaqat()
    layers = outlier_layers(qmodel)
    assert len(layers) == 6 and config["outlier"]["weights_kept_fp16"] == sum(
        int(m.outlier_mask.sum()) for m in layers)
    for m in layers:
        dense, sparse = split_weight(m.weight.detach(), m.outlier_mask)
        # the per-channel scale comes from the dense weights only: the grid is not stretched
        expected = symmetric_scale(dense.abs().flatten(1).amax(1), m.weight_bits)
        assert torch.equal(m.weight_scale(), expected)
        assert torch.equal(m.outlier_weight(), sparse.half().float())
        # the outliers really lie off the grid the dense weights define
        assert (sparse.abs().flatten(1).amax(1) >= expected * m.wqmax).any()


def test_side_path_equals_a_dense_convolution_with_the_outliers():
    qmodel, _ = _oaqat()
    x = torch.rand(2, 8, 16, 16)
    for m in outlier_layers(qmodel):
        if m.in_channels != 8:
            continue
        sparse = m._side_path(x)
        dense = torch.nn.functional.conv2d(x, m.outlier_weight(), None, m.stride, m.padding,
                                           m.dilation, m.groups)
        assert torch.allclose(sparse, dense, atol=1e-6)


def test_outlier_selection_is_fixed_while_weights_train():
    qmodel, _ = _oaqat()
    masks = [m.outlier_mask.clone() for m in outlier_layers(qmodel)]
    x = torch.rand(4, 3, 32, 32)
    qmodel.train()
    sum(o.sum() for o in qmodel(x)).backward()
    # the FP16 outliers are trained too
    assert sum(float(m.weight.grad[mask].abs().sum()) > 0
               for m, mask in zip(outlier_layers(qmodel), masks)) >= len(masks) - 1
    for m, mask in zip(outlier_layers(qmodel), masks):
        with torch.no_grad():
            m.weight.mul_(1.5)
        assert torch.equal(m.outlier_mask, mask)


def _quantizer_with_outlier_channels(scale=0.1):
    q = ActQuantizer(4, "minmax")
    q.observer.observe(torch.tensor([0.0, 15 * scale]))
    q.freeze()
    q.outlier_channels = torch.tensor([1])
    return q


def test_error_loss_is_zero_on_the_grid_and_positive_with_a_gradient_off_it():
    q = _quantizer_with_outlier_channels()
    holder = torch.nn.Module()
    holder.q = q
    holder.train()
    with QuantErrorLoss(holder, weight=2.0) as loss:
        on_grid = (torch.randint(0, 16, (2, 3, 4, 4)) * 0.1).requires_grad_()
        q(on_grid)
        value, parts = loss(holder, None, None, (on_grid,))
        assert float(value.detach()) == pytest.approx(0.0, abs=1e-10) and parts["quant_error"] < 1e-10

        off = (torch.rand(2, 3, 4, 4) * 2.0).requires_grad_()  # some clipped, most between steps
        q(off)
        value, parts = loss(holder, None, None, (off,))
        assert float(value.detach()) > 0
        value.backward()
        assert off.grad[:, 1].abs().sum() > 0  # the outlier channel is pushed towards the grid
        assert off.grad[:, [0, 2]].abs().sum() == 0  # other channels are not in the loss
    assert not q._forward_hooks  # hooks removed on exit


def test_error_loss_reaches_the_weights_during_training():
    qmodel, config = _oaqat()
    assert config["outlier"]["outlier_channels"] > 0
    assert all(hasattr(q, "outlier_channels") for q in graph_quantizers(qmodel))
    qmodel.train()
    with QuantErrorLoss(qmodel, weight=1.0) as loss:
        outputs = qmodel(torch.rand(4, 3, 32, 32))
        value, _ = loss(qmodel, None, None, outputs)
        assert float(value.detach()) > 0
        value.backward()
    assert any(m.weight.grad is not None and m.weight.grad.abs().sum() > 0
               for m in outlier_layers(qmodel))


def test_save_load_round_trip_keeps_masks_and_outputs(tmp_path):
    qmodel, config = _oaqat()
    qmodel.eval()
    x = torch.rand(2, 3, 32, 32)
    expected = qmodel(x)
    path = tmp_path / "oaqat.pt"
    detector = {"backbone": "unused"}
    save_model(path, qmodel, kind="quantized", detector=detector, classes={}, quant=config)

    # build_from_config rebuilds a detector; rebuild the tiny model the same way by hand
    rebuilt = quantize_model(tiny_model(seed=1), config["weight_bits"], config["act_bits"],
                             config["observer"])
    attach_outlier_layers(rebuilt, config["observer"])
    for q in rebuilt.modules():
        if isinstance(q, ActQuantizer):
            q.mode = QUANTIZE
    rebuilt.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    rebuilt.eval()
    for a, b in zip(outlier_layers(qmodel), outlier_layers(rebuilt)):
        assert torch.equal(a.outlier_mask, b.outlier_mask)
    for a, b in zip(expected, rebuilt(x)):
        assert torch.equal(a, b)


def test_load_model_rebuilds_an_outlier_aware_detector(tmp_path):

    detector = {"backbone": "resnet10t", "num_classes": 2, "fpn_channels": 8, "head_channels": 8,
                "pretrained": False}
    torch.manual_seed(0)
    model = detectors.build(detector).eval()
    calib = [torch.rand(2, 3, 64, 64)]
    qmodel, config = prepare_qat(model, get_method("qat", "oaqat").recipe, 4, 4, calib, 1, 0.999, 0.1, OUTLIER)
    qmodel.eval()
    path = tmp_path / "det.pt"
    save_model(path, qmodel, kind="quantized", detector=detector, classes={}, quant=config)
    loaded, payload = load_model(path)
    assert payload["quant"]["outlier"]["weights_kept_fp16"] > 0
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(qmodel(x), loaded(x)):
        assert torch.equal(a, b)
    assert isinstance(build_from_config(detector, config).get_submodule(
        next(n for n, m in qmodel.named_modules() if isinstance(m, OutlierQuantConv2d))),
        OutlierQuantConv2d)


@pytest.mark.parametrize("bits", [8, 4])
def test_export_keeps_integer_convs_and_agrees_with_the_simulated_model(bits, tmp_path):
    qmodel, config = _oaqat(bits)
    qmodel.eval()
    path = tmp_path / "oaqat.onnx"
    info = export_onnx(qmodel, path, 32, 17)
    proto = onnx.load(str(path))
    # one FP16 side path per layer: a depthwise and a 1×1 kernel, sparse where that is smaller
    assert info["side_paths"]["fp16_kernels"] == 2 * len(outlier_layers(qmodel))
    assert info["side_paths"]["sparse_kernels"] > 0
    sparse = list(proto.graph.sparse_initializer)
    assert all(s.values.data_type == onnx.TensorProto.FLOAT16 for s in sparse)
    dense_fp16 = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer
                  if i.data_type == onnx.TensorProto.FLOAT16]
    nnz = sum(s.values.dims[0] for s in sparse) + sum(int((d != 0).sum()) for d in dense_fp16)
    assert nnz == 2 * config["outlier"]["weights_kept_fp16"]
    images = torch.rand(16, 3, 32, 32)
    report = output_agreement(qmodel, OrtDetector(path), images, bits)
    for name, frac in report["within_one_step_fraction"].items():
        assert frac >= (0.99 if bits == 8 else 0.95), (name, report)
        assert report["max_abs_diff"][name] <= 3 * report["quant_step"][name]
    import onnxruntime as ort

    # without onnxruntime's integer fusions the graph computes exactly the simulated arithmetic
    exact = OrtDetector(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for a, b in zip(qmodel(images), exact(images)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # onnxruntime still runs the main convolutions in integers (QLinearConv)

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    quantized_outputs = sum(m.out_quant is not None for m in outlier_layers(qmodel))
    assert ops.count("QLinearConv") == quantized_outputs
    # without the side paths the file is smaller and the outputs differ
    with side_paths_disabled(qmodel):
        export_onnx(qmodel, tmp_path / "dense.onnx", 32, 17)
        assert not onnx.load(str(tmp_path / "dense.onnx")).graph.sparse_initializer
    assert (tmp_path / "dense.onnx").stat().st_size < path.stat().st_size
    dense_out = OrtDetector(tmp_path / "dense.onnx")(images)
    assert not np.allclose(dense_out[0].numpy(), OrtDetector(path)(images)[0].numpy())
    # keeping the 8-bit output requantization keeps the integer convolutions
    with side_paths_disabled(qmodel, keep_output_quant=True):
        export_onnx(qmodel, tmp_path / "requant.onnx", 32, 17)
    opts.optimized_model_filepath = str(tmp_path / "optimized-requant.onnx")
    ort.InferenceSession(str(tmp_path / "requant.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == quantized_outputs and "Gather" not in ops


def test_plain_quant_layers_are_unchanged():
    torch.manual_seed(0)
    q = quantize_model(tiny_model(), 4, 4, "minmax")
    assert not outlier_layers(q)
    conv = next(m for m in q.modules() if isinstance(m, QuantConv2d))
    assert conv.grid_weight() is conv.weight
    assert select_outliers(q, 0.01) == {"weights_kept_fp16": 0, "weights": 0}


def test_exported_side_paths_gather_integers_and_pad_to_the_nchwc_block(tmp_path):
    """The side paths gather the quantized input's integers (then dequantize those channels
    only) and pad their depthwise convolution to a multiple of 16 channels from 8 up (zero
    kernels), so onnxruntime runs them in its NCHWc kernels; the values stay exact (checked
    against the simulation in test_export_keeps_integer_convs_and_agrees_...)."""
    from quantdet.quant.outlier import SIDE_PATH_CHANNEL_BLOCK

    qmodel, _ = _oaqat(8)
    qmodel.eval()
    path = tmp_path / "oaqat.onnx"
    info = export_onnx(qmodel, path, 32, 17)
    layers = [m for m in outlier_layers(qmodel) if m.has_outliers]
    assert info["side_paths"]["integer_gathers"] == len(layers)
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather"
               and producers.get(n.input[0]) is not None
               and producers[n.input[0]].op_type == "QuantizeLinear"]
    assert len(gathers) == len(layers)
    groups = sorted(next(a.i for a in n.attribute if a.name == "group")
                    for n in proto.graph.node if n.op_type == "Conv"
                    and any(a.name == "group" and a.i > 1 for a in n.attribute))
    counts = sorted(len(m._indices()["o"]) for m in layers if len(m._indices()["o"]) > 1)
    expected = sorted(n + (-n % SIDE_PATH_CHANNEL_BLOCK if n >= SIDE_PATH_CHANNEL_BLOCK // 2 else 0)
                      for n in counts)
    assert groups == expected and any(g % SIDE_PATH_CHANNEL_BLOCK == 0 for g in groups)


def test_error_penalty_is_squared_within_a_step_and_linear_beyond():
    from quantdet.quant.outlier import step_error_penalty

    e = torch.tensor([-30.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.5, 40.0], requires_grad=True)
    h = step_error_penalty(e)
    assert h.tolist() == [59.0, 1.0, 0.25, 0.0, 0.0625, 1.0, 2.0, 79.0]  # 40 steps out: 79, not 1600
    h.sum().backward()
    assert e.grad.tolist() == [-2.0, -2.0, -1.0, 0.0, 0.5, 2.0, 2.0, 2.0]  # slope continuous, bounded


def test_capped_steps_change_no_output_channel_by_more_than_the_fraction(tmp_path):
    """quant.qat.outlier.max_update: a channel whose weights are ~1e-4 (a folded BatchNorm near
    zero) would change by a multiple of itself in one Adam step at lr 5e-4."""
    from quantdet.train.loop import fit
    from tests.test_qat import _Boxes

    def collate(b):
        return torch.stack([x[0] for x in b]), [x[1] for x in b]

    def train(max_update):
        model = tiny_model().train()
        with torch.no_grad():
            model.lateral.weight[:2] *= 1e-3  # two tiny output channels
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() > 1}
        fit(model, _Boxes(), epochs=1, batch_size=4, lr=5e-4, weight_decay=0.0, warmup_iters=0,
            seed=0, checkpoint_path=tmp_path / f"{max_update}.ckpt", collate_fn=collate,
            max_update=max_update)
        return {n: ((p.detach() - before[n]).flatten(1).norm(dim=1) / before[n].flatten(1).norm(dim=1))
                for n, p in model.named_parameters() if p.dim() > 1}

    free, capped = train(None), train(0.02)
    assert float(free["lateral.weight"][:2].min()) > 1.0  # uncapped: more than the weights themselves
    steps = len(_Boxes()) // 4
    for name, change in capped.items():  # at most 2% a step, compounded over the epoch's steps
        assert float(change.max()) <= (1.02 ** steps - 1) + 1e-5, name


def test_oaqat_trains_with_the_cap_and_records_it(monkeypatch):
    import quantdet.methods.base as base

    _, config = _oaqat()
    assert config["outlier"]["max_update"] is None  # OUTLIER here has none: recorded as such
    method = get_method("qat", "oaqat")

    class Job:
        params = {"quant": {"qat": {"outlier": {"max_update": 0.02}}}}

    monkeypatch.setattr(base.QATMethod, "training", lambda self, job, recipe: ({"epochs": 1}, None))
    args, _ = method.training(Job(), method.recipe)
    assert args == {"epochs": 1, "max_update": 0.02}
