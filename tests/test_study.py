import pytest

from quantdet import study
from quantdet.config import load_params


@pytest.mark.parametrize("name", ["teacher-fp32", "student-fp32", "student-ptq-percentile-w8a8",
                                  "student-ptq-ema_minmax-w4a4-ort", "student-qat-lsq-w4a8",
                                  "student-ptq-mixed-w5a8-ort", "student-ptq-zeroq-w8a8",
                                  "student-qat-ait-w4a4", "student-mimic-qmimic_l0p1-w4a4-ort",
                                  "student-fp32-s1", "student-qat-fqn-w8a8-s1", "student-qat-fqn-w8a8-r2-ort",
                                  "yolo11n-fp32", "yolo26n-qat-daqat-w4a4-ort", "yolo11n-peer-nncf-w8a8-ort"])
def test_model_names_round_trip(name):
    assert study.parse_model_name(name).name == name


@pytest.mark.parametrize("name", ["student", "student-ptq-w8a8", "Pupil-fp32", "yolo-11n-fp32", "student-ptq-kl-w8",
                                  "student-fp32-r1"])
def test_malformed_model_names_are_rejected(name):
    with pytest.raises(ValueError, match="not a quantdet model name"):
        study.parse_model_name(name)


def test_quantized_model_knows_its_source_and_runtime():
    name = study.parse_model_name("student-ptq-kl-w4a8-ort")
    assert (name.fp32_source, name.model, name.runtime, name.bits_label) == (
        "student-fp32", "student-ptq-kl-w4a8", "onnxruntime", "W4A8")


def test_repeat_seeds_retrain_or_reuse_the_fp32_model():
    params = load_params("params.yaml")
    retrained, reused = study.parse_model_name("student-ptq-dacal-w8a8-s1"), study.parse_model_name(
        "student-ptq-dacal-w8a8-r1")
    assert (retrained.fp32_source, reused.fp32_source) == ("student-fp32-s1", "student-fp32")
    assert retrained.run_seed(params) == reused.run_seed(params) == 1
    params["matrix"]["repeat"]["retrain"] = True
    repeats = study.repeat_models(params)
    assert "student-fp32-s2" in repeats and "student-qat-fqn-w8a8-s2" in repeats
    assert study.find_job(params, "qat", "student-qat-fqn-w8a8-s2").inputs[0] == "results/models/student-fp32-s2.pt"
    params["matrix"]["runtimes"] = ["torch"]   # simulated only: repeats are not exported
    assert "student-qat-fqn-w8a8-s2" in study.evaluated_models(params)
    assert "student-qat-fqn-w8a8-s2" not in study.exported_models(params)


def test_each_family_takes_its_own_repeat_seeds():
    params = load_params("params.yaml")
    repeat = params["matrix"]["repeat"]
    repeat.update(seeds=[1, 2, 3], ptq_seeds=[1, 2], qat_seeds=None)
    repeats = study.repeat_models(params)
    assert study.repeat_seeds(params, "ptq") == [1, 2] and study.repeat_seeds(params, "qat") == [1, 2, 3]
    assert "student-qat-daqat-w8a8-r3" in repeats and "student-qat-fqn-w4a4-r3" in repeats
    assert not any(m.startswith("student-ptq-") and m.endswith("-r3") for m in repeats)
    repeat["retrain"] = True    # retraining: one FP32 student per seed
    repeats = study.repeat_models(params)
    assert "student-fp32-s3" in repeats and "student-qat-fqn-w8a8-s3" in repeats
    assert "student-ptq-dacal-w8a8-s3" not in repeats
    repeat.update(retrain=False, ptq_seeds=[2, 7])   # a subset of seeds only: 7 is not one
    assert study.repeat_seeds(params, "ptq") == [2]
    repeat["seeds"] = []                             # no seeds: no repeat at all
    assert study.repeat_models(params) == []


