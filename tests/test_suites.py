"""The degradation-suite registry (quantdet.corruptions.suites): imagecorruptions, QRID's sets
and screen moiré; their images, their validation, their conditions in the study table, their
figures with intervals and their report section."""
import json

import numpy as np
import pytest
import yaml

from quantdet import study
from quantdet.cli import main
from quantdet.config import load_params
from quantdet.corruptions import corrupt_split, suites
from quantdet.corruptions.corrupted_split import check_condition, corrupt_image
from quantdet.corruptions.suites import qrid
from quantdet.errors import ParamsError
from quantdet.evaluation.bootstrap import robustness_replicates
from quantdet.report.markdown import _other_suites

from tests.test_corruptions import split  # noqa: F401  (the fixture: a two-image split)

SMOKE = "tests/smoke/params.yaml"


def _params(tmp_path, **corruptions):
    overlay = yaml.safe_load(open(SMOKE))
    overlay["corruptions"].update(corruptions)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(overlay))
    return load_params(tmp_path / "params.yaml")


def _image(value=None, seed=0):
    if value is not None:
        return np.full((64, 80, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (64, 80, 3), dtype=np.uint8)


def test_the_registry_lists_the_three_suites_and_quantdet_suites_prints_them(capsys):
    assert {"imagecorruptions", "qrid", "moire"} <= set(suites.names())
    main(["suites"])
    out = capsys.readouterr().out
    assert "qrid:" in out and "noisy_low (1-1)" in out and "moire (1-5)" in out and "2508.19600" in out


@pytest.mark.parametrize("name", [*qrid.SETS, "moire"])
def test_each_degradation_is_reproducible_keeps_the_shape_and_changes_the_image(name):
    image = _image(seed=1)
    severity = 3 if name == "moire" else 1
    first, again = (corrupt_image(image, name, severity, 7) for _ in range(2))
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert np.array_equal(first, again)
    if name != qrid.MIXED:   # mixed leaves half of the images clean
        assert not np.array_equal(first, image)
    drawn = {corrupt_image(image, name, severity, seed).tobytes() for seed in range(10)}
    assert len(drawn) > 1   # its parameters are drawn per image


def test_qrid_noise_has_the_variance_of_its_set():
    grey = _image(128)
    for name, (low, high) in qrid.NOISE.items():
        variances = [np.var(corrupt_image(grey, name, 1, seed).astype(float) - 128) for seed in range(20)]
        assert low * 0.9 <= min(variances) and max(variances) <= high * 1.1, (name, min(variances), max(variances))
        assert max(variances) - min(variances) > (high - low) * 0.3   # drawn across the range


def test_qrid_contrast_scales_the_pixels_by_one_plus_c():
    grey = _image(200)
    factors = [corrupt_image(grey, "contrast_low", 1, seed)[0, 0, 0] / 200 for seed in range(30)]
    assert 0.4 - 0.01 <= min(factors) and max(factors) <= 0.7 + 0.01


def test_qrid_jpeg_heavy_loses_more_than_jpeg_moderate():
    image = _image(seed=2)
    error = {name: np.mean([np.abs(corrupt_image(image, name, 1, s).astype(int) - image).mean() for s in range(5)])
             for name in ("jpeg_heavy", "jpeg_moderate")}
    assert error["jpeg_heavy"] > error["jpeg_moderate"] > 0


def test_qrid_mixed_leaves_about_half_of_the_images_clean():
    image = _image(seed=3)
    clean = [np.array_equal(corrupt_image(image, qrid.MIXED, 1, seed), image) for seed in range(200)]
    assert 0.4 <= np.mean(clean) <= 0.6


def test_moire_grows_with_its_severity():
    image = _image(128)
    change = [np.abs(corrupt_image(image, "moire", s, 5).astype(int) - 128).mean() for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:])), change


def test_a_severity_a_suite_has_not_is_refused():
    with pytest.raises(ParamsError, match="severity 2 of qrid's 'noisy_low'"):
        check_condition("noisy_low", 2)
    with pytest.raises(ParamsError, match="corruption 'nope' is unknown .*moire.*noisy_low"):
        check_condition("nope", 1)


def test_a_suite_condition_is_written_as_a_split(split, tmp_path):  # noqa: F811
    summary = corrupt_split(split, "blurry_medium", 1, 0, tmp_path / "out")
    assert summary["corruption"] == "blurry_medium" and summary["images"] == 2
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["a.png", "b.png"]


