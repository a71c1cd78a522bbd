"""The report's deployment section: latency in each runtime, which runtime is fastest, ours
against the fastest peer (quantdet.report.deployment)."""
from quantdet.report.deployment import deployment_table, fastest_runtime_answers, peer_speed_answers


def _record(fp32, int8, size=1_000_000):
    """An export record as quantdet.stages.export.time_files writes it: {runtime: (fp32, int8) ms}."""
    by_runtime = {r: {"fp32_onnx": fp32[r], "int8_onnx": int8[r]} for r in fp32}
    return {"latency_by_runtime": by_runtime,
            "speedup_by_runtime": {r: round(fp32[r] / int8[r], 3) for r in fp32},
            "size_bytes": {"fp32_onnx": 4 * size, "int8_onnx": size},
            "latency_method": {"batch": 8, "threads": 2}}


EXPORTS = {
    # ours: OpenVINO faster for both W8A8 models, and for W4A4 too
    "student-ptq-minmax-w8a8": _record({"onnxruntime": 33.0, "openvino": 35.0}, {"onnxruntime": 12.0, "openvino": 5.0}),
    "student-qat-oaqat-w8a8": _record({"onnxruntime": 32.0, "openvino": 34.0}, {"onnxruntime": 30.0, "openvino": 29.0}),
    "student-ptq-kl-w4a4": _record({"onnxruntime": 33.0, "openvino": 35.0}, {"onnxruntime": 11.0, "openvino": 6.0}),
    # peers (W8A8): nncf the fastest in both runtimes
    "student-peer-ort_minmax-w8a8": _record({"onnxruntime": 33.0, "openvino": 35.0}, {"onnxruntime": 12.0, "openvino": 5.5}),
    "student-peer-nncf-w8a8": _record({"onnxruntime": 33.0, "openvino": 35.0}, {"onnxruntime": 11.8, "openvino": 5.0}),
    "student-ptq-minmax-w8a8-r1": {"latency_ms": None},   # a repeat: not timed
}
INTERVALS = {"models": {"student-ptq-minmax-w8a8-ort": {"P": {"estimate": 0.55, "low": 0.53, "high": 0.57},
                                                         "mPC": {"estimate": 0.2, "low": 0.19, "high": 0.21}}}}


def test_the_table_has_every_timed_model_in_each_runtime():
    table = deployment_table(EXPORTS, INTERVALS)
    assert "OpenVINO (f32) ms" in table and "onnxruntime ms" in table
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 5   # the untimed repeat is left out
    minmax = next(r for r in rows if "ptq-minmax-w8a8`" in r)
    assert "55.0 [53.0, 57.0]" in minmax and "12.0 (2.75×)" in minmax and "5.0 (7.00×)" in minmax
    assert "| peer |" in next(r for r in rows if "peer-nncf" in r)
    assert "median of 5" in table


def test_a_litert_column_says_that_our_own_models_are_not_converted_to_litert():
    assert "not converted to LiteRT" not in deployment_table(EXPORTS, INTERVALS)
    litert = {**EXPORTS, "student-peer-litert-w8a8": _record({"litert": 20.0}, {"litert": 8.0})}
    table = deployment_table(litert, INTERVALS)
    assert "LiteRT ms" in table and "quantdet's own integer models are not converted to LiteRT" in table


def test_the_fastest_runtime_is_named_with_ties_within_the_timing_tolerance():
    w8, w4 = fastest_runtime_answers(EXPORTS)
    assert "our W8A8 models fastest?** OpenVINO (f32), for 2 of 2" in w8
    # oaqat: 30 vs 29 ms, within 5%
    assert "Within the timing's 5% tolerance" in w8 and "oaqat" in w8.split("tolerance")[1]
    assert "W4A4" in w4 and "for 1 of 1" in w4


def test_ours_against_the_fastest_peer_beyond_the_spread_of_our_identical_graphs():
    exports = dict(EXPORTS)
    exports["student-qat-oaqat-w8a8"] = {**EXPORTS["student-qat-oaqat-w8a8"], "outlier_side_paths": {"fp16_kernels": 3}}
    exports["student-ptq-percentile-w8a8"] = _record({"onnxruntime": 33.0, "openvino": 35.0},
                                                     {"onnxruntime": 11.0, "openvino": 6.0})
    (line,) = peer_speed_answers(exports)
    ort, ov = line.split("; OpenVINO")
    # onnxruntime: ours 2.75x and 3.00x, the fastest peer (nncf) 2.80x: inside our spread
    assert "fastest peer `student-peer-nncf-w8a8` 2.80× FP32" in ort
    assert "our 2 plain integer exports" in ort and "(from 2.75× to 3.00×): no measurable difference" in ort
    # OpenVINO: ours 7.00x and 5.83x, nncf 7.00x... ort_minmax 6.36x: nncf is the fastest, inside the spread
    assert "no measurable difference" in ov
    assert "With FP16 outlier side paths: `student-qat-oaqat-w8a8` 1.07× / 1.17×" in line
    slow = {**exports, "student-peer-nncf-w8a8": _record({"onnxruntime": 33.0, "openvino": 35.0},
                                                          {"onnxruntime": 9.0, "openvino": 5.0})}
    assert "3.67× FP32" in peer_speed_answers(slow)[0] and "the peer is faster" in peer_speed_answers(slow)[0]


def test_nothing_to_say_without_latency():
    assert deployment_table({"m": {"latency_ms": None}}, None) == ""
    assert fastest_runtime_answers({}) == [] and peer_speed_answers({}) == []
