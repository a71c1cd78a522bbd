"""ACIQ (methods/aciq.py): the analytic clipping ratio of a Laplace(μ, b) tensor and the
observer's ranges."""
import pytest
import torch

from quantdet.methods import get_method
from quantdet.methods.aciq import laplace_clip_ratio, register_aciq_observer
from quantdet.quant.observers import build_observer


@pytest.mark.parametrize("bits,ratio", [(2, 2.83), (3, 3.89), (4, 5.03), (8, 9.89)])
def test_clip_ratio_matches_the_papers_table(bits, ratio):
    # Banner et al. 2019, section 3: α* = 2.83b, 3.89b, 5.03b for 2, 3, 4 bits; 9.89b at 8
    assert laplace_clip_ratio(bits) == pytest.approx(ratio, abs=0.01)


def test_the_clip_minimizes_the_expected_error():
    import math

    def error(t, bits):  # clipping + rounding error of Laplace(0, 1) clipped at t (eq. 5)
        return 2 * math.exp(-t) + t * t / (3 * 4 ** bits)

    t = laplace_clip_ratio(4)
    assert error(t, 4) < min(error(0.9 * t, 4), error(1.1 * t, 4))


def test_observer_clips_a_laplace_tensor_at_its_analytic_range():
    register_aciq_observer()
    torch.manual_seed(0)
    x = torch.distributions.Laplace(1.0, 2.0).sample((200_000,))
    observer = build_observer("aciq", bits=4)
    for chunk in x.split(50_000):  # several calibration batches
        observer.observe(chunk)
    lo, hi = observer.range()
    # b = 2: the clip is 1 ± 5.03 · 2, well inside the extremes of 200k draws
    assert float(lo) == pytest.approx(1 - 10.06, abs=0.3) and float(hi) == pytest.approx(1 + 10.06, abs=0.3)
    assert float(x.min()) < float(lo) and float(hi) < float(x.max())
    relu = build_observer("aciq", bits=8)
    relu.observe(torch.relu(x))
    assert float(relu.range()[0]) == 0.0  # never below the observed minimum


def test_aciq_is_a_registered_ptq_method_of_its_own_observer():
    method = get_method("ptq", "aciq")
    assert method.family == "ptq" and method.observer == "aciq" and "Banner" in method.description
