import pytest

from quantdet import study
from quantdet.config import load_params


@pytest.mark.parametrize("name", ["teacher-fp32", "student-fp32", "student-ptq-percentile-w8a8",
                                  "student-ptq-ema_minmax-w4a4-ort", "student-qat-lsq-w4a8"])
def test_model_names_round_trip(name):
    assert study.parse_model_name(name).name == name


@pytest.mark.parametrize("name", ["student", "student-ptq-w8a8", "pupil-fp32", "student-ptq-kl-w8"])
def test_malformed_model_names_are_rejected(name):
    with pytest.raises(ValueError, match="not a quantdet model name"):
        study.parse_model_name(name)


def test_quantized_model_knows_its_source_and_runtime():
    name = study.parse_model_name("student-ptq-kl-w4a8-ort")
    assert (name.fp32_source, name.model, name.runtime, name.bits_label) == (
        "student-fp32", "student-ptq-kl-w4a8", "onnxruntime", "W4A8")


def test_default_study_matrix():
    params = load_params("params.yaml")
    models = study.evaluated_models(params)
    assert models[:2] == ["teacher-fp32", "student-fp32"]
    for q in study.quantized_models(params):
        assert q in models and q + "-ort" in models
    assert study.conditions(params)[0] == "clean" and len(study.conditions(params)) == 20
    assert study.heldout_corruptions(params) == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert not set(study.heldout_corruptions(params)) & set(study.benchmark_corruptions(params))
    assert study.severities_of("clean", params) == [0]
