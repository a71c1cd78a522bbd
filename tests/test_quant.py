import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from quantdet.quant.fold import fold_batchnorm, fold_conv_bn
from quantdet.quant.graph import activation_quantizers, quantize_model
from quantdet.quant.modules import ActQuantizer, QuantConv2d
from quantdet.quant.observers import MinMaxObserver, PercentileObserver, percentile_range
from quantdet.quant.ptq import calibrate, post_training_quantize
from quantdet.quant.quantizer import (asymmetric_qparams, fake_quantize, integer_range,
                                      symmetric_scale)
from tests.quant_models import tiny_model


@pytest.mark.parametrize("bits", range(2, 9))
def test_integer_ranges(bits):
    assert integer_range(bits, signed=False) == (0, 2**bits - 1)
    assert integer_range(bits, signed=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [1, 9])
def test_bit_width_outside_2_to_8_is_rejected(bits):
    with pytest.raises(ValueError, match="2..8"):
        integer_range(bits, signed=False)


def test_round_trip_error_is_at_most_half_a_step_inside_the_range():
    x = torch.linspace(-1, 3, 1001)
    scale, zp = asymmetric_qparams(x.min(), x.max(), 8)
    y = fake_quantize(x, scale, zp, 0, 255)
    assert (y - x).abs().max() <= scale / 2 + 1e-6
    # values already on the grid come back unchanged
    assert torch.allclose(fake_quantize(y, scale, zp, 0, 255), y)


def test_zero_is_exact_and_range_always_contains_it():
    scale, zp = asymmetric_qparams(torch.tensor(0.3), torch.tensor(2.0), 8)
    assert fake_quantize(torch.zeros(1), scale, zp, 0, 255).item() == 0.0
    assert zp.item() == 0  # [0.3, 2] widened to [0, 2]


def test_values_outside_the_range_are_clipped():
    y = fake_quantize(torch.tensor([-5.0, 5.0]), torch.tensor(0.01), torch.tensor(0.0), -128, 127)
    assert y.tolist() == pytest.approx([-1.28, 1.27])


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_bit_width_gives_at_most_2_to_the_bits_levels(bits):
    x = torch.randn(10000)
    scale, zp = asymmetric_qparams(x.min(), x.max(), bits)
    assert fake_quantize(x, scale, zp, *integer_range(bits, False)).unique().numel() <= 2**bits


def test_ste_gradient_is_one_inside_and_zero_outside_the_range():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.01), torch.tensor(0.0), -128, 127).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_weights_get_one_symmetric_scale_per_output_channel():
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1, 1))
    q = QuantConv2d.from_float(conv, bits=8)
    expected = conv.weight.abs().flatten(1).amax(1) / 127
    assert torch.allclose(q.weight_scale(), expected)
    ints = q.integer_weight()
    assert ints.dtype == torch.int8
    assert ints.abs().flatten(1).amax(1).tolist() == [127, 127, 127]
    # dequantized weights are within half a step of the float ones, per channel
    err = (q.quantized_weight() - conv.weight).abs().flatten(1).amax(1)
    assert torch.all(err <= expected / 2 + 1e-7)


def test_four_bit_weights_use_fifteen_levels_at_most():
    q = QuantConv2d.from_float(nn.Conv2d(4, 2, 3), bits=4)
    assert q.integer_weight().unique().numel() <= 15
    assert symmetric_scale(torch.tensor(7.0), 4).item() == pytest.approx(1.0)


