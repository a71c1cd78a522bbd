"""The measured blocks of the documentation's results page (docs/results.md) are generated from a
study's outputs (quantdet measured), and each block names the command that regenerates it."""
import json
import re
import shlex
from pathlib import Path

import pytest

from quantdet import cli
from quantdet.cli import main
from quantdet.errors import QuantdetError
from quantdet.report.measured import BEGIN, END, measured_markdown, replace_block, snakemake_wall, write_measured


def _value(estimate, low, high):
    return {"estimate": estimate, "low": low, "high": high}


def _study(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text("study: {name: tiny}\nmatrix: {bits: [8], ptq: [percentile, dacal], "
                                      "qat: [], repeat: {seeds: []}}\n")
    metrics = root / "results" / "metrics"
    metrics.mkdir(parents=True)
    figures = {"P": _value(0.50, 0.49, 0.515), "mPC": _value(0.20, 0.195, 0.206), "rPC": _value(0.4, 0.39, 0.41)}
    models = {m: figures for m in ("student-fp32", "student-ptq-percentile-w8a8-ort", "student-ptq-dacal-w8a8-ort")}
    models["student-ptq-dacal-w8a8-ort"] = {**figures, "P": _value(0.48, 0.44, 0.50)}   # ±3: too wide
    comparison = {"group": "qrid", "comparison": "degradation-aware calibration vs clean calibration", "bits": "W8A8",
                  "seeds": [0, 1, 2], "treatment": ["a"], "baseline": ["b"],
                  "differences": {"mPC": _value(-0.005, -0.009, -0.001), "P": _value(0.001, -0.02, 0.022)}}
    (metrics / "intervals.json").write_text(json.dumps({"level": 0.95, "resamples": 10, "num_images": 240,
                                                        "models": models, "comparisons": [comparison]}))
    log = root / ".snakemake" / "log" / "2026-01-01T000000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text("[Mon Nov 30 10:00:00 2026]\nrule prepare:\n[Mon Nov 30 10:41:30 2026]\nFinished jobid: 1\n"
                   "3 of 3 steps (100%) done\n")
    bench = root / "benchmarks" / "evaluate"
    bench.mkdir(parents=True)
    for name, seconds in (("a", 30.0), ("b", 50.0)):
        (bench / f"{name}.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{int(seconds)}\t100\n")
    return root


def test_the_block_holds_the_study_numbers_and_the_targets(tmp_path):
    root = _study(tmp_path)
    assert snakemake_wall(root)["seconds"] == 41 * 60 + 30
    block = measured_markdown(root)
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "**41 min 30 s**" in block and "| evaluate | 2 | 1 min 20 s | 40 s |" in block
    assert "`student-ptq-dacal-w8a8-ort` | 48.0 [44.0, 50.0]" in block
    assert "ΔmPC -0.5 [-0.9, -0.1] points: lower" in block
    row = [line for line in block.splitlines() if line.startswith("| degradation-aware") and "ΔP" in line][0]
    assert "±2.10" in row and "**not met**" in row   # half the interval's width and "no measurable difference" in row
    row = [line for line in block.splitlines() if line.startswith("| degradation-aware") and "ΔmPC" in line][0]
    assert "±0.40" in row and "| met |" in row
    assert "2 of 3 within ±2.0 points (widest: `student-ptq-dacal-w8a8-ort` ±3.00)" in block


def test_minutes_round_to_a_whole_second():
    from quantdet.report.measured import _minutes

    assert _minutes(3839.6) == "64 min 00 s" and _minutes(59.4) == "0 min 59 s"


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
# The blocks of the results page, in the order the README had them (the torchvision block will follow yolo).
BLOCKS = [None, "reproduced", "mimic", "zeroshot", "yolo", "qrid", "yolo_scales", "ultralytics_qat", "torchvision", "precisions"]


def test_the_page_block_is_replaced_and_nothing_else(tmp_path):
    root = _study(tmp_path / "study")
    page = tmp_path / "results.md"
    page.write_text(f"# x\n\nbefore\n\n{BEGIN}\nold numbers\n{END}\n\nafter\n")
    write_measured(root, page)
    text = page.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old numbers" not in text
    write_measured(root, page)
    assert page.read_text() == text   # idempotent
    with pytest.raises(QuantdetError, match="no <!-- measured:begin -->"):
        replace_block("no markers", "x")
    with pytest.raises(QuantdetError, match=r"nowhere\.md: not found"):
        write_measured(root, tmp_path / "nowhere.md")


