"""The detector registry's contract: every registered family (the built-in ones and a user's
own, tests/detectors/toy_family.py) builds from params, trains with its loss, decodes its raw
outputs, is captured whole for quantization, taps features for mimic, gives class logits to the
zero-shot methods and exports to an integer ONNX model onnxruntime runs. A new family passes
this file, with nothing else changed, or it is not done."""
import os
import subprocess
import sys

import pytest
import torch

import tests.detectors.toy_family  # noqa: F401  (registers the toy family)
from quantdet import detectors
from tests.conftest import BIN, ROOT

SIZE = 64   # the default; a family sets its own (DetectorFamily.example_size)
NUM_CLASSES = 3


def _families():
    return [f.name for f in detectors.families()]


@pytest.fixture(scope="module", params=_families())
def network(request):
    family = detectors.get(request.param)
    config = family.config(family.example(), NUM_CLASSES)
    torch.manual_seed(0)
    model = detectors.build(config).eval()
    return family, config, model


def _targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def test_the_registry_lists_every_family_and_its_architectures():
    names = detectors.names()
    assert {"centernet", "yolo", "toy"} <= set(names)
    for family in detectors.families():
        assert family.description and family.architectures()
    with pytest.raises(KeyError, match="unknown detector family 'nope'"):
        detectors.get("nope")


def test_raw_outputs_decode_to_boxes_in_the_image(network):
    family, config, model = network
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, family.example_size, family.example_size))
    assert isinstance(outputs, tuple) and len(outputs) == len(family.output_names(config))
    decode = detectors.Decoder(config, family.example_size, score_threshold=0.0, max_detections=20, nms_iou=0.6)
    for det in decode(outputs):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 20
        assert det["boxes"].min() >= 0 and det["boxes"].max() <= family.example_size
        assert det["labels"].dtype == torch.long and (det["labels"] < NUM_CLASSES).all()
    logits = family.class_logits(outputs)
    assert logits.shape[:2] == (2, NUM_CLASSES)


def test_the_loss_reaches_the_whole_network(network):
    family, config, model = network
    model.train()
    try:
        images = torch.rand(2, 3, family.example_size, family.example_size)
        outputs = tuple(o.float() for o in model(images))
        loss, parts = family.loss_fn(model)(outputs, _targets(), family.stride(config))
        assert torch.isfinite(loss) and parts
        loss.backward()
        # through the whole network: the first convolution learns (residual branches whose last
        # BN starts at zero, as timm initialises them, rightly get no gradient on the first step)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.5 * len(grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_quantized_whole_tapped_and_exported_to_integer_onnx(network, tmp_path):
    from quantdet.distill.mimic import FeatureTap
    from quantdet.export.onnx_export import export_onnx
    from quantdet.export.runner import OrtDetector
    from quantdet.quant.graph import freeze_quantizers, quant_layers, quantize_model, set_quant_mode
    from quantdet.quant.modules import QUANTIZE

    family, config, model = network
    # the quantized region is what the family lets FX capture: every conv the forward runs (a
    # head shared by the levels, as torchvision's RetinaNet and FCOS, is one layer run per level)
    traced = torch.fx.symbolic_trace(family.traceable(model))
    calls = [n.target for n in traced.graph.nodes
             if n.op == "call_module" and isinstance(traced.get_submodule(n.target), torch.nn.Conv2d)]
    convs = len(calls)
    qmodel = quantize_model(model, 8, 8, "minmax")
    assert len(quant_layers(qmodel)) == len(set(calls)) - len(family.float_layers(model))
    images = torch.rand(4, 3, family.example_size, family.example_size)
    with torch.no_grad():
        qmodel(images)
    freeze_quantizers(qmodel)
    set_quant_mode(qmodel, QUANTIZE)
    with torch.no_grad():
        reference, simulated = model(images), qmodel(images)
    for r, s in zip(reference, simulated):
        assert s.shape == r.shape
        assert float((s - r).norm() / r.norm().clamp(min=1e-6)) < 0.25

    # mimic's taps fire in the FP32 and the quantized network, with the channels the family says
    for net in (model, qmodel):
        taps = [FeatureTap(net, name) for name in family.feature_taps(net)]
        with torch.no_grad():
            net(images)
        assert [t.features.shape[1] for t in taps] == family.tap_channels(config)
        for t in taps:
            t.remove()

    path = tmp_path / f"{family.name}.onnx"
    export_onnx(qmodel, path, family.example_size, 17)
    optimized = tmp_path / f"{family.name}.optimized.onnx"
    session = OrtDetector(path, optimized_model_path=str(optimized))
    import onnx

    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    float_convs = sum(op in ("Conv", "FusedConv") for op in ops)
    # integer kernels: every conv whose output is quantized; with integer outputs, every conv
    assert ops.count("QLinearConv") >= convs - len(family.output_names(config))
    if family.integer_outputs:
        assert float_convs == 0 and ops.count("QLinearConv") == convs
    assert session.output_names == family.output_names(config)
    deployed = session(images)
    for s, d in zip(simulated, deployed):
        assert d.shape == s.shape


def test_a_family_of_ones_own_is_listed_by_quantdet_detectors():
    env = {**os.environ, "QUANTDET_DETECTORS": "tests.detectors.toy_family",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    listed = subprocess.run([str(BIN / "quantdet"), "detectors"], capture_output=True, text=True,
                            env=env, check=True, cwd=ROOT).stdout
    assert "toy: toy: three convs" in listed and "centernet:" in listed and "yolo:" in listed


def test_listing_the_families_loads_no_detector_package():
    code = ("import sys, quantdet.detectors as d; d.names(); "
            "print(sorted(m for m in ('ultralytics', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