def test_default_study_matrix():
    params = load_params("params.yaml")
    models = study.evaluated_models(params)
    assert models[0] == "student-fp32" and "teacher-fp32" not in models  # no mimic: no teacher
    for q in study.quantized_models(params):   # deployed only (matrix.runtimes)
        assert q not in models and q + "-ort" in models
    repeats = study.repeat_models(params)     # 3 seeds of the headline methods, same FP32 model
    assert "student-qat-daqat-w4a4-r2" in repeats and "student-fp32-s1" not in repeats
    assert study.parse_model_name("student-qat-daqat-w4a4-r2").fp32_source == "student-fp32"
    assert "student-qat-daqat-w4a4-r2-ort" in models
    assert study.find_job(params, "ablation", "ablation").inputs == ("results/models/student-fp32.pt",
                                                                    "data/prepared")
    assert study.conditions(params)[0] == "clean" and len(study.conditions(params)) == 20
    assert study.heldout_corruptions(params) == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert not set(study.heldout_corruptions(params)) & set(study.benchmark_corruptions(params))
    assert study.severities_of("clean", params) == [0]


def test_mixed_precision_models_come_from_their_budgets():
    params = load_params("params.yaml")
    params["matrix"]["mixed"] = [5, 6]
    params["quant"]["mixed"]["act_bits"] = 8
    assert study.mixed_models(params) == ["student-ptq-mixed-w5a8", "student-ptq-mixed-w6a8",   # the
                                          *(f"{r}-ptq-mixed-w{b}a8" for r in ("yolo11n", "yolo26n")  # YOLO
                                            for b in (5, 6))]   # students' matrices do not set mixed
    assert set(study.mixed_models(params)) <= set(study.ptq_models(params))
    name = study.parse_model_name("student-ptq-mixed-w5a8")
    assert name.mixed_precision and name.stage == "ptq" and name.weight_bits == 5
    assert not study.parse_model_name("student-ptq-percentile-w4a8").mixed_precision
    job = study.find_job(params, "ptq", "student-ptq-mixed-w5a8")
    assert job.outputs == ("results/models/student-ptq-mixed-w5a8.pt",
                           "results/models/student-ptq-mixed-w5a8.bits.json")
    assert "results/models/student-ptq-mixed-w5a8.bits.json" in study.find_job(params, "report", "report").inputs
    params["matrix"]["mixed"] = []
    assert not study.mixed_models(params)


LOCAL_STUDY = "workflow/studies/local/distill_zeroshot.yaml"  # the default study + zero-shot + mimic


def test_zero_shot_and_mimic_models_and_their_inputs():
    params = load_params(LOCAL_STUDY)
    params["matrix"]["bits"] = [8, 4]
    models = study.quantized_models(params)
    for name in ("student-ptq-zeroq-w8a8", "student-ptq-gdfq-w4a4", "student-qat-ait-w4a4",
                 "student-mimic-alone-w8a8", "student-mimic-qmimic_l10-w4a4"):
        assert name in models
    assert study.generators(params) == ["zeroq", "gdfq"]  # derived from the listed methods
    ait = study.parse_model_name("student-qat-ait-w4a4")
    assert study.calibration_split(ait) == "data/synthetic/gdfq"
    assert study.calibration_input(ait) == "data/synthetic/gdfq"
    real = study.parse_model_name("student-qat-fqn-w4a4")
    assert (study.calibration_split(real), study.calibration_input(real)) == ("data/prepared/calib",
                                                                            "data/prepared")
    mimic = study.find_job(params, "mimic", "student-mimic-plain-w8a8")
    assert mimic.inputs == ("results/models/student-fp32.pt", "results/models/teacher-fp32.pt",
                            "data/prepared")
    assert "quant.zeroshot.ait" in study.job_reads("qat", model="student-qat-ait-w4a4")
    assert "quant.zeroshot.ait" not in study.job_reads("qat", model="student-qat-fqn-w4a4")
    assert "quant.qat.epochs" not in study.job_reads("qat", model="student-qat-ait-w4a4")
    assert study.job_reads("zeroshot_data", generator="gdfq")[-1] == "quant.zeroshot.gdfq"


def test_a_study_without_zero_shot_or_mimic_models_is_valid():
    params = load_params("params.yaml")
    assert not any(("zeroq" in m or "ait" in m or "mimic" in m) for m in study.quantized_models(params))
    assert study.generators(params) == []


