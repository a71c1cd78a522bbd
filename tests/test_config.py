import pytest
import yaml

from quantdet.cli import main
from quantdet.config import load_params, validate_params
from quantdet.errors import ParamsError


def _write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_default_params_validate_and_defaults_fill_gaps(tmp_path):
    params = load_params("params.yaml")
    assert params["quant"]["ptq"]["percentile"] == 0.999
    minimal = validate_params({"models": {"teacher": {"backbone": "resnet18"},
                                          "student": {"backbone": "resnet10t"}}})
    assert minimal["corruptions"]["severities"] == [1, 2, 3, 4, 5]
    assert len(minimal["corruptions"]["names"]) == 15
    assert minimal["models"]["student"]["pretrained"] is False


@pytest.mark.parametrize("mutate,key", [
    (lambda p: p["quant"].update(bits=[9]), "quant.bits[0]"),
    (lambda p: p["corruptions"].update(names=["not_a_corruption"]), "corruptions.names[0]"),
    (lambda p: p["train"].update(lr=-1), "train.lr"),
    (lambda p: p["models"].update(input_size=100), "models.input_size"),
    (lambda p: p["data"].update(source="imagenet"), "data.source"),
    (lambda p: p.update(unknown_section={}), "(top level)"),
    (lambda p: p["quant"]["mixed"].update(sensitivity="hessian"), "quant.mixed.sensitivity"),
    (lambda p: p["quant"]["mixed"].update(budgets=[3], bit_choices=[4, 8]), "quant.mixed.budgets"),
])
def test_invalid_values_name_the_key(mutate, key):
    params = load_params("params.yaml")
    mutate(params)
    with pytest.raises(ParamsError) as err:
        validate_params(params, source="params.yaml")
    assert f"params.yaml: {key}" in str(err.value)


def test_coco_source_needs_its_paths():
    params = load_params("params.yaml")
    params["data"]["source"] = "coco"
    with pytest.raises(ParamsError, match="data.coco.train_annotations"):
        validate_params(params)


def test_a_heldout_corruption_cannot_also_be_a_benchmark_one():
    params = load_params("params.yaml")
    params["corruptions"]["heldout"] = ["gaussian_noise", "spatter"]
    with pytest.raises(ParamsError, match="corruptions.heldout: gaussian_noise"):
        validate_params(params)


def test_cli_reports_bad_params_without_a_traceback(tmp_path, capsys):
    params = yaml.safe_load(open("params.yaml"))
    params["evaluate"]["nms_iou"] = 2
    assert main(["validate", "--params", str(_write(tmp_path, params))]) == 2
    err = capsys.readouterr().err
    assert "evaluate.nms_iou" in err and "Traceback" not in err


def test_cli_reports_unreadable_params(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("study: [unclosed\n")
    assert main(["validate", "--params", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
