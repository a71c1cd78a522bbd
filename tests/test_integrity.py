"""Damaged files are refused naming the file (issue 29, the fault campaign's damaged-files row):
a flipped byte in a model file, an ONNX model or a cached corrupted image (checksums recorded
when written, checked when read; a file without one is accepted), and a params file cut short
(refused naming file and line by every entry point)."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from quantdet import config, integrity
from quantdet.config import check_params_file, load_params
from quantdet.errors import ParamsError, QuantdetError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"


def flip(path: Path, offset: int | None = None) -> None:
    """One byte changed in place, its modification time kept: silent damage."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ----------------------------------------------------------------------------- model files
def _save(path):
    from quantdet.models.io import save_model

    model = torch.nn.Conv2d(3, 4, 3)
    save_model(path, model, kind="fp32", detector={"family": "x"}, classes={"names": ["a"]})
    return model


def test_a_model_file_gets_a_sha256sum_sidecar(tmp_path):
    path = tmp_path / "models" / "student-fp32.pt"
    _save(path)
    side = integrity.sidecar(path)
    assert side.name == "student-fp32.pt.sha256"
    assert side.read_text() == f"{integrity.sha256_file(path)}  student-fp32.pt\n"   # `sha256sum -c` format
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]          # no temporary left


def test_a_flipped_byte_in_a_model_file_is_refused_naming_it(tmp_path):
    from quantdet.models.io import read_model_file

    path = tmp_path / "student-fp32.pt"
    model = _save(path)
    payload = read_model_file(path)   # intact: accepted
    assert torch.equal(payload["state_dict"]["weight"], model.weight.detach())
    flip(path)
    with pytest.raises(QuantdetError) as err:
        read_model_file(path)
    message = str(err.value)
    assert str(path) in message and "damaged" in message and "snakemake --forcerun" in message


def test_a_model_file_without_a_checksum_is_accepted(tmp_path):
    from quantdet.models.io import read_model_file

    path = tmp_path / "student-fp32.pt"
    _save(path)
    integrity.sidecar(path).unlink()   # written before checksums existed
    assert read_model_file(path)["kind"] == "fp32"


def test_a_rewritten_model_file_gets_a_new_checksum(tmp_path):
    from quantdet.models.io import read_model_file

    path = tmp_path / "student-fp32.pt"
    _save(path)
    _save(path)   # another model: the old sidecar never describes the new file
    assert read_model_file(path)["kind"] == "fp32"


def test_stage_inputs_are_checked_too(tmp_path):
    from quantdet.stages.common import require

    path = tmp_path / "student-fp32.pt"
    _save(path)
    assert require(path) == path
    flip(path)
    with pytest.raises(QuantdetError, match=str(path)):
        require(path)


# ----------------------------------------------------------------------------- ONNX models
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from quantdet.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "student-fp32.onnx"
    export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(), path, 16, 17,
                output_names=["y"])
    return path


@pytest.mark.parametrize("runner", ["ort", "ov"])
def test_a_flipped_byte_in_an_onnx_model_is_refused_naming_it(onnx_file, tmp_path, runner):
    from quantdet.export.runner import OrtDetector, OvDetector

    if runner == "ov":
        pytest.importorskip("openvino")
    cls = OrtDetector if runner == "ort" else OvDetector
    path = tmp_path / onnx_file.name
    path.write_bytes(onnx_file.read_bytes())
    integrity.sidecar(path).write_text(integrity.sidecar(onnx_file).read_text())
    cls(path)   # intact: accepted
    flip(path, path.stat().st_size - 20)   # in the metadata or a weight: no parse error to catch it
    with pytest.raises(QuantdetError) as err:
        cls(path)
    assert str(path) in str(err.value) and "damaged" in str(err.value)
    integrity.sidecar(path).unlink()   # no checksum (an older export): not checked
    cls(path)


# ----------------------------------------------------------------------------- cached images
@pytest.fixture
def corrupted(tmp_path):
    from quantdet.corruptions import corrupt_split
    from quantdet.data.split import write_annotations

    val = tmp_path / "prepared" / "val"
    (val / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(val / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 48, "height": 40})
    write_annotations(val, {"images": images, "categories": [{"id": 1, "name": "thing"}],
                            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10],
                                             "area": 100, "iscrowd": 0}]})
    out = tmp_path / "corrupted" / "gaussian_noise" / "2"
    corrupt_split(val, "gaussian_noise", 2, 0, out)
    return out


def test_the_corrupt_stage_records_each_file_s_checksum(corrupted):
    lines = (corrupted / integrity.MANIFEST).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["annotations.json", "images/0.png", "images/1.png"]
    for line in lines:
        digest, name = line.split("  ")
        assert integrity.sha256_file(corrupted / name) == digest


def test_the_png_bytes_are_those_pil_writes_to_a_file(corrupted, tmp_path):
    pixels = np.asarray(Image.open(corrupted / "images" / "0.png"))
    Image.fromarray(pixels).save(tmp_path / "direct.png", format="PNG")
    assert (tmp_path / "direct.png").read_bytes() == (corrupted / "images" / "0.png").read_bytes()


