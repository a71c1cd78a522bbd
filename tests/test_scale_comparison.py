"""QRID's "the smaller model loses more" (intervals' group "scale", report.detectors.scale_answers):
two scales of one architecture, each quantization both have, the smaller's loss against its own
FP32 model minus the larger's, paired over the same image resamples."""
from pathlib import Path

import numpy as np

from quantdet import study
from quantdet.config import load_params
from quantdet.evaluation.intervals import _scale_comparison, _scale_of, scale_pairs
from quantdet.report.answers import NO_DIFFERENCE
from quantdet.report.detectors import scale_answers

ROOT = Path(__file__).resolve().parents[1]


def test_scales_of_one_architecture_are_paired_smaller_first_per_quantization():
    params = load_params(ROOT / "workflow/studies/local/yolo_scales.yaml")
    assert _scale_of({"detector": "yolo", "arch": "yolo11s.yaml"}) == ("yolo", "yolo11", "s")
    assert _scale_of({"detector": "yolo", "arch": "yolov8n.yaml"}) == ("yolo", "yolov8", "n")
    assert _scale_of({"detector": "retinanet", "arch": "resnet18"}) is None
    assert _scale_of({"detector": "yolo", "arch": "yolo11n.yaml", "checkpoint": "best.pt"}) is None
    records = scale_pairs(study.evaluated_models(params), params)
    pairs = {(r["smaller"], r["larger"]) for r in records}
    assert pairs == {("student", "yolo11s"), ("yolo26n", "yolo26s")}   # never yolo11 against yolo26
    first = next(r for r in records if r["smaller"] == "yolo26n" and r["method"] == "daqat" and r["bits"] == "W4A4")
    assert first["archs"] == ["yolo26n.yaml", "yolo26s.yaml"]
    assert first["treatment"] == ["yolo26n-qat-daqat-w4a4-ort", "yolo26s-qat-daqat-w4a4-ort"]
    assert first["baseline"] == ["yolo26n-fp32", "yolo26s-fp32"]
    assert len(records) == 2 * 3 * 2   # two pairs, three methods, two bit widths


def test_the_smaller_ones_extra_loss_is_the_difference_of_the_two_paired_losses():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.01, 1001)   # one image resample moves every model alike

    def model(p, noise=0.0):
        own = rng.normal(0, noise, 1001) if noise else np.zeros(1001)
        own[0] = 0.0   # the estimate: the model on the images themselves
        return {metric: p + shared + own for metric in ("P", "mPC", "rPC")}

    figures = {"n-fp32": model(0.40), "n-q": model(0.30), "s-fp32": model(0.50), "s-q": model(0.48),
               "s-q-same": model(0.40, noise=0.02)}   # the same loss, with a spread of its own
    record = {"group": "scale", "smaller": "n", "larger": "s", "archs": ["yolo11n.yaml", "yolo11s.yaml"],
              "method": "minmax", "bits": "W8A8", "treatment": ["n-q", "s-q"], "baseline": ["n-fp32", "s-fp32"]}
    more = _scale_comparison(record, figures, 0.95)
    assert abs(more["differences"]["P"]["estimate"] - 0.08) < 1e-9
    assert more["differences"]["P"]["low"] > 0
    same = _scale_comparison({**record, "method": "dacal", "treatment": ["n-q", "s-q-same"]}, figures, 0.95)
    assert abs(same["differences"]["mPC"]["estimate"]) < 1e-9
    [answer] = scale_answers({"comparisons": [more, same]})
    assert "`n` (yolo11n.yaml) against `s` (yolo11s.yaml)" in answer
    assert "P: more for 1, less for 0" in answer and f"{NO_DIFFERENCE} for 1" in answer
    assert "`minmax` W8A8: P +8.0" in answer