def test_each_job_reads_only_its_methods_leaves_never_the_matrix():
    """The append-only property: no job but the study-wide ones (intervals, report) reads
    `matrix`, and a method's job reads the settings of its own method only."""
    params = load_params(LOCAL_STUDY)
    for job in study.jobs(params):
        if job.stage not in ("intervals", "report"):
            assert not any(k == "matrix" or k.startswith("matrix.") for k in job.reads), job.name
    reads = {j.target: set(j.reads) for j in study.jobs(params) if j.stage in ("ptq", "qat", "mimic")}
    assert "quant.ptq.percentile" not in reads["student-ptq-minmax-w8a8"]
    assert "quant.degradations" in reads["student-ptq-dacal-w8a8"]
    assert "quant.degradations" not in reads["student-qat-fqn-w8a8"]
    assert "quant.qat.outlier" in reads["student-qat-oaqat-w8a8"]
    assert "quant.qat.outlier" not in reads["student-qat-daqat-w8a8"]
    assert "distill.mimic.lambda" in reads["student-mimic-qmimic-w8a8"]


def test_the_study_table_names_every_job_once():
    params = load_params(LOCAL_STUDY)
    jobs = study.jobs(params)
    assert len({j.name for j in jobs}) == len(jobs)
    outputs = [o for j in jobs for o in j.outputs]
    assert len(set(outputs)) == len(outputs)
    made = set(outputs)
    for job in jobs:  # every input is made by an earlier job of the table
        assert all(i in made for i in job.inputs), job.name
    table = study.study_table(params).splitlines()
    assert table[0].split("\t") == list(study.TABLE_COLUMNS) and len(table) == len(jobs) + 1
    evaluate = study.find_job(params, "evaluate", "student-ptq-kl-w4a4-ort")
    assert evaluate.command == ("quantdet evaluate --params params.yaml --model student-ptq-kl-w4a4-ort "
                                "--out results/eval/student-ptq-kl-w4a4-ort "
                                "--log logs/evaluate/student-ptq-kl-w4a4-ort.log")
    assert evaluate.inputs[0] == "results/models/student-ptq-kl-w4a4.onnx"


def test_matrix_methods_must_be_registered(tmp_path):
    import yaml

    from quantdet.errors import ParamsError

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"matrix": {"ptq": ["minmax", "omse"]}}))
    with pytest.raises(ParamsError, match="matrix.ptq: unknown method 'omse'"):
        load_params(tmp_path / "p.yaml")


def test_the_local_study_only_adds_jobs_to_the_default_one():
    """Every job of the default study reads the same leaves with the same values in the local
    study, so run in a finished default study's folder it reruns none of them."""
    from quantdet.config import select

    default, local = load_params("params.yaml"), load_params(LOCAL_STUDY)
    local_jobs = {j.name: j for j in study.jobs(local)}
    for job in study.jobs(default):
        if job.stage not in ("intervals", "report"):
            assert job == local_jobs[job.name], job.name
            assert select(default, list(job.reads)) == select(local, list(job.reads)), job.name


def test_a_peer_job_reads_the_fp32_model_its_tool_quantizes():
    """ONNX peers start from the FP32 ONNX export; PT2E (methods/pt2e_peer.py) from the FP32
    PyTorch model, whose file is then an input of its job too."""
    params = load_params("params.yaml")
    params["matrix"]["peer"] = ["ort_minmax", "nncf", "nncf_mixed", "modelopt", "pt2e"]
    peers = {j.target: j for j in study.jobs(params) if j.stage == "peer" and j.target.startswith("student-")}
    assert set(peers) == {f"student-peer-{p}-w8a8" for p in params["matrix"]["peer"]}
    for model, job in peers.items():
        assert job.outputs == (study.onnx_file(model), f"results/models/{model}.export.json")
        assert study.onnx_file("student-fp32") in job.inputs
        assert (study.model_file("student-fp32") in job.inputs) == model.endswith("pt2e-w8a8")


