import pytest

from quantdet import study
from quantdet.config import load_params


@pytest.mark.parametrize("name", ["teacher-fp32", "student-fp32", "student-ptq-percentile-w8a8",
                                  "student-ptq-ema_minmax-w4a4-ort", "student-qat-lsq-w4a8",
                                  "student-ptq-mixed-w5a8-ort", "student-ptq-zeroq-w8a8",
                                  "student-qat-ait-w4a4", "student-mimic-qmimic_l0p1-w4a4-ort"])
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


def test_mixed_precision_models_come_from_their_budgets():
    params = load_params("params.yaml")
    params["quant"]["mixed"].update(budgets=[5, 6], act_bits=8)
    assert study.mixed_models(params) == ["student-ptq-mixed-w5a8", "student-ptq-mixed-w6a8"]
    assert set(study.mixed_models(params)) <= set(study.ptq_models(params))
    name = study.parse_model_name("student-ptq-mixed-w5a8")
    assert name.mixed_precision and name.stage == "ptq" and name.weight_bits == 5
    assert not study.parse_model_name("student-ptq-percentile-w4a8").mixed_precision
    params["quant"]["mixed"]["budgets"] = []
    assert not study.mixed_models(params)


LOCAL_STUDY = "workflow/studies/local/distill_zeroshot.yaml"  # the default study + zero-shot + mimic


def test_zero_shot_and_mimic_models_and_their_inputs():
    params = load_params(LOCAL_STUDY)
    params["quant"]["bits"] = [8, 4]
    models = study.quantized_models(params)
    for name in ("student-ptq-zeroq-w8a8", "student-ptq-gdfq-w4a4", "student-qat-ait-w4a4",
                 "student-mimic-alone-w8a8", "student-mimic-qmimic_l10-w4a4"):
        assert name in models
    ait = study.parse_model_name("student-qat-ait-w4a4")
    assert study.calibration_split(ait) == "data/synthetic/gdfq"
    assert study.calibration_input(ait) == "data/synthetic/gdfq"
    real = study.parse_model_name("student-qat-fqn-w4a4")
    assert (study.calibration_split(real), study.calibration_input(real)) == ("data/prepared/calib",
                                                                            "data/prepared")
    mimic = study.parse_model_name("student-mimic-plain-w8a8")
    assert (mimic.stage, mimic.method, mimic.fp32_source) == ("mimic", "plain", "student-fp32")
    assert "quant.zeroshot.ait" in study.stage_params("qat", model="student-qat-ait-w4a4")
    assert "quant.zeroshot.ait" not in study.stage_params("qat", model="student-qat-fqn-w4a4")
    assert study.stage_params("zeroshot_data", generator="gdfq")[-1] == "quant.zeroshot.gdfq"


def test_a_study_without_zero_shot_or_mimic_models_is_valid(tmp_path):
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    raw["quant"]["zeroshot"].update(generators=[], ptq_methods=[], qat_methods=[])
    raw["distill"]["mimic"]["variants"] = []
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "p.yaml")
    assert not any(("zeroq" in m or "ait" in m or "mimic" in m) for m in study.quantized_models(params))


def test_a_zero_shot_method_needs_its_generated_set(tmp_path):
    import yaml

    from quantdet.errors import ParamsError

    raw = yaml.safe_load(open(LOCAL_STUDY))
    raw["quant"]["zeroshot"]["generators"] = ["zeroq"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="quant.zeroshot.ptq_methods: gdfq"):
        load_params(tmp_path / "p.yaml")




def test_the_local_study_only_adds_jobs_to_the_default_one():
    """Every key a default-study stage reads (the report aside) is the same in the local study,
    so run in a finished default study's folder it reruns none of its jobs."""
    from quantdet.config import select

    default, local = load_params("params.yaml"), load_params(LOCAL_STUDY)
    assert set(study.evaluated_models(default)) < set(study.evaluated_models(local))
    for stage, keys in study.STAGE_PARAMS.items():
        if stage != "report":
            for role in ("teacher", "student"):
                for generator in ("zeroq", "gdfq"):
                    read = [k.format(role=role, generator=generator) for k in keys]
                    if stage.startswith(("zeroshot", "mimic", "ptq:", "qat:")):
                        continue  # stages and methods the default study does not run
                    assert select(default, read) == select(local, read), stage
