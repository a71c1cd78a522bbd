"""`quantdet reproduce`: two runs of a study compared number by number, timings left out."""
import json
import shutil

import pytest

from quantdet.cli import main
from quantdet.errors import QuantdetError
from quantdet.report.reproduce import compare_studies, numbers, reproduced, write_reproduce


def _write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _study(root, ap=0.512, latency=12.5):
    _write(root / "results/metrics/intervals.json",
           {"models": {"student-fp32": {"P": {"estimate": 55.1, "low": 53.3, "high": 56.4}}},
            "num_images": 360})
    _write(root / "results/eval/student-fp32/clean/metrics.json",
           {"model": "student-fp32", "results": [{"severity": 0, "metrics": {"AP": ap, "AP50": 0.8},
                                                  "seconds": 1.7, "split": f"{root}/x"}]})
    _write(root / "results/models/student-ptq-minmax-w8a8.export.json",
           {"latency_ms": {"fp32_onnx": latency}, "speedup_by_runtime": {"onnxruntime": 3.0},
            "agreement": {"detections_match_iou50": 0.97}, "size_bytes": {"onnx": 100}})
    _write(root / "results/environment.json",
           {"runtime": {"source": {"commit": "abcdef0123", "dirty": False}}})
    return root


def test_numbers_leave_out_timings_and_strings():
    flat = numbers({"a": 1, "latency_ms": {"x": 3.0}, "evaluate_seconds": 2, "b": [0.5, "s", True],
                    "speedup": 2.0, "name": "m"})
    assert flat == {"/a": 1.0, "/b[0]": 0.5}


def test_identical_studies_reproduce_whatever_their_timings(tmp_path):
    a = _study(tmp_path / "a")
    b = _study(tmp_path / "b", latency=99.0)    # the machine's noise: not compared
    result = compare_studies(a, b)
    assert reproduced(result)
    assert result["files"] == 3 and result["numbers"] == result["identical"] == 9
    assert "all 9 identical" in write_reproduce(a, b)["markdown"]


def test_a_changed_metric_is_named(tmp_path):
    a = _study(tmp_path / "a")
    b = _study(tmp_path / "b", ap=0.511)
    result = compare_studies(a, b)
    assert not reproduced(result)
    (diff,) = result["differences"]
    assert diff["file"] == "results/eval/student-fp32/clean/metrics.json"
    assert diff["key"] == "/results[0]/metrics/AP" and diff["a"] == 0.512 and diff["b"] == 0.511
    text = write_reproduce(a, b)["markdown"]
    assert "1 differ" in text and "metrics/AP" in text


def test_a_file_missing_from_one_run_is_a_difference(tmp_path):
    a = _study(tmp_path / "a")
    b = _study(tmp_path / "b")
    shutil.rmtree(b / "results/eval")
    result = compare_studies(a, b)
    assert not reproduced(result)
    assert result["only_in_root"] == ["results/eval/student-fp32/clean/metrics.json"]


def test_an_unfinished_study_is_a_clear_error(tmp_path):
    a = _study(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(QuantdetError, match="intervals.json: not found"):
        compare_studies(a, tmp_path / "b")


def test_cli_writes_the_results_page_block_and_exits_1_on_a_difference(tmp_path):
    a = _study(tmp_path / "a")
    b = _study(tmp_path / "b")
    page = tmp_path / "results.md"
    page.write_text("x\n<!-- measured:reproduced:begin -->\nSTALE-TEXT\n<!-- measured:reproduced:end -->\ny\n")
    assert main(["reproduce", "--root", str(a), "--against", str(b), "--into", str(page)]) == 0
    text = page.read_text()
    assert "--into docs/results.md`" in text
    assert "all 9 identical" in text and "STALE-TEXT" not in text and text.endswith("y\n")
    c = _study(tmp_path / "c", ap=0.3)
    assert main(["reproduce", "--root", str(a), "--against", str(c)]) == 1