def test_cli_writes_the_results_page_by_default_and_keeps_readme_as_an_alias(tmp_path, monkeypatch, capsys):
    root = _study(tmp_path / "study")
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\n{BEGIN}\nold numbers\n{END}\n")
    monkeypatch.setattr(cli, "RESULTS_PAGE", page)      # the project's docs/results.md, here a copy
    assert main(["measured", "--root", str(root)]) == 0
    written = page.read_text()
    assert "old numbers" not in written and "**41 min 30 s**" in written
    page.write_text(f"{BEGIN}\nold numbers\n{END}\n")
    assert main(["measured", "--root", str(root), "--readme", str(page)]) == 0   # the former name
    assert page.read_text() == written[len("# Results\n\n"):]
    capsys.readouterr()
    page.write_text(f"{BEGIN}\nold numbers\n{END}\n")
    assert main(["measured", "--root", str(root), "--into", "-"]) == 0         # printed, page untouched
    assert "**41 min 30 s**" in capsys.readouterr().out and "old numbers" in page.read_text()
    assert main(["measured", "--root", str(root), "--into", str(tmp_path / "missing.md")]) == 2


def test_the_results_page_holds_every_block_with_the_command_that_regenerates_it():
    text = RESULTS.read_text()
    found = re.findall(r"<!-- measured:(?:(\w+):)?begin -->\n<!-- generated by `([^`]+)`", text)
    assert [name or None for name, _ in found] == BLOCKS
    for name, command in found:
        assert text.count(f"<!-- measured:{name + ':' if name else ''}end -->") == 1, name
        argv = shlex.split(command.replace("<study folder>", "S").replace("<second study folder>", "T"))
        assert argv[0] == "quantdet" and "--readme" not in argv, command
        args = cli._parser().parse_args(argv[1:])
        if args.stage == "measured":       # its default target is this page
            assert args.into is None and args.block == (name or None), command
        else:
            assert args.stage == "reproduce" and name == "reproduced" and args.into == "docs/results.md", command
    assert "<!-- measured:" not in (ROOT / "README.md").read_text()   # the README links to the page instead


def test_the_block_holds_the_latency_of_every_deployable_model(tmp_path):
    root = _study(tmp_path)
    models = root / "results" / "models"
    models.mkdir(parents=True)
    for model, int8 in (("student-ptq-percentile-w8a8", {"onnxruntime": 12.0, "openvino": 5.0}),
                        ("student-peer-nncf-w8a8", {"onnxruntime": 11.0, "openvino": 5.0})):
        fp32 = {"onnxruntime": 33.0, "openvino": 35.0}
        (models / f"{model}.export.json").write_text(json.dumps({
            "model": model, "size_bytes": {"int8_onnx": 2_000_000},
            "latency_by_runtime": {r: {"fp32_onnx": fp32[r], "int8_onnx": int8[r]} for r in fp32},
            "speedup_by_runtime": {r: fp32[r] / int8[r] for r in fp32},
            "latency_method": {"batch": 8, "threads": 2}}))
    block = measured_markdown(root)
    assert "OpenVINO (f32) ms" in block and "12.0 (2.75×)" in block
    assert "our W8A8 models fastest?** OpenVINO (f32), for 1 of 1" in block
    assert "fastest peer `student-peer-nncf-w8a8` 3.00× FP32, our 1 plain integer exports" in block and "the peer is faster" in block


def test_a_named_block_for_an_extension_keeps_to_its_stages(tmp_path):
    root = _study(tmp_path / "study")
    intervals_file = root / "results" / "metrics" / "intervals.json"
    intervals = json.loads(intervals_file.read_text())
    figures = intervals["models"]["student-fp32"]
    intervals["models"].update({"teacher-fp32": figures, "student-mimic-qmimic-w8a8-ort": figures})
    intervals["comparisons"].append({"group": "teacher", "comparison": "teacher vs student (FP32)", "bits": "fp32",
                                     "seeds": [0], "treatment": ["teacher-fp32"], "baseline": ["student-fp32"],
                                     "differences": {"P": _value(0.03, 0.02, 0.04), "mPC": _value(0.01, 0.005, 0.015)}})
    intervals_file.write_text(json.dumps(intervals))
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("qat: [],", "qat: [], mimic: [qmimic],"))
    block = measured_markdown(root, "mimic", ["mimic"])
    assert block.startswith("<!-- measured:mimic:begin -->") and block.endswith("<!-- measured:mimic:end -->")
    assert "--block mimic --stages mimic" in block
    assert "`teacher-fp32`" in block and "`student-mimic-qmimic-w8a8-ort`" in block
    assert "ptq-percentile" not in block and "degradation-aware" not in block and "targets" not in block
    readme = tmp_path / "results.md"
    readme.write_text(f"{BEGIN}\nkept\n{END}\n<!-- measured:mimic:begin -->\nstale numbers\n<!-- measured:mimic:end -->\n")
    write_measured(root, readme, "mimic", ["mimic"])
    text = readme.read_text()
    assert "kept" in text and "stale numbers" not in text and "`teacher-fp32`" in text
    by_method = measured_markdown(root, "zeroshot", ["percentile"])   # a method's models, by name
    assert "`student-ptq-percentile" in by_method and "mimic-qmimic" not in by_method
