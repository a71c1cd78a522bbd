import numpy as np
import pytest
import torch

from quantdet.corruptions.degrade import apply_degradation, plan_degradation
from quantdet.errors import ParamsError

NAMES = ["gaussian_noise", "defocus_blur", "jpeg_compression", "brightness"]


def test_share_of_degraded_images_is_about_p_and_seeded():
    plans = [plan_degradation(i, names=NAMES, p=0.3, severities=[1, 2, 3, 4, 5], seed=7)
             for i in range(4000)]
    share = sum(p is not None for p in plans) / len(plans)
    assert abs(share - 0.3) < 0.03
    again = [plan_degradation(i, names=NAMES, p=0.3, severities=[1, 2, 3, 4, 5], seed=7)
             for i in range(4000)]
    assert plans == again
    other_epoch = [plan_degradation(i, names=NAMES, p=0.3, severities=[1, 2, 3, 4, 5], seed=7, epoch=1)
                   for i in range(4000)]
    assert plans != other_epoch
    used = {(p.corruption, p.severity) for p in plans if p}
    assert {c for c, _ in used} == set(NAMES) and {s for _, s in used} == {1, 2, 3, 4, 5}


def test_p_zero_and_one():
    assert all(plan_degradation(i, names=NAMES, p=0.0, severities=[3], seed=0) is None for i in range(50))
    assert all(plan_degradation(i, names=NAMES, p=1.0, severities=[3], seed=0) for i in range(50))


def test_degraded_dataset_batches(tmp_path):
    from quantdet.data.dataset import DetectionDataset
    from quantdet.data.degraded import DegradedDataset
    from quantdet.data.embedded import generate_embedded

    generate_embedded(tmp_path, 8, 2, 64, 0)
    base = DetectionDataset(tmp_path / "train", 64)
    degraded = DegradedDataset(base, NAMES, 0.5, [2, 4], seed=1)
    for i in range(len(base)):
        image, target, meta = degraded[i]
        clean, clean_target, _ = base[i]
        assert torch.equal(target["boxes"], clean_target["boxes"])
        if meta["degradation"] is None:
            assert torch.equal(image, clean)
        else:
            assert not torch.equal(image, clean) and image.min() >= 0 and image.max() <= 1
    assert torch.equal(degraded[3][0], degraded[3][0])  # reproducible


def test_unknown_degradation_is_a_params_error():
    from quantdet.data.degraded import DegradedDataset

    with pytest.raises(ParamsError, match="unknown"):
        DegradedDataset([], ["rain"], 0.5, [1], seed=0)


def test_apply_degradation_keeps_shape_and_dtype():
    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    plan = plan_degradation(0, names=["gaussian_noise"], p=1.0, severities=[5], seed=0)
    out = apply_degradation(pixels, plan)
    assert out.shape == pixels.shape and out.dtype == np.uint8 and not np.array_equal(out, pixels)


@pytest.fixture(scope="module")
def calib_study(tmp_path_factory):
    """A prepared smoke dataset (data/prepared/{train,val,calib}) in a scratch study folder."""
    from quantdet.config import load_params
    from quantdet.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("calib")
    params = load_params("tests/smoke/params.yaml")
    prepare_dataset(params, root / "data" / "prepared")
    return root, params


def _fingerprint(params, degraded, num_batches=2):
    from quantdet.quant.ptq import calibrate
    from quantdet.stages import CalibrationSet
    from tests.quant_models import tiny_model
    from quantdet.quant.graph import quantize_model

    calib = CalibrationSet(params, degraded=degraded)
    model = quantize_model(tiny_model(), 8, 8, "percentile", {"percentile": 0.999})
    calibrate(model, calib, num_batches)
    return calib.info()


def test_degradation_aware_calibration_set_identity(calib_study, monkeypatch):
    import copy

    root, params = calib_study
    monkeypatch.chdir(root)
    clean = _fingerprint(params, degraded=False)
    assert clean["degradations"] is None and clean["degraded_images"] == 0
    assert clean["batches"] == 2                      # exactly the batches used, no extra draw
    degraded = _fingerprint(params, degraded=True)
    assert degraded == _fingerprint(params, degraded=True)        # seeded: same set, same identity
    assert 0 < degraded["degraded_images"] < 16 and degraded["fingerprint"] != clean["fingerprint"]
    assert degraded["split_fingerprint"] == clean["split_fingerprint"]
    never = copy.deepcopy(params)
    never["quant"]["degradations"]["p"] = 0.0         # no image degraded: the clean set itself
    assert _fingerprint(never, degraded=True)["fingerprint"] == clean["fingerprint"]
    other = copy.deepcopy(params)
    other["study"]["seed"] = 1
    assert _fingerprint(other, degraded=True)["fingerprint"] != degraded["fingerprint"]
    assert _fingerprint(params, degraded=False, num_batches=1)["fingerprint"] != clean["fingerprint"]