def test_a_flipped_byte_in_a_cached_image_is_refused_naming_it(corrupted):
    from quantdet.data.dataset import DetectionDataset

    dataset = DetectionDataset(corrupted, 32)
    before = dataset[1][0]   # intact: accepted
    image = corrupted / "images" / "1.png"
    flip(image)
    with pytest.raises(QuantdetError) as err:
        DetectionDataset(corrupted, 32)[1]
    message = str(err.value)
    assert str(image) in message and "damaged" in message
    assert f"snakemake --forcerun {corrupted.parent}" in message   # the corrupt stage's output
    assert torch.equal(dataset[0][0], DetectionDataset(corrupted, 32)[0][0]) and before.shape == (3, 32, 32)


def test_a_flipped_byte_in_the_cached_annotations_is_refused_naming_them(corrupted):
    from quantdet.data.dataset import DetectionDataset

    flip(corrupted / "annotations.json", 20)
    with pytest.raises(QuantdetError, match="annotations.json: damaged"):
        DetectionDataset(corrupted, 32)


def test_a_cache_without_checksums_is_accepted_and_an_unreadable_image_named(corrupted):
    from quantdet.data.dataset import DetectionDataset

    (corrupted / integrity.MANIFEST).unlink()   # written before checksums existed
    assert DetectionDataset(corrupted, 32)[1][0].shape == (3, 32, 32)
    image = corrupted / "images" / "1.png"
    image.write_bytes(image.read_bytes()[:200])   # was "OSError: broken data stream", naming no file
    with pytest.raises(QuantdetError, match=f"{image}: cannot read image"):
        DetectionDataset(corrupted, 32)[1]


# ----------------------------------------------------------------------------- params files
def _cut(tmp_path, source: Path, length: int) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes(source.read_bytes()[:length])
    return path


def test_a_params_file_cut_mid_line_is_refused_naming_file_and_line(tmp_path):
    text = SMOKE.read_text()
    length = text.index("  - ") if "  - " in text else text.index("ptq: [minmax") + len("ptq: [min")
    path = _cut(tmp_path, SMOKE, length)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    line = text[:length].count("\n") + 1
    assert f"{path}:{line}: the file ends mid-line" in str(err.value)


def test_the_cut_that_left_a_list_item_is_refused(tmp_path):
    """The campaign's accepted cut: a block list cut inside an item, leaving `- train`."""
    path = tmp_path / "params.yaml"
    path.write_text("study: {name: cut}\nmatrix:\n  ptq:\n  - minmax\nquant:\n  degradations:\n    names:\n    - train")
    with pytest.raises(ParamsError, match=f"{path}:8: the file ends mid-line"):
        load_params(path)


def test_a_declared_file_cut_after_a_line_break_is_refused(tmp_path):
    """The smoke study declares its end marker: cut after any whole line, it is refused, though
    the lines left would be a valid (bigger!) study."""
    text = SMOKE.read_text()
    assert text.startswith(config.END_DECLARATION) and text.endswith(f"\n{config.END_MARKER}\n")
    length = text.index("matrix:")   # just `study: {name: smoke}` left: the whole base study
    path = _cut(tmp_path, SMOKE, length)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert f"{path}:{text[:length].count(chr(10))}: cut short" in str(err.value)
    assert load_params(SMOKE)["study"]["name"] == "smoke"   # intact: accepted


def test_a_cut_base_study_is_refused_naming_file_and_line(tmp_path, monkeypatch):
    data = (ROOT / "params.yaml").read_bytes()
    length = data.rindex(b"\n", 0, len(data) - 1) + 1   # its last line gone: a valid YAML file
    path = _cut(tmp_path, ROOT / "params.yaml", length)
    monkeypatch.setattr(config, "BASE_PARAMS", path)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    line = data[:length].count(b"\n")
    assert f"{path}:{line}: the base study sets every key" in str(err.value)
    assert "evaluate.threads" in str(err.value)


def test_invalid_yaml_and_a_key_without_its_value_name_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("study: {name: x}\nmatrix:\n  ptq: [minmax, dacal\n")
    with pytest.raises(ParamsError, match=f"{path}:4:1: not valid YAML"):
        check_params_file(path)
    path.write_text("study: {name: x}\nmatrix:\n")
    with pytest.raises(ParamsError, match=f"{path}:2: matrix: None is not of type 'object'"):
        load_params(path)
    path.write_text("study: {name: x}\nmatrix:\n  ptq: [minmax, dac]\n")
    with pytest.raises(ParamsError, match=f"{path}:3: matrix.ptq: unknown method 'dac'"):
        load_params(path)


def test_compose_declares_its_end(tmp_path):
    from quantdet.cli import main

    out = tmp_path / "params.yaml"
    assert main(["compose", str(SMOKE), "--out", str(out)]) == 0
    assert out.read_text().endswith(f"\n{config.END_MARKER}\n")
    assert load_params(out) == load_params(SMOKE)
    out.write_text(out.read_text()[: -len(config.END_MARKER) - 1])
    with pytest.raises(ParamsError, match="cut short"):
        load_params(out)


def test_snakemake_refuses_a_cut_params_file_before_its_own_parse(tmp_path):
    (tmp_path / "params.yaml").write_bytes(SMOKE.read_bytes()[:300])
    bin_dir = Path(sys.executable).parent
    run = subprocess.run([str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--cores", "1"], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert run.returncode != 0
    line = SMOKE.read_bytes()[:300].count(b"\n") + 1
    assert f"params.yaml:{line}: the file ends mid-line" in run.stdout + run.stderr
