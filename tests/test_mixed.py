"""Mixed-precision weights: exact allocation under the budget, sensitivities, and per-layer bits
that survive saving, loading and ONNX export."""
import itertools
import json
import random

import numpy as np
import onnx
import pytest
import torch

from quantdet import detectors
from quantdet.errors import ParamsError
from quantdet.export.fidelity import output_agreement
from quantdet.export.onnx_export import export_onnx
from quantdet.export.runner import OrtDetector
from quantdet.detectors.centernet.network import build_detector
from quantdet.models.io import load_model, save_model
from quantdet.quant.graph import layer_weight_bits, quant_layers
from quantdet.quant.mixed import (allocate_bits, check_budget, layer_sensitivities, layer_sizes,
                                  mixed_precision_quantize, within_budget)
from quantdet.quant.ptq import post_training_quantize
from tests.quant_models import tiny_model


def _random_case(rng: random.Random, layers: int, ties: bool = False):
    sizes = {f"l{i}": rng.randint(1, 60) for i in range(layers)}
    choices = sorted(rng.sample(range(2, 9), rng.randint(1, 4)))
    draw = (lambda: float(rng.randint(0, 2))) if ties else (lambda: rng.uniform(-0.2, 1.0))
    sens = {n: {b: draw() for b in choices} for n in sizes}
    budget = rng.choice([rng.uniform(choices[0], choices[-1] + 0.5), rng.randint(choices[0], 8)])
    return sizes, sens, budget


def _brute_force(sizes, sens, budget):
    """(least summed sensitivity, most total bits among those) over every feasible choice."""
    names = list(sizes)
    best = None
    for combo in itertools.product(*(sorted(sens[n]) for n in names)):
        bits = dict(zip(names, combo))
        if within_budget(sizes, bits, budget):
            key = (round(sum(sens[n][bits[n]] for n in names), 9),
                   -sum(sizes[n] * bits[n] for n in names))
            best = key if best is None else min(best, key)
    return best


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("ties", [False, True])
def test_allocation_is_optimal_against_brute_force(seed, ties):
    rng = random.Random(seed)
    sizes, sens, budget = _random_case(rng, rng.randint(1, 6), ties)
    allocation = allocate_bits(sizes, sens, budget)
    assert within_budget(sizes, allocation.bits, budget)
    cost, neg_total = _brute_force(sizes, sens, budget)
    assert allocation.sensitivity == pytest.approx(cost, abs=1e-9)
    assert allocation.sensitivity == pytest.approx(sum(sens[n][b] for n, b in allocation.bits.items()))
    if ties:  # integer sensitivities: equal sums are exact, so the most bits win
        assert sum(sizes[n] * b for n, b in allocation.bits.items()) == -neg_total


def test_budget_is_respected_on_detector_sized_cases():
    rng = random.Random(1)
    for _ in range(20):
        sizes = {f"l{i}": rng.choice([27, 576, 4608, 36864, 147456, 589824]) * rng.randint(1, 3)
                 for i in range(30)}
        choices = [2, 3, 4, 5, 6, 7, 8] if rng.random() < 0.5 else [4, 8]
        # sensitivity falls with bits, as measured ones do, so the budget binds
        sens = {n: {b: rng.uniform(0.1, 2) * 2.0 ** -b for b in choices} for n in sizes}
        budget = rng.uniform(choices[0], choices[-1])
        allocation = allocate_bits(sizes, sens, budget)
        total = sum(sizes[n] * allocation.bits[n] for n in sizes)
        assert total <= budget * sum(sizes.values()) + 1e-6
        assert allocation.average_bits <= budget + 1e-9
        assert set(allocation.bits.values()) <= set(choices)


def test_a_budget_at_the_top_keeps_every_layer_at_the_highest_width():
    sizes = {"a": 10, "b": 30}
    sens = {"a": {4: 1.0, 8: 0.0}, "b": {4: 0.5, 8: 0.0}}
    assert allocate_bits(sizes, sens, 8).bits == {"a": 8, "b": 8}
    # at 5 bits on average only the small layer can keep 8 bits: 10·8 + 30·4 = 200 = 5·40
    assert allocate_bits(sizes, sens, 5).bits == {"a": 8, "b": 4}


def test_an_infeasible_budget_is_a_params_error():
    with pytest.raises(ParamsError, match="matrix.mixed"):
        allocate_bits({"a": 5}, {"a": {4: 1.0, 8: 0.0}}, 3.9)
    with pytest.raises(ParamsError, match="quant.mixed.bit_choices"):
        check_budget(3, [4, 8])


def _batches(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.rand(4, 3, 32, 32, generator=g)
        targets = [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([1])}
                   for _ in range(4)]
        out.append((images, targets))
    return out


def test_sensitivity_is_zero_at_the_highest_width_and_positive_at_two_bits():
    batches = _batches()
    q = post_training_quantize(tiny_model(), [b[0] for b in batches], "minmax", 8, 8,
                               {"calib_batches": 2})
    before = layer_weight_bits(q)
    with torch.no_grad():
        reference = q(batches[0][0])
    sens, baseline = layer_sensitivities(q, batches, [2, 8], metric="output")
    assert baseline == 0.0
    assert set(sens) == set(quant_layers(q))
    assert all(s[8] == 0.0 and s[2] > 1e-4 for s in sens.values()), sens
    assert layer_weight_bits(q) == before  # the pass leaves the model as it found it
    with torch.no_grad():
        for a, b in zip(q(batches[0][0]), reference):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    loss_sens, loss_baseline = layer_sensitivities(q, batches, [2, 8], metric="loss")
    assert loss_baseline > 0 and all(s[8] == 0.0 for s in loss_sens.values())
    assert sum(s[2] for s in loss_sens.values()) != 0.0


