"""Corrupted copies of a split: all 19 corruptions, reproducible, lossless, atomic."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from quantdet.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS, HELDOUT_CORRUPTIONS, corrupt_split
from quantdet.errors import DataError, ParamsError

PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())


@pytest.fixture
def split(tmp_path):
    """A non-square RGB JPEG and a grayscale PNG, with annotations."""
    directory = tmp_path / "val"
    (directory / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(directory / "images" / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(directory / "images" / "b.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 48, "height": 40},
                   {"id": 2, "file_name": "b.png", "width": 36, "height": 36}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (directory / "annotations.json").write_text(json.dumps(coco))
    return directory


def test_names_follow_params_and_the_benchmark():
    assert list(BENCHMARK_CORRUPTIONS) == PARAMS["corruptions"]["names"]
    assert HELDOUT_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_writes_a_split(split, tmp_path, corruption, severity):
    out = tmp_path / f"{corruption}-{severity}"
    summary = corrupt_split(split, corruption, severity, seed=0, out_dir=out)
    assert summary["images"] == 2
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.png"]
    assert coco["annotations"] == json.loads((split / "annotations.json").read_text())["annotations"]
    for info in coco["images"]:
        with Image.open(out / "images" / info["file_name"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (info["width"], info["height"]))


def test_reproducible_and_seed_dependent(split, tmp_path):
    for name, seed in (("one", 0), ("two", 0), ("other", 1)):
        corrupt_split(split, "glass_blur", 2, seed, tmp_path / name)
        corrupt_split(split, "shot_noise", 3, seed, tmp_path / f"{name}-shot")
    for suffix in ("", "-shot"):
        one, two, other = (image_bytes(tmp_path / f"{name}{suffix}") for name in ("one", "two", "other"))
        assert one == two
        assert one != other


def image_bytes(split_dir):
    return [path.read_bytes() for path in sorted((split_dir / "images").iterdir())]


def test_seed_per_image_does_not_depend_on_order(split, tmp_path):
    corrupt_split(split, "gaussian_noise", 2, 0, tmp_path / "both")
    coco = json.loads((split / "annotations.json").read_text())
    coco["images"] = coco["images"][::-1]
    (split / "annotations.json").write_text(json.dumps(coco))
    corrupt_split(split, "gaussian_noise", 2, 0, tmp_path / "reversed")
    for name in ("a.png", "b.png"):
        assert (tmp_path / "both/images" / name).read_bytes() == (tmp_path / "reversed/images" / name).read_bytes()


@pytest.mark.parametrize("corruption, severity, message", [
    ("rain", 1, "corruption 'rain' is unknown"),
    ("fog", 0, "severity 0 of corruption 'fog'"),
    ("fog", 6, "severity 6 of corruption 'fog'"),
])
def test_bad_condition_is_a_params_error(split, tmp_path, corruption, severity, message):
    with pytest.raises(ParamsError, match=message):
        corrupt_split(split, corruption, severity, 0, tmp_path / "out")


def test_small_image_fails_without_output(split, tmp_path):
    Image.fromarray(np.zeros((20, 36, 3), np.uint8)).save(split / "images" / "b.png")
    with pytest.raises(DataError, match=r"b\.png: image is 36x20; corruptions need at least 32 px"):
        corrupt_split(split, "fog", 1, 0, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]


def test_import_stays_light():
    code = "import sys, quantdet.corruptions; print(sorted({'torch', 'imagecorruptions', 'cv2'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_condition_draws_its_own_images_from_the_split(split, tmp_path):
    """corruptions.images: each (corruption, severity) holds a seeded draw of the split's images,
    different between conditions, the same on every run; its annotations follow the images."""
    from quantdet.corruptions.corrupted_split import condition_images

    ids = list(range(1, 241))
    draws = {(c, s): condition_images(ids, 0, c, s, 32) for c in ("fog", "snow") for s in (1, 2)}
    assert all(len(d) == 32 and d == sorted(set(d)) and set(d) <= set(ids) for d in draws.values())
    assert len({tuple(d) for d in draws.values()}) == 4
    assert condition_images(ids, 0, "fog", 1, 32) == draws[("fog", 1)]
    assert condition_images(ids, 1, "fog", 1, 32) != draws[("fog", 1)]
    assert condition_images(ids, 0, "fog", 1, None) == ids == condition_images(ids, 0, "fog", 1, 500)
    summary = corrupt_split(split, "fog", 1, seed=0, out_dir=tmp_path / "one", images=1)
    coco = json.loads((tmp_path / "one" / "annotations.json").read_text())
    kept = {i["id"] for i in coco["images"]}
    assert summary["images"] == 1 and kept == set(condition_images([1, 2], 0, "fog", 1, 1))
    assert all(a["image_id"] in kept for a in coco["annotations"])
    assert len(list((tmp_path / "one" / "images").iterdir())) == 1
