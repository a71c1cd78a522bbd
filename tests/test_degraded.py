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
