"""Deployment precisions (matrix.precisions): names, the study table, validation against what
this machine's runtimes actually run, and the precision stage on a small detector."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from quantdet import study
from quantdet.config import ParamsError, load_params, validate_params
from quantdet.errors import QuantdetError
from quantdet.export import precision as prec
from tests.conftest import SMOKE


def _params(**precisions):
    params = load_params(SMOKE)
    params["matrix"]["precisions"] = precisions
    return params


@pytest.mark.parametrize("model, role, precision, runtime", [
    ("student-fp16-ov", "student", "fp16", "openvino"),
    ("student-bf16", "student", "bf16", "torch"),
    ("yolo11n-int8_dynamic-ort", "yolo11n", "int8_dynamic", "onnxruntime"),
])
def test_precision_names_parse_and_round_trip(model, role, precision, runtime):
    name = study.parse_model_name(model)
    assert (name.role, name.stage, name.method, name.runtime) == (role, study.PRECISION, precision, runtime)
    assert name.precision and not name.quantized and not name.fp32
    assert name.name == model and name.fp32_source == f"{role}-fp32"
    assert name.model == f"{role}-{precision}"


def test_a_precision_has_no_repeat_seed():
    with pytest.raises(ValueError, match="no repeats"):
        study.parse_model_name("student-fp16-r1-ov")


def test_each_precision_runtime_pair_is_a_precision_job_and_an_evaluation():
    params = _params(fp16=["openvino"], bf16=["openvino", "torch"], int8_dynamic=["onnxruntime"])
    expected = ["student-fp16-ov", "student-bf16-ov", "student-bf16", "student-int8_dynamic-ort"]
    assert [m for m in study.precision_models(params) if m.startswith("student-")] == expected
    jobs = {(j.stage, j.target): j for j in study.jobs(params)}
    ort = jobs[("precision", "student-int8_dynamic-ort")]
    assert ort.outputs == (study.precision_file("student-int8_dynamic-ort"), study.onnx_file("student-int8_dynamic"))
    assert jobs[("precision", "student-fp16-ov")].outputs == (study.precision_file("student-fp16-ov"),)
    # each evaluation runs the file its runtime runs, after its precision job checked it
    assert jobs[("evaluate", "student-int8_dynamic-ort")].inputs[:2] == (
        study.onnx_file("student-int8_dynamic"), study.precision_file("student-int8_dynamic-ort"))
    assert jobs[("evaluate", "student-fp16-ov")].inputs[0] == study.onnx_file("student-fp32")
    assert jobs[("evaluate", "student-bf16")].inputs[0] == study.model_file("student-fp32")
    assert all(study.precision_file(m) in jobs[("report", "report")].inputs for m in expected)
    assert ("export", "student-fp32") in jobs   # the FP32 ONNX source is exported


def test_adding_a_precision_reruns_no_other_job():
    base = _params(fp16=["openvino"])
    more = _params(fp16=["openvino"], int8_dynamic=["onnxruntime"])
    before = {j.name: j for j in study.jobs(base)}
    after = {j.name: j for j in study.jobs(more)}
    changed = [n for n, j in before.items() if n in after and after[n].reads != j.reads
               and j.stage not in ("intervals", "report")]
    assert not changed
    assert set(after) - set(before) == {"precision-student-int8_dynamic-ort", "evaluate-student-int8_dynamic-ort",
                                        "precision-yolo11n-int8_dynamic-ort", "evaluate-yolo11n-int8_dynamic-ort"} - set(before)


@pytest.mark.parametrize("precision, runtime", [("bf16", "onnxruntime"), ("int8_dynamic", "openvino"),
                                                ("int8_dynamic", "torch"), ("fp16", "torch")])
def test_a_pair_quantdet_does_not_run_is_refused_naming_key_and_pair(precision, runtime):
    params = _params(**{precision: [runtime]})
    with pytest.raises(ParamsError, match=rf"matrix\.precisions\.{precision}: {precision} in {runtime}: not run"):
        validate_params(params)


def test_an_unknown_runtime_or_precision_is_refused_by_the_schema():
    with pytest.raises(ParamsError, match="precisions"):
        validate_params(_params(fp16=["tensorrt"]))
    with pytest.raises(ParamsError, match="precisions"):
        validate_params(_params(fp8=["openvino"]))


def test_validate_refuses_a_pair_this_machine_runs_in_float32():
    """fp16 in onnxruntime's CPU provider: refused where its convolutions fall back to float32
    (measured by the probe), accepted where they do run in fp16."""
    reason = prec.probe("fp16", "onnxruntime")
    params = _params(fp16=["onnxruntime"])
    if reason is None:
        validate_params(params, check_backbones=True)
        return
    assert "fp32" in reason
    with pytest.raises(ParamsError, match=r"matrix\.precisions\.fp16: fp16 in onnxruntime cannot run on this "
                                          r"machine: .*ran none of the model's 1 convolutions in fp16"):
        validate_params(params, check_backbones=True)


def test_a_silent_float32_fallback_is_refused():
    executed = {"runtime": "openvino", "version": "x", "convolutions_by_precision": {"f32": 12}}
    with pytest.raises(QuantdetError, match="ran none of the model's 12 convolutions in bf16 .*12 f32"):
        prec.check_executed("bf16", executed, "model.onnx")
    prec.check_executed("bf16", {**executed, "convolutions_by_precision": {"bf16": 11, "f32": 1}}, "model.onnx")


def test_each_supported_pair_runs_a_convolution_at_its_precision_here():
    """The probes of the pairs the default study runs: PyTorch's bf16 autocast and onnxruntime's
    dynamic INT8 run on any x86 CPU; OpenVINO's f16 and bf16 only where the CPU has them
    (AVX512-FP16 / AMX-FP16, AVX512-BF16 / AMX-BF16), and elsewhere the probe says what ran."""
    from quantdet.environment import _cpuinfo

    for precision, runtime in [("bf16", "torch"), ("int8_dynamic", "onnxruntime")]:
        assert prec.probe(precision, runtime) is None, (precision, runtime)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    for precision, needs in (("fp16", {"avx512_fp16", "amx_fp16"}), ("bf16", {"avx512_bf16", "amx_bf16"})):
        reason = prec.probe(precision, "openvino")
        if flags & needs:
            assert reason is None, (precision, _cpuinfo()["model"])
        elif reason is not None:   # a CPU without them: what OpenVINO ran instead
            assert f"ran none of the model's 1 convolutions in {precision}" in reason, reason


def test_validate_says_a_pair_this_machine_cannot_run_and_goes_on(monkeypatch, capsys):
    """OpenVINO or PyTorch at a precision this CPU lacks: validation says so and the study goes
    on (its precision job records why, the report says it); onnxruntime's is refused."""
    monkeypatch.setattr(prec, "probe", lambda precision, runtime: "it ran none of the model's 1 convolutions in "
                        f"{precision} (it ran them as 1 f32)")
    params = _params(fp16=["openvino"], bf16=["openvino"], int8_dynamic=[])
    params["models"]["students"]["yolo11n"]["matrix"]["precisions"] = {"int8_dynamic": []}
    validate_params(params, check_backbones=True)
    said = capsys.readouterr().err
    assert "matrix.precisions.fp16: fp16 in openvino will not run on this machine" in said
    assert "matrix.precisions.bf16: bf16 in openvino will not run on this machine" in said
    with pytest.raises(ParamsError, match=r"int8_dynamic in onnxruntime cannot run on this machine"):
        validate_params(_params(int8_dynamic=["onnxruntime"]), check_backbones=True)