def _detector_and_batches():
    torch.manual_seed(0)
    model = build_detector("resnet10t", 2, fpn_channels=8, head_channels=8).eval()
    return model, _batches(n=2)


def test_mixed_model_round_trips_through_save_and_load(tmp_path):
    model, batches = _detector_and_batches()
    qmodel, report = mixed_precision_quantize(
        model, lambda: (b[0] for b in batches), batches, budget=5, bit_choices=[4, 8],
        act_bits=8, method="minmax", ptq_params={"calib_batches": 2}, metric="loss")
    bits = {row["layer"]: row["bits"] for row in report["layers"]}
    assert layer_weight_bits(qmodel) == bits and set(bits.values()) == {4, 8}
    sizes = layer_sizes(qmodel)
    assert within_budget(sizes, bits, 5) and report["average_weight_bits"] <= 5
    json.dumps(report)  # the report is plain JSON
    detector = {"backbone": "resnet10t", "num_classes": 2, "fpn_channels": 8, "head_channels": 8}
    quant = {"weight_bits": 8, "act_bits": 8, "observer": "minmax", "layer_bits": bits}
    path = tmp_path / "mixed.pt"
    save_model(path, qmodel, kind="quantized", detector=detector, classes={}, quant=quant)
    loaded, payload = load_model(path)
    assert layer_weight_bits(loaded) == bits
    images = batches[0][0]
    with torch.no_grad():
        for a, b in zip(loaded(images), qmodel(images)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mixed_bits_reach_the_onnx_model_and_it_agrees_with_the_simulated_one(tmp_path):
    torch.manual_seed(0)
    images = [torch.rand(8, 3, 32, 32) for _ in range(3)]
    layers = list(quant_layers(post_training_quantize(tiny_model(), images, "minmax", 8, 8,
                                                      {"calib_batches": 1})))
    chosen = {name: b for name, b in zip(layers, itertools.cycle([3, 8, 4, 6]))}
    q = post_training_quantize(tiny_model(), images, "minmax", 8, 8, {"calib_batches": 3},
                               layer_bits=chosen)
    assert layer_weight_bits(q) == chosen
    path = tmp_path / "mixed.onnx"
    export_onnx(q, path, 32, 17)
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["quantdet.layer_weight_bits"]) == chosen
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, bits in chosen.items():
        stored = f"{name}.weight_quantized"
        if json.loads(meta["quantdet.weight_type"])["type"] == "uint8":   # a CPU without VNNI: int8 + 128 (onnx_export.unsigned_weights)
            assert inits[stored + "_u8"].dtype == np.uint8
            ints = (inits[stored + "_u8"].astype(np.int16) - 128).astype(np.int8)
        else:
            ints = inits[stored]
        assert ints.dtype == np.int8 and np.abs(ints).max() <= 2 ** (bits - 1) - 1
        np.testing.assert_array_equal(ints, quant_layers(q)[name].integer_weight().numpy())
    agreement = output_agreement(q, OrtDetector(path, threads=1), torch.cat(images), 8)
    assert min(agreement["within_one_step_fraction"].values()) > 0.98


@pytest.mark.slow
def test_ptq_stage_writes_the_mixed_model_its_bits_and_an_onnx_model_with_them(tmp_path, monkeypatch):
    from quantdet import stages, study
    from quantdet.config import load_params
    from tests.conftest import SMOKE

    params = load_params(SMOKE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUANTDET_TRACKING", "off")
    stages.prepare(params)
    from quantdet.data.dataset import DetectionDataset

    train = DetectionDataset(f"{study.PREPARED}/train", params["models"]["input_size"])
    torch.manual_seed(0)  # an untrained detector is enough to exercise the stage
    detector = stages.detector_config(params, "student", len(train.category_ids))
    model = detectors.build(detector)
    save_model(study.model_file("student-fp32"), model, kind="fp32", detector=detector,
               classes={"category_ids": train.category_ids, "names": train.class_names},
               extra={"stride": 4, "input_size": params["models"]["input_size"]})
    name = study.mixed_models(params)[0]
    quant = stages.ptq(params, name)
    report = json.loads((tmp_path / study.bits_file(name)).read_text())
    assert report["model"] == name and report["budget_average_weight_bits"] == 5
    assert report["average_weight_bits"] <= 5
    assert {r["layer"]: r["bits"] for r in report["layers"]} == quant["layer_bits"]
    loaded, payload = load_model(study.model_file(name))
    assert layer_weight_bits(loaded) == quant["layer_bits"]
    stages.export(params, "student-fp32")
    exported = stages.export(params, name)
    meta = {p.key: p.value for p in onnx.load(study.onnx_file(name)).metadata_props}
    assert json.loads(meta["quantdet.layer_weight_bits"]) == quant["layer_bits"]
    assert min(exported["agreement"]["within_one_step_fraction"].values()) > 0.9