def test_minmax_observer_tracks_extremes_over_batches():
    obs = MinMaxObserver()
    obs.observe(torch.tensor([0.0, 1.0, 2.0]))
    obs.observe(torch.tensor([-1.0, 0.5]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (-1.0, 2.0)


def test_percentile_range_on_a_known_distribution():
    x = torch.arange(100001, dtype=torch.float32) / 100000  # uniform grid on [0, 1]
    lo, hi = percentile_range(x, 0.999)
    assert lo.item() == pytest.approx(0.001, abs=1e-5)
    assert hi.item() == pytest.approx(0.999, abs=1e-5)


def test_percentile_observer_ignores_rare_outliers_and_averages_batches():
    torch.manual_seed(0)
    obs = PercentileObserver(percentile=0.999)
    batches = [torch.randn(20000) for _ in range(3)]
    batches[0][0] = 1000.0
    for b in batches:
        obs.observe(b)
    lo, hi = obs.range()
    assert 2.9 < hi.item() < 3.3 and -3.3 < lo.item() < -2.9  # Gaussian 99.9th percentile ≈ 3.09
    expected_hi = sum(percentile_range(b, 0.999)[1] for b in batches) / 3
    assert hi.item() == pytest.approx(expected_hi.item(), rel=1e-5)


def test_percentile_observer_ema():
    obs = PercentileObserver(percentile=1.0, momentum=0.5)
    obs.observe(torch.tensor([0.0, 4.0]))
    obs.observe(torch.tensor([0.0, 2.0]))
    assert obs.range()[1].item() == pytest.approx(3.0)


def test_folded_conv_equals_conv_then_batchnorm():
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    fused = fold_conv_bn(model.stem[0], model.stem[1])
    assert torch.allclose(fused(x), model.stem[1](model.stem[0](x)), atol=1e-5)


def test_fold_batchnorm_graph_pass_keeps_the_function():
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    gm = fx.symbolic_trace(model)
    assert fold_batchnorm(gm) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    for a, b in zip(model(x), gm(x)):
        assert torch.allclose(a, b, atol=1e-5)


def _quantized_inputs(gm):
    """For each quantized conv node: whether its input comes from an activation quantizer."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), QuantConv2d):
            src = node.args[0]
            out[node.target] = src.op == "call_module" and isinstance(
                gm.get_submodule(src.target), ActQuantizer)
    return out


def test_every_conv_input_and_weight_is_quantized_including_the_head():
    gm = quantize_model(tiny_model(), 8, 8, "minmax")
    convs = _quantized_inputs(gm)
    assert len(convs) == 6  # stem, block, down, lateral, head, box
    assert all(convs.values())
    assert not any(type(m) is nn.Conv2d for m in gm.modules())


def test_maxpool_and_upsampling_reuse_their_input_quantizer():
    gm = quantize_model(tiny_model(), 8, 8, "minmax")
    reused = [n for n in gm.graph.nodes if n.op == "call_module" and n.kwargs.get("observe") is False]
    assert len(reused) == 2  # after max-pool and after nearest upsampling
    for node in reused:
        assert node.target == node.args[0].args[0].target


@pytest.mark.parametrize("bits,tolerance", [(8, 0.05), (4, 0.6)])
def test_ptq_output_approaches_float_output(bits, tolerance):
    torch.manual_seed(0)
    model = tiny_model()
    batches = [torch.rand(4, 3, 32, 32) for _ in range(4)]
    q = post_training_quantize(model, batches, "minmax", bits, bits, {"calib_batches": 4})
    x = batches[0]
    for ref, out in zip(model(x), q(x)):
        rel = (ref - out).norm() / ref.norm()
        assert rel < tolerance
    assert all(a.mode == "quantize" for a in activation_quantizers(q))


def test_calibration_needs_a_batch():
    gm = quantize_model(tiny_model(), 8, 8, "minmax")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(gm, [], 20)


def test_calibration_stops_after_n_batches():
    gm = quantize_model(tiny_model(), 8, 8, "percentile", {"percentile": 0.999})
    assert calibrate(gm, (torch.rand(2, 3, 32, 32) for _ in range(50)), 20) == 20
    assert activation_quantizers(gm)[0].observer.count == 20


def test_ema_minmax_observer_hand_computed():
    from quantdet.quant.observers import EMAMinMaxObserver

    obs = EMAMinMaxObserver(momentum=0.25)
    obs.observe(torch.tensor([0.0, 4.0]))
    obs.observe(torch.tensor([-4.0, 8.0]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (-1.0, 5.0)  # 0.75·0 + 0.25·(−4), 0.75·4 + 0.25·8


def test_per_channel_observers_give_one_range_per_channel():
    x = torch.stack([torch.linspace(-1, 1, 101), torch.linspace(0, 10, 101)])
    obs = MinMaxObserver(axis=0)
    obs.observe(x)
    lo, hi = obs.range()
    assert lo.tolist() == [-1.0, 0.0] and hi.tolist() == [1.0, 10.0]
    plo, phi = percentile_range(x, 0.9, axis=0)
    assert phi.tolist() == pytest.approx([0.8, 9.0])


def test_mse_observer_clips_a_lone_outlier_and_keeps_a_uniform_range():
    from quantdet.quant.observers import MSEObserver

    torch.manual_seed(0)
    uniform = torch.rand(20000)
    obs = MSEObserver(bits=4)
    obs.observe(uniform)
    assert 0.9 < obs.range()[1].item() <= 1.0  # little to gain from clipping a flat distribution
    spiky = torch.cat([torch.randn(20000).abs(), torch.tensor([60.0])])
    obs = MSEObserver(bits=4)
    obs.observe(spiky)
    assert obs.range()[1].item() < 10  # far below the outlier: clipping it costs less error


def test_kl_observer_on_known_distributions():
    from quantdet.quant.observers import KLObserver, kl_threshold

    # a histogram that 128 levels represent exactly needs no clipping
    hist = torch.zeros(2048, dtype=torch.float64)
    hist[:1024] = 1.0
    hist[2047] = 1e-3
    assert kl_threshold(hist, 128) == 1.0
    # a long sparse tail of a decaying histogram is clipped
    decaying = torch.exp(-torch.arange(2048, dtype=torch.float64) / 60)
    assert kl_threshold(decaying, 128) < 0.5
    torch.manual_seed(0)
    x = torch.randn(50000).abs()  # half-normal: clips well inside the max, above the bulk
    obs = KLObserver(bits=8)
    obs.observe(x)
    hi = obs.range()[1].item()
    assert 2.0 < hi < x.max().item()


def test_kl_observer_ignores_the_zero_spike_of_a_relu():
    """Half the values of a ReLU output are exact zeros; kept in the histogram, their spike
    made the search clip at about a tenth of the range. Left out, the ReLU output gets the
    threshold of its positive half."""
    from quantdet.quant.observers import KLObserver

    torch.manual_seed(0)
    positive = torch.randn(50000).abs()
    relu = torch.cat([positive, torch.zeros(50000)])
    ranges = []
    for x in (positive, relu):
        obs = KLObserver(bits=8)
        obs.observe(x)
        ranges.append(obs.range()[1].item())
    assert ranges[1] == pytest.approx(ranges[0], rel=0.1)  # (a random sample of each)
    assert ranges[1] > 2.0
    obs = KLObserver(bits=8)
    obs.observe(torch.zeros(100))  # all zeros: nothing to clip
    assert obs.range()[1].item() == 0.0


def test_every_registered_observer_calibrates_a_model():
    from quantdet.quant.observers import OBSERVERS

    for name in OBSERVERS:
        gm = quantize_model(tiny_model(), 8, 8, name)
        calibrate(gm, (torch.rand(2, 3, 32, 32) for _ in range(2)), 2)
        assert all(float(q.scale) > 0 for q in activation_quantizers(gm)), name


def test_inference_path_equals_training_path():
    torch.manual_seed(0)
    q = ActQuantizer(8, "minmax")
    x = torch.randn(4096) * 3
    q(x)
    q.freeze()
    with torch.no_grad():
        fused = q(x)
    trained = q(x.clone().requires_grad_())
    assert (fused == trained.detach()).float().mean() > 0.999
    assert (fused - trained.detach()).abs().max() <= float(q.scale) + 1e-6


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fast_inference_quantizer_equals_torch_fake_quantize(bits):
    """The inference path (quint8 quantize/dequantize, clamped for narrower grids) gives the
    values of torch's fake-quantize kernel, which is what the exported QDQ pair computes."""
    torch.manual_seed(bits)
    q = ActQuantizer(bits, "minmax")
    x = torch.randn(8, 16, 24, 24) * 2 + 0.5
    q(x[:4])                        # calibrate on half: the other half has clipped values
    q.freeze()
    with torch.no_grad():
        fast = q(x.contiguous(memory_format=torch.channels_last))
    reference = torch.fake_quantize_per_tensor_affine(
        x, float(q.scale), int(q.zero_point), q.qmin, q.qmax)
    assert torch.equal(fast, reference)
    assert fast.unique().numel() <= 2 ** bits


def test_lsq_step_size_gradient_matches_the_lsq_formula():
    from quantdet.quant.modules import lsq_gradient_scale

    x = torch.tensor([-2.0, -0.26, 0.0, 0.37, 0.5, 3.0])
    s = torch.tensor(0.1, requires_grad=True)
    qmin, qmax = -8, 7
    fake_quantize(x, lsq_gradient_scale(s, x.numel(), qmax), torch.tensor(0.0), qmin, qmax).sum().backward()
    v = x / 0.1
    inside = (v > qmin) & (v < qmax)
    per_element = torch.where(inside, torch.round(v) - v, torch.where(v <= qmin, torch.tensor(float(qmin)),
                                                                        torch.tensor(float(qmax))))
    expected = per_element.sum() / (x.numel() * qmax) ** 0.5
    assert s.grad.item() == pytest.approx(expected.item(), rel=1e-5)


def test_learnable_quantizers_train_their_step_sizes():
    torch.manual_seed(0)
    gm = quantize_model(tiny_model(), 4, 4, "minmax")
    calibrate(gm, [torch.rand(4, 3, 32, 32)], 1)
    for q in activation_quantizers(gm):
        q.make_learnable()
    convs = [m for m in gm.modules() if isinstance(m, QuantConv2d)]
    for c in convs:
        c.make_learnable()
    gm.train()
    sum(o.sum() for o in gm(torch.rand(2, 3, 32, 32))).backward()
    assert all(q.scale.grad is not None for q in activation_quantizers(gm))
    assert all(c.learned_scale.grad is not None and c.learned_scale.grad.abs().sum() > 0 for c in convs)


def test_range_tracking_follows_training_batches_with_ema():
    q = ActQuantizer(8, "minmax")
    q(torch.tensor([0.0, 1.0]))
    q.freeze()
    q.track_ranges("ema_minmax", momentum=0.5)
    q.train()
    q(torch.tensor([0.0, 1.0]).requires_grad_())
    q(torch.tensor([0.0, 3.0]).requires_grad_())
    assert float(q.scale) == pytest.approx(2.0 / 255)  # EMA of maxima: 0.5·1 + 0.5·3
    q.eval()
    q(torch.tensor([0.0, 100.0]))
    assert float(q.scale) == pytest.approx(2.0 / 255)  # evaluation does not move the range
