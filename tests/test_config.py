import pytest
import yaml

from quantdet.cli import main
from quantdet.config import load_params, validate_params
from quantdet.errors import ParamsError


def _write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_params_file_is_an_overlay_on_the_base_study(tmp_path):
    """One set of defaults: the project's params.yaml; a study file holds what differs."""
    params = load_params("params.yaml")
    assert params["quant"]["ptq"]["percentile"] == 0.9999
    overlay = _write(tmp_path, {"models": {"teacher": {"backbone": "resnet18"}},
                                "matrix": {"bits": [4]}})
    merged = load_params(overlay)
    assert merged["models"]["teacher"]["backbone"] == "resnet18"
    assert merged["models"]["teacher"]["fpn_channels"] == params["models"]["teacher"]["fpn_channels"]
    assert merged["matrix"]["bits"] == [4] and merged["matrix"]["ptq"] == params["matrix"]["ptq"]
    assert merged["corruptions"] == params["corruptions"]


def test_the_schema_holds_no_defaults_of_its_own():
    from quantdet.config import load_schema

    def defaults(node):
        if isinstance(node, dict):
            return ("default" in node) + sum(defaults(v) for v in node.values())
        return sum(defaults(v) for v in node) if isinstance(node, list) else 0

    assert defaults(load_schema()) == 0


def test_compose_writes_a_complete_params_file(tmp_path):
    out = tmp_path / "params.yaml"
    assert main(["compose", "workflow/studies/local/distill_zeroshot.yaml", "--out", str(out)]) == 0
    composed = yaml.safe_load(out.read_text())
    assert composed == load_params("workflow/studies/local/distill_zeroshot.yaml")
    assert "zeroq" in composed["matrix"]["ptq"] and composed["train"] == load_params("params.yaml")["train"]


@pytest.mark.parametrize("mutate,key", [
    (lambda p: p["matrix"].update(bits=[9]), "matrix.bits[0]"),
    (lambda p: p["matrix"].update(ptq=["no_such_method"]), "matrix.ptq"),
    (lambda p: p["matrix"].update(qat=["fqn", "lsqq"]), "matrix.qat"),
    (lambda p: p["matrix"]["repeat"].update(qat=["lsq"]), "matrix.repeat.qat"),
    (lambda p: p["corruptions"].update(names=["not_a_corruption"]), "corruptions.names[0]"),
    (lambda p: p["train"].update(lr=-1), "train.lr"),
    (lambda p: p["models"].update(input_size=100), "models.input_size"),
    (lambda p: p["data"].update(source="imagenet"), "data.source"),
    (lambda p: p.update(unknown_section={}), "(top level)"),
    (lambda p: p["quant"]["mixed"].update(sensitivity="hessian"), "quant.mixed.sensitivity"),
    (lambda p: (p["matrix"].update(mixed=[3]), p["quant"]["mixed"].update(bit_choices=[4, 8])), "matrix.mixed"),
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


def test_yolo_source_needs_its_data_yaml():
    params = load_params("params.yaml")
    params["data"]["source"] = "yolo"
    with pytest.raises(ParamsError, match="params.yaml: data.yolo.data_yaml: required when data.source is yolo"):
        validate_params(params, source="params.yaml")
    params["data"]["yolo"]["data_yaml"] = "data/raw/shapes/data.yaml"
    validate_params(params)


@pytest.mark.parametrize("classes, valid", [
    ("auto", True), (["white_ring", "scratch"], True), ("Auto", False), ([], False), (["a", "a"], False),
])
def test_voc_classes_are_a_list_or_auto(classes, valid):
    params = load_params("params.yaml")
    params["data"]["voc"]["classes"] = classes
    if valid:
        assert validate_params(params)["data"]["voc"]["classes"] == classes
    else:
        with pytest.raises(ParamsError, match="data.voc.classes"):
            validate_params(params)


def test_voc_classes_default_to_the_20_voc_classes():
    from quantdet.data.voc import VOC_CLASSES

    assert validate_params({"models": {"teacher": {"backbone": "resnet18"}, "student": {"backbone": "resnet10t"}}}
                           )["data"]["voc"]["classes"] == list(VOC_CLASSES)
    assert load_params("params.yaml")["data"]["voc"]["classes"] == list(VOC_CLASSES)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_a_backbone_timm_does_not_know_is_refused_with_close_names(role):
    params = load_params("params.yaml")
    params["models"][role]["backbone"] = "resnet10x"
    with pytest.raises(ParamsError, match=rf"params.yaml: models.{role}.backbone: timm has no model 'resnet10x' "
                                          r"\(close names: resnet10t, "):
        validate_params(params, source="params.yaml", check_backbones=True)


def test_a_backbone_with_a_weights_tag_is_known():
    params = load_params("params.yaml")
    params["models"]["teacher"]["backbone"] = "resnet18d.ra2_in1k"
    validate_params(params, check_backbones=True)


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


def test_cli_validate_refuses_an_unknown_backbone(tmp_path, capsys):
    params = yaml.safe_load(open("params.yaml"))
    params["models"]["student"]["backbone"] = "resnet10x"
    assert main(["validate", "--params", str(_write(tmp_path, params))]) == 2
    err = capsys.readouterr().err
    assert "models.student.backbone: timm has no model 'resnet10x'" in err and "Traceback" not in err


def test_every_stage_prints_its_help(capsys):
    import argparse
    from quantdet.cli import _parser

    parser = _parser()
    stages = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"prepare", "evaluate", "intervals", "measured"} <= set(stages)
    for name in ["", *stages]:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"] if name else ["--help"])
        assert exit_.value.code == 0, name
    assert "95% intervals" in capsys.readouterr().out


def test_a_peer_of_yolo_alone_is_refused_for_another_detector():
    """Ultralytics' ONNX INT8 recipe serves the yolo family: listed for the CenterNet-style
    student it is refused naming the key; a YOLO student of the same study takes it."""
    params = load_params("params.yaml")
    params["matrix"]["peer"] = ["ultralytics_onnx"]
    with pytest.raises(ParamsError, match=r"params.yaml: matrix.peer: ultralytics_onnx cannot quantize the "
                                          r"student's detector \(centernet\): ultralytics_onnx serves the yolo "
                                          r"detector family only"):
        validate_params(params, source="params.yaml")
    params["matrix"]["peer"] = ["nncf"]
    params["models"]["students"]["yolo11n"]["matrix"]["peer"] = ["ultralytics_onnx"]
    assert validate_params(params)["models"]["students"]["yolo11n"]["matrix"]["peer"] == ["ultralytics_onnx"]
