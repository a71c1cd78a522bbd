"""The clean latency benchmark: the mechanism (one process per model, keys, ratios), never
the timings themselves."""
import json
import os

import pytest
import torch

from quantdet.cli import main
from quantdet.export.latency import benchmark, format_table, measure
from quantdet.export.onnx_export import export_onnx
from quantdet.quant.ptq import post_training_quantize
from tests.quant_models import tiny_model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    fp32 = folder / "fp32.onnx"
    export_onnx(tiny_model(), fp32, 32, 17)
    torch.manual_seed(0)
    q = post_training_quantize(tiny_model(), [torch.rand(4, 3, 32, 32) for _ in range(2)],
                               "minmax", 4, 4, {"calib_batches": 2})
    w4 = folder / "w4a4.onnx"
    export_onnx(q, w4, 32, 17)
    return fp32, w4


FAST = {"batch": 2, "threads": 1, "runs": 3, "warmup": 1, "max_reps": 2}


def test_each_model_is_timed_in_its_own_process(tiny_models):
    report = benchmark(tiny_models, ["onnxruntime"], **FAST)
    pids = [r["pid"] for r in report["results"]]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    for r in report["results"]:
        assert r["latency_ms"] > 0 and 1 <= len(r["repetition_medians_ms"]) <= FAST["max_reps"]
        assert r["batch"] == 2 and r["threads"] == 1 and r["runs"] == 3
    base = report["results"][0]
    assert base["model"] == str(tiny_models[0]) and base["speedup_vs_baseline"] == 1.0


def test_measure_takes_the_given_images(tiny_models):
    images = torch.rand(2, 3, 32, 32).numpy()
    record = measure(tiny_models[1], "onnxruntime", images=images, **FAST)
    assert record["runtime"] == "onnxruntime" and record["latency_ms"] > 0


def test_bench_command_for_both_runtimes(tiny_models, tmp_path, capsys):
    fp32, w4 = tiny_models
    out = tmp_path / "bench.json"
    assert main(["bench", str(w4), "--baseline", str(fp32), "--runtime", "onnxruntime", "openvino",
                 "--batch", "2", "--threads", "1", "--runs", "3", "--warmup", "1",
                 "--max-reps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["baseline"] == str(fp32)
    assert {(r["runtime"], r["model"]) for r in report["results"]} == {
        (rt, str(m)) for rt in ("onnxruntime", "openvino") for m in (fp32, w4)}
    ov = [r for r in report["results"] if r["runtime"] == "openvino"]
    assert all(r["precision_hint"] == "f32" for r in ov)
    assert all(r["speedup_vs_baseline"] == 1.0 for r in report["results"] if r["model"] == str(fp32))
    table = capsys.readouterr().out
    assert "w4a4.onnx" in table and "vs baseline" in table
    assert format_table(report).splitlines()[0].startswith("model")


def test_openvino_deployment_precisions_are_timed_at_their_hint(tiny_models):
    fp32, _ = tiny_models
    from quantdet.export.precision import probe

    report = benchmark([fp32], ["openvino", "openvino-f16", "openvino-bf16"], **FAST)
    results = {r["runtime"]: r for r in report["results"]}
    assert results["openvino"]["precision_hint"] == "f32"
    for runtime, hint in (("openvino-f16", "f16"), ("openvino-bf16", "bf16")):
        if probe(hint.replace("f16", "fp16") if hint == "f16" else hint, "openvino") is None:
            assert results[runtime]["precision_hint"] == hint
        else:   # a CPU without it: said, and no time under its name
            assert results[runtime]["latency_ms"] is None and "not run" in results[runtime]["error"], results[runtime]
