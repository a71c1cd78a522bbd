"""The zero-shot stages never read a real training image: every file they open or list is
recorded by an audit hook (we run as root, so making the split unreadable proves nothing)."""
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from quantdet import detectors
from quantdet import stages, study
from quantdet.config import load_params
from quantdet.data.dataset import DetectionDataset
from quantdet.models.io import save_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # prepares a dataset and runs five stages (~15 s of CPU)
_opened: list[str] | None = None


def _audit(event, args):
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            _opened.append(os.path.abspath(os.fsdecode(path)))


sys.addaudithook(_audit)  # audit hooks cannot be removed: inert while _opened is None


@contextmanager
def recorded_paths():
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def _under(paths, folder) -> list[str]:
    folder = os.path.abspath(folder)
    return [p for p in paths if p == folder or p.startswith(folder + os.sep)]


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    """Prepared smoke data and an (untrained) FP32 student in a fresh study directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUANTDET_TRACKING", "off")
    params = load_params(ROOT / "tests/smoke/params.yaml")
    z = params["quant"]["zeroshot"]
    z["zeroq"].update(images=4, batch_size=4, steps=2)
    z["gdfq"].update(images=4, iterations=2, batch_size=4)
    z["ait"].update(images_per_epoch=4, batch_size=4)
    params["quant"]["ptq"]["calib_batches"] = 1
    stages.prepare(params)
    train = DetectionDataset(f"{study.PREPARED}/train", params["models"]["input_size"])
    detector = stages.detector_config(params, "student", len(train.category_ids))
    save_model(study.model_file("student-fp32"), detectors.build(detector).eval(), kind="fp32",
               detector=detector, classes={"category_ids": train.category_ids, "names": train.class_names},
               extra={"stride": 4, "input_size": params["models"]["input_size"]})
    return params


def test_zero_shot_stages_never_read_the_training_images(study_dir):
    params = study_dir
    train, calib = f"{study.PREPARED}/train", f"{study.PREPARED}/calib"
    with recorded_paths() as generation:
        stages.zeroshot_data(params, "zeroq")
        stages.zeroshot_data(params, "gdfq")
    with recorded_paths() as quantization:
        stages.ptq(params, "student-ptq-zeroq-w8a8")
        stages.ptq(params, "student-ptq-gdfq-w8a8")
        stages.qat(params, "student-qat-ait-w8a8")

    assert not _under(generation, train) and not _under(generation, calib)
    # the generating stage reads val images only, for the real row of grid.png
    real = _under(generation, study.PREPARED)
    assert real and all(p.startswith(os.path.abspath(f"{study.PREPARED}/val")) for p in real)
    assert not _under(quantization, study.PREPARED)
    # the hook does see what the stages read: the generated images and the generator
    assert _under(quantization, f"{study.synthetic_dir('zeroq')}/images")
    assert _under(quantization, f"{study.synthetic_dir('gdfq')}/generator.pt")
    for generator in ("zeroq", "gdfq"):
        assert (Path(study.synthetic_dir(generator)) / "grid.png").stat().st_size > 1000
    assert Path(study.model_file("student-qat-ait-w8a8")).exists()