def test_int8_dynamic_conversion_records_which_operators_it_quantized(tmp_path):
    source = str(tmp_path / "conv.onnx")
    prec._tiny_onnx(source)
    record = prec.convert(source, "int8_dynamic", tmp_path / "dyn.onnx")
    assert record["quantized_operators"]["ConvInteger"] == 1
    assert "Conv" not in record["float_operators_left"]
    assert prec.ort_executed(tmp_path / "dyn.onnx")["convolutions_by_precision"] == {"int8": 1}
    # every multiply-accumulate of the one convolution is in integer, and as many as the FP32 one's
    macs = record["multiply_accumulates"]
    assert macs["integer_share"] == 1.0 and macs["float"] == 0
    assert macs["integer"] == prec.multiply_accumulates(source)["float"] > 0


def test_the_integer_share_counts_what_dynamic_quantization_left_in_float(tmp_path):
    """A convolution and a matrix product: quantize_dynamic told to quantize the convolution
    only leaves the product's multiply-accumulates in float, counted from the run's shapes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv_w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    mat = numpy_helper.from_array(rng.normal(size=(8, 5)).astype(np.float32), "m")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("MatMul", ["c", "m"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [conv_w, mat])
    source = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(source))
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(source), str(tmp_path / "dyn.onnx"), op_types_to_quantize=["Conv"])
    macs = prec.multiply_accumulates(tmp_path / "dyn.onnx")
    conv, product = 4 * 6 * 8 * 3 * 3 * 3, 4 * 6 * 5 * 8
    assert (macs["integer"], macs["float"]) == (conv, product)
    assert macs["integer_share"] == pytest.approx(conv / (conv + product))


def test_converting_leaves_the_root_logger_as_it_found_it(tmp_path):
    """quantize_dynamic logs through logging.info, which gives a bare root logger a stderr
    handler: inside Snakemake (validate probes each pair) every line it logs then printed
    twice, and a log counting its SLURM submissions counted each twice."""
    import logging

    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    source = str(tmp_path / "conv.onnx")
    prec._tiny_onnx(source)
    prec.convert(source, "int8_dynamic", tmp_path / "dyn.onnx")
    assert (root.level, list(root.handlers)) == before


@pytest.mark.slow
def test_precision_stage_checks_converts_compares_and_times(tmp_path, monkeypatch):
    import torch

    from quantdet import detectors, stages
    from quantdet.data.dataset import DetectionDataset
    from quantdet.models.io import save_model

    params = _params(fp16=["openvino"], bf16=["openvino", "torch"], int8_dynamic=["onnxruntime"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUANTDET_TRACKING", "off")
    stages.prepare(params)
    train = DetectionDataset(f"{study.PREPARED}/train", params["models"]["input_size"])
    torch.manual_seed(0)   # an untrained detector exercises the stage
    detector = stages.detector_config(params, "student", len(train.category_ids))
    save_model(study.model_file("student-fp32"), detectors.build(detector), kind="fp32", detector=detector,
               classes={"category_ids": train.category_ids, "names": train.class_names},
               extra={"stride": 4, "input_size": params["models"]["input_size"]})
    stages.export(params, "student-fp32")
    expected = {"student-fp16-ov": ("f16", "fp16"), "student-bf16-ov": ("bf16", "bf16"),
                "student-bf16": ("bf16", "bf16"), "student-int8_dynamic-ort": ("int8", "int8")}
    for model, (ran, _) in expected.items():
        record = stages.precision(params, model)
        if record.get("not_run"):   # a CPU without f16 / bf16: said, nothing measured in its place
            name = study.parse_model_name(model)
            assert name.runtime == "openvino" and prec.probe(name.method, "openvino") == record["not_run"]
            assert "executed" not in record and "latency_ms" not in record
            continue
        on_disk = json.loads((tmp_path / study.precision_file(model)).read_text())
        assert on_disk["model"] == model and on_disk["executed"] == record["executed"]
        convs = record["executed"]["convolutions_by_precision"]
        assert convs.get(ran, 0) > 0, (model, convs)
        assert record["latency_ms"]["fp32"] > 0 and record["speedup_vs_fp32"] > 0
        agreement = record["agreement_with_fp32"]
        assert agreement["num_images"] > 0 and all(np.isfinite(v) for v in agreement["max_abs_diff"].values())
    # onnxruntime's model is written only for its own precision, OpenVINO and PyTorch run the FP32 files
    assert (tmp_path / study.onnx_file("student-int8_dynamic")).is_file()
    assert not (tmp_path / study.onnx_file("student-fp16")).exists()
    record = json.loads((tmp_path / study.precision_file("student-int8_dynamic-ort")).read_text())
    assert record["conversion"]["quantized_operators"]["ConvInteger"] >= 1


@pytest.mark.slow
def test_a_precision_this_machine_cannot_run_is_evaluated_as_not_run_and_reported(tmp_path, monkeypatch):
    """The precision job of a pair this CPU lacks records why; the evaluate job writes no
    figures, only that reason; the intervals leave the model out and name it; the report's
    precision section says "not run" with the reason (the probe is made to fail here, so that
    this runs on every CPU)."""
    import torch

    from quantdet import detectors, stages
    from quantdet.data.dataset import DetectionDataset
    from quantdet.models.io import save_model
    from quantdet.report.precisions import precisions_section

    params = _params(bf16=["openvino"])
    params["corruptions"].update(names=["gaussian_noise"], heldout=[], severities=[1], suites=["imagecorruptions"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUANTDET_TRACKING", "off")
    stages.prepare(params)
    stages.corrupt(params, "gaussian_noise")
    train = DetectionDataset(f"{study.PREPARED}/train", params["models"]["input_size"])
    torch.manual_seed(0)
    detector = stages.detector_config(params, "student", len(train.category_ids))
    save_model(study.model_file("student-fp32"), detectors.build(detector), kind="fp32", detector=detector,
               classes={"category_ids": train.category_ids, "names": train.class_names},
               extra={"stride": 4, "input_size": params["models"]["input_size"]})
    stages.export(params, "student-fp32")
    reason = "openvino X ran none of the model's 1 convolutions in bf16 (it ran them as 1 f32)"
    monkeypatch.setattr(prec, "probe", lambda precision, runtime: reason)
    record = stages.precision(params, "student-bf16-ov")
    assert record["not_run"] == reason and record["machine"]["cpu"]
    assert json.loads((tmp_path / study.precision_file("student-bf16-ov")).read_text()) == record
    assert stages.evaluate(params, "student-bf16-ov")["not_run"].endswith(reason)
    for condition in ("clean", "gaussian_noise"):
        metrics = json.loads((tmp_path / study.eval_metrics_file("student-bf16-ov", condition)).read_text())
        assert metrics["results"] == [] and metrics["not_run"].endswith(reason)
    stages.evaluate(params, "student-fp32")
    from quantdet.evaluation.intervals import study_intervals

    intervals = study_intervals(params, tmp_path, resamples=20, models=["student-fp32", "student-bf16-ov"])
    assert list(intervals["models"]) == ["student-fp32"] and intervals["not_run"]["student-bf16-ov"].endswith(reason)
    section = precisions_section(params, intervals, {"student-bf16-ov": record}, {})
    assert f"`student-bf16-ov`: bf16 in openvino: not run on this machine" in section and reason in section
    # and the report's reader skips it rather than failing on its empty results
    from quantdet.report.inputs import read_evaluation_rows

    rows = read_evaluation_rows([study.eval_metrics_file(m, c) for m in ("student-fp32", "student-bf16-ov")
                                 for c in ("clean", "gaussian_noise")])
    assert {r["model"] for r in rows} == {"student-fp32"}