@pytest.mark.parametrize("corruptions,message", [
    ({"suites": ["imagecorruptions", "nope"]}, r"corruptions.suites: 'nope' is not a degradation suite"),
    ({"suites": ["qrid"]}, r"corruptions.suites: imagecorruptions is required"),
    ({"qrid": {"sets": ["noisy_high"]}}, r"corruptions.qrid.sets: 'noisy_high' is not one of QRID's sets"),
    ({"moire": {"severities": [0, 2]}}, r"corruptions.moire.severities: 0 is not an integer in 1-5"),
    ({"moire": {"strength": 2}}, r"corruptions.moire.strength: moire has no such setting"),
    ({"fog": {"x": 1}}, r"corruptions.fog: not a setting of corruptions nor a degradation suite"),
])
def test_bad_suite_settings_are_refused_naming_the_key(tmp_path, corruptions, message):
    with pytest.raises(ParamsError, match=message):
        _params(tmp_path, **corruptions)


def test_the_study_writes_and_evaluates_each_suites_conditions_at_their_severities(tmp_path):
    params = _params(tmp_path, suites=["imagecorruptions", "qrid", "moire"],
                     qrid={"sets": ["noisy_low", "mixed_50pct"]}, moire={"severities": [2, 4]})
    base = params["corruptions"]["names"] + params["corruptions"]["heldout"]
    assert study.corruptions(params) == [*base, "noisy_low", "mixed_50pct", "moire"]
    assert study.severities_of("noisy_low", params) == [1] and study.severities_of("moire", params) == [2, 4]
    assert study.severities_of(base[0], params) == params["corruptions"]["severities"]
    reads = {j.target: j.reads for j in study.jobs(params) if j.stage == "corrupt"}
    assert reads["moire"] == ("corruptions.seed", "corruptions.images", "corruptions.moire")
    assert reads["noisy_low"] == ("corruptions.seed", "corruptions.images")   # its parameters are QRID's
    assert reads[base[0]] == ("corruptions.seed", "corruptions.images", "corruptions.severities")
    evaluate = next(j for j in study.jobs(params) if j.stage == "evaluate")
    assert {"data/corrupted/noisy_low", "data/corrupted/moire"} <= set(evaluate.inputs)


def test_each_suite_gets_its_mean_and_relative_ap_on_the_same_resamples():
    rng = np.random.default_rng(0)
    cells = [("clean", 0), ("fog", 1), ("fog", 3), ("noisy_low", 1), ("moire", 2), ("moire", 4)]
    ap = {cell: rng.uniform(0.1, 0.6, 11) for cell in cells}
    figures = robustness_replicates(ap, ["fog"], [1, 3], {}, {"qrid": [("noisy_low", 1)],
                                                               "moire": [("moire", 2), ("moire", 4)]})
    assert np.allclose(figures["mPC_moire"], (ap[("moire", 2)] + ap[("moire", 4)]) / 2)
    assert np.allclose(figures["rPC_qrid"], ap[("noisy_low", 1)] / ap[("clean", 0)])
    assert np.allclose(figures["mPC"], (ap[("fog", 1)] + ap[("fog", 3)]) / 2)   # imagecorruptions' alone
    assert np.allclose(figures["corruptions"]["noisy_low"], ap[("noisy_low", 1)])


def test_the_report_gives_each_suite_with_intervals_and_the_change_against_fp32():
    def fig(estimate):
        return {"estimate": estimate, "low": estimate - 0.02, "high": estimate + 0.02}

    intervals = {
        "suites": {"qrid": {"corruptions": {"noisy_low": [1], "mixed_50pct": [1]}, "figures": ["mPC_qrid", "rPC_qrid"]}},
        "models": {"student-fp32": {"P": fig(0.30), "mPC_qrid": fig(0.21), "rPC_qrid": fig(0.70),
                                    "corruptions": {"noisy_low": fig(0.18), "mixed_50pct": fig(0.24)}},
                   "student-ptq-minmax-w8a8": {"P": fig(0.25), "mPC_qrid": fig(0.15), "rPC_qrid": fig(0.60),
                                               "corruptions": {"noisy_low": fig(0.12), "mixed_50pct": fig(0.18)}}},
        "comparisons": [{"group": "fp32", "comparison": "ptq minmax W8A8 vs FP32",
                         "differences": {"rPC_qrid": {"estimate": -0.10, "low": -0.15, "high": -0.05}}}],
    }
    text = _other_suites(intervals)
    assert "### qrid" in text and "noisy_low, mixed_50pct" in text
    assert "| `student-fp32` | 30.0 [28.0, 32.0] | 21.0 [19.0, 23.0] | 70.0% [68.0, 72.0] |" in text
    assert "| ptq minmax W8A8 vs FP32 | -10.0 [-15.0, -5.0] | lower |" in text
    assert "| `student-ptq-minmax-w8a8` | 12.0 | 18.0 |" in text
    assert _other_suites({**intervals, "suites": {}}) == ""


