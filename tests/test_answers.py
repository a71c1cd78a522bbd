"""The report's wording rule (quantdet.report.answers): a direction only where the interval
excludes zero; otherwise "no measurable difference", whatever the estimate's sign."""
import pytest

from quantdet.report.answers import (NO_DIFFERENCE, answers, comparison_answers, difference_phrase,
                                     quantization_answers, verdict)


def d(estimate, low, high):
    return {"estimate": estimate, "low": low, "high": high}


@pytest.mark.parametrize("difference,expected", [
    (d(0.030, 0.023, 0.041), "higher"),
    (d(-0.005, -0.006, -0.003), "lower"),
    (d(-0.002, -0.032, 0.028), NO_DIFFERENCE),   # negative estimate, interval across zero
    (d(0.004, -0.001, 0.009), NO_DIFFERENCE),    # positive estimate, interval across zero
    (d(0.0, 0.0, 0.01), NO_DIFFERENCE),          # touching zero is not excluding it
])
def test_a_direction_only_beyond_the_interval(difference, expected):
    assert verdict(difference) == expected


def test_phrases_give_the_interval_in_points():
    assert difference_phrase({"mPC": d(0.030, 0.023, 0.041)}, "mPC") == \
        "ΔmPC +3.0 [+2.3, +4.1] points: higher"
    assert difference_phrase({"P": d(-0.002, -0.032, 0.028)}, "P") == \
        "ΔP -0.2 [-3.2, +2.8] points: no measurable difference"


def test_answers_from_an_intervals_file():
    intervals = {"comparisons": [
        {"group": "qrid", "comparison": "DA-QAT vs FQN", "bits": "W8A8", "seeds": [0, 1, 2],
         "differences": {"mPC": d(0.03, 0.02, 0.04), "rPC": d(0.05, -0.01, 0.1), "P": d(-0.03, -0.05, -0.01)}},
        {"group": "fp32", "comparison": "ptq kl vs FP32", "bits": "W4A4", "seeds": [0],
         "differences": {"rPC": d(-0.08, -0.12, -0.03)}},
        {"group": "fp32", "comparison": "ptq mse vs FP32", "bits": "W4A4", "seeds": [0],
         "differences": {"rPC": d(0.01, -0.02, 0.05)}},
        {"group": "deployed", "comparison": "ptq kl deployed vs simulated", "bits": "W4A4", "seeds": [0],
         "treatment": ["student-ptq-kl-w4a4-ort"], "baseline": ["student-ptq-kl-w4a4"],
         "differences": {"P": d(0.0, -0.004, 0.003), "mPC": d(0.001, -0.002, 0.004)}},
    ]}
    [qrid] = comparison_answers(intervals)
    assert qrid.startswith("**DA-QAT vs FQN at W8A8** (seeds 0, 1, 2: images and seed-to-seed spread)")
    assert "ΔmPC +3.0 [+2.0, +4.0] points: higher" in qrid
    assert "ΔrPC +5.0 [-1.0, +10.0] percentage points: no measurable difference" in qrid
    assert "ΔP -3.0 [-5.0, -1.0] points: lower" in qrid
    [w4] = quantization_answers(intervals)
    assert "lower for 1, no measurable difference for 1" in w4
    deployed = [a for a in answers(intervals) if a.startswith("**Deployed")][0]
    assert deployed.startswith("**Deployed against simulated**: of 1 exported models, 1 show no measurable")