@pytest.mark.parametrize("overlay", ["workflow/studies/local/mimic.yaml", "workflow/studies/local/zeroshot.yaml"])
def test_extension_overlays_rerun_no_job_of_the_default_study(overlay):
    """Composed in the folder of a finished default study, an extension runs only its new jobs
    (and the study-wide intervals and report): every default job keeps its inputs and reads."""
    import yaml

    from quantdet.config import compose, select

    base = load_params("params.yaml")
    extended = compose(yaml.safe_load(open(overlay)))
    new_jobs = {(j.stage, j.target): j for j in study.jobs(extended)}
    for job in study.jobs(base):
        if job.stage in ("intervals", "report"):
            continue
        twin = new_jobs[(job.stage, job.target)]
        assert twin.inputs == job.inputs and twin.outputs == job.outputs
        assert select(extended, list(twin.reads)) == select(base, list(job.reads)), job
    assert len(new_jobs) > len(study.jobs(base))


def test_the_detector_axis_runs_each_student_through_its_own_matrix():
    """models.students: each extra detector is trained from its own settings and runs the
    study's matrix with its own `matrix` keys over it, never mimic or the repeats."""
    params = load_params("params.yaml")
    assert study.students(params) == ["student", "yolo11n", "yolo26n"]
    models = study.evaluated_models(params)
    for role in ("yolo11n", "yolo26n"):
        assert f"{role}-fp32" in models
        mine = {m for m in models if m.startswith(role + "-")}
        assert mine == {f"{role}-fp32", *(f"{role}-{s}-{m}-w{b}a{b}-ort" for s, m in
                                          [("ptq", "minmax"), ("ptq", "dacal"), ("qat", "daqat"), ("peer", "nncf"),
                                           ("peer", "ultralytics_onnx")]
                                          for b in (8, 4) if not (s == "peer" and b == 4)),
                        f"{role}-fp16-ov", f"{role}-bf16-ov", f"{role}-int8_dynamic-ort"}   # matrix.precisions
        job = study.find_job(params, "qat", f"{role}-qat-daqat-w4a4")
        assert job.inputs == (f"results/models/{role}-fp32.pt", "data/prepared")
    pretrain = study.find_job(params, "pretrain", "yolo11n-fp32")
    assert pretrain.options == (("role", "yolo11n"),)
    # its network settings, not its matrix: a method appended to it retrains nothing
    assert "models.students.yolo11n.arch" in pretrain.reads
    assert not any(r.endswith(".matrix") for r in pretrain.reads)
    assert study.model_params(params, "yolo11n") == {"detector": "yolo", "arch": "yolo11n.yaml"}
    assert study.role_matrix(params, "yolo11n")["bits"] == params["matrix"]["bits"]
    assert study.role_matrix(params, "yolo11n")["mimic"] == []


def test_a_study_file_drops_a_detector_with_null(tmp_path):
    import yaml

    from quantdet.errors import ParamsError, QuantdetError

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"models": {"students": {"yolo26n": None}}}))
    params = load_params(tmp_path / "p.yaml")
    assert study.students(params) == ["student", "yolo11n"]
    assert not any(m.startswith("yolo26n") for m in study.evaluated_models(params))
    with pytest.raises(QuantdetError, match="yolo26n: not a model of this study"):
        study.model_params(params, "yolo26n")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"models": {"students": None}}))
    assert study.students(load_params(tmp_path / "p.yaml")) == ["student"]
    for bad, message in [({"student": {"detector": "yolo"}}, "models.students"),
                         ({"yolo11n": {"matrix": {"ptq": ["omse"]}}}, "models.students.yolo11n.matrix.ptq: unknown "
                                                                      "method 'omse'"),
                         ({"yolo11n": {"matrix": {"qat": ["ait"]}}}, "models.students.yolo11n.matrix.qat: ait "
                                                                     "calibrates on images generated from "
                                                                     "models.student's"),
                         ({"yolo11n": {"detector": "detr"}}, "models.students.yolo11n.detector: unknown detector")]:
        (tmp_path / "p.yaml").write_text(yaml.safe_dump({"models": {"students": bad}}))
        with pytest.raises(ParamsError, match=message):
            load_params(tmp_path / "p.yaml")