def test_qrid_protocol_gives_its_drop_table_and_answers_its_three_claims_with_intervals():
    """QRID's relative drop per set with its interval, and its claims: (a) INT8 against FP32
    under noise (a difference of drops outside zero: 'loses more'), (b) dacal against
    percentile (inside zero: no measurable difference), (c) the spread over calibration draws."""
    from quantdet.report.qrid import qrid_section

    def fig(estimate, half=0.02):
        return {"estimate": estimate, "low": estimate - half, "high": estimate + half}

    def model(p, noisy, mixed):
        return {"P": fig(p), "relative": {"noisy_low": fig(noisy), "mixed_50pct": fig(mixed)}}

    intervals = {
        "suites": {"qrid": {"corruptions": {"noisy_low": [1], "mixed_50pct": [1]}, "figures": ["mPC_qrid", "rPC_qrid"]}},
        "models": {"student-fp32": model(0.40, 0.75, 0.85),
                   "student-ptq-percentile-w8a8-ort": model(0.33, 0.70, 0.80),
                   "student-ptq-percentile-w8a8-r1-ort": model(0.35, 0.66, 0.80),
                   "student-ptq-dacal-w8a8-ort": model(0.34, 0.71, 0.81),
                   "teacher-fp32": model(0.5, 0.8, 0.9)},
        "comparisons": [
            {"group": "fp32", "comparison": "ptq percentile deployed vs FP32", "bits": "W8A8", "seeds": [0, 1],
             "treatment": ["student-ptq-percentile-w8a8-ort", "student-ptq-percentile-w8a8-r1-ort"],
             "baseline": ["student-fp32", "student-fp32"], "differences": {},
             "relative_differences": {"noisy_low": {"estimate": -0.07, "low": -0.10, "high": -0.04}}},
            {"group": "qrid", "comparison": "degradation-aware calibration vs clean calibration", "bits": "W8A8",
             "seeds": [0], "treatment": ["student-ptq-dacal-w8a8-ort"], "baseline": ["student-ptq-percentile-w8a8-ort"],
             "differences": {"P": {"estimate": 0.01, "low": -0.02, "high": 0.04},
                             "mPC_qrid": {"estimate": 0.005, "low": -0.01, "high": 0.02}},
             "relative_differences": {"noisy_low": {"estimate": 0.01, "low": -0.03, "high": 0.05}}},
            # a detector whose P is 0 has no relative AP: its comparison is left out, not a crash
            {"group": "detector", "comparison": "yolo11n: ptq minmax deployed vs FP32", "bits": "W8A8", "seeds": [0],
             "treatment": ["yolo11n-ptq-minmax-w8a8-ort"], "baseline": ["yolo11n-fp32"], "differences": {},
             "relative_differences": {"noisy_low": {"estimate": None, "low": None, "high": None}}}],
    }
    params = load_params(SMOKE)
    text = qrid_section(params, intervals)
    assert text.startswith("## QRID's protocol")
    # the drop 1 - relative, its interval's ends swapped; the repeat draw and the teacher not in the table
    assert "| `student-fp32` | 40.0 [38.0, 42.0] | 25.0% [23.0, 27.0] | 15.0% [13.0, 17.0] |" in text
    assert "`student-ptq-percentile-w8a8-r1-ort` |" not in text and "`teacher-fp32`" not in text
    assert ("`student-ptq-percentile-w8a8-ort` under `noisy_low`: drop 30.0% [28.0, 32.0] against FP32's "
            "25.0% [23.0, 27.0]; difference +7.0 [+4.0, +10.0] points (2 calibration draws pooled): "
            "**INT8 loses more**") in text
    assert "ΔP +1.0 [-2.0, +4.0]" in text and "**no measurable difference** on the `qrid` sets" in text
    assert "P from 33.0 to 35.0 (spread 2.0 points" in text and "drop under `noisy_low` from 30.0% to 34.0%" in text
    assert "+7.0, +0.5 points" in text
    assert qrid_section(params, {**intervals, "suites": {}}) == ""


def test_the_qrid_section_lists_ultralytics_int8_paths_run_and_not_run_here():
    from quantdet.report.qrid import ultralytics_paths

    params = load_params("workflow/studies/local/qrid.yaml")
    text = ultralytics_paths(params)
    assert "the `ultralytics_onnx` peer, run for `student`, `yolo26n`, `yolo12s`" in text
    assert "the `ultralytics_qat` peer, run for" in text
    assert "the `ultralytics_openvino` peer, not in this study's matrix" in text
    assert "LiteRT full-integer INT8 (`yolo export format=tflite int8=True`): not run: needs TensorFlow" in text
    assert "TensorRT INT8" in text and "needs an NVIDIA GPU" in text
    centernet_only = load_params("params.yaml")
    centernet_only["models"]["students"] = None
    assert ultralytics_paths(centernet_only) == ""
