"""The peer quantizers (methods/ort_static.py, nncf_peer.py, modelopt_peer.py) on a tiny FP32
ONNX model: each writes a QDQ model with int8 weight initializers that onnxruntime loads and
whose outputs stay near the FP32 model's; the registry lists them without importing their tools."""
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import quantdet
import torch

from quantdet import detectors
from quantdet.export.onnx_export import export_onnx
from quantdet.export.runner import OrtDetector
from quantdet.methods import get_method
from tests.quant_models import tiny_model


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("peer") / "fp32.onnx"
    export_onnx(tiny_model(), path, 32, 17)
    return path


def _calibration():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(4, 3, 32, 32, generator=generator) for _ in range(3)]


MODELOPT = pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                              reason="nvidia-modelopt is not installed (requirements.lock has it)")


ULTRALYTICS = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                 reason="ultralytics is not installed (requirements.lock has it)")


# ModelOpt patches onnxruntime's quantizer when imported (modelopt.onnx's ort_patching): the
# peers that call onnxruntime's quantize_static run before it here (each job is its own process)
@pytest.mark.parametrize("peer", ["ort_minmax", pytest.param("ultralytics_onnx", marks=ULTRALYTICS),
                                  "nncf", "nncf_mixed", pytest.param("modelopt", marks=MODELOPT)])
def test_a_peer_writes_a_qdq_model_with_int8_weights_onnxruntime_runs(fp32_onnx, tmp_path, peer):
    method = get_method("peer", peer)
    out = tmp_path / f"{peer}.onnx"
    before = hashlib.sha256(fp32_onnx.read_bytes()).hexdigest()
    settings = method.quantize_onnx(fp32_onnx, out, iter(_calibration()), {})
    assert hashlib.sha256(fp32_onnx.read_bytes()).hexdigest() == before  # its input left as it was
    json.dumps(settings)  # the peer stage writes them to its summary
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 6
    quantized_convs = [c for c in convs if c.input[1] in producers]
    for conv in quantized_convs:  # a quantized conv's weight: an int8 initializer behind a DequantizeLinear
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
    # ModelOpt places QDQ where TensorRT fuses them: on this toy it leaves the conv after the
    # max-pool and the two prediction convs (after an Add) in FP32; on our detector, none
    assert len(quantized_convs) == (3 if peer == "modelopt" else 6)
    # the peer stage stores its weights as ours are on this CPU (uint8 where int8 kernels saturate)
    from quantdet.export.onnx_export import weight_type
    from quantdet.stages.quantize import _peer_weight_type

    record = _peer_weight_type(out, "auto")
    assert record["type"] == weight_type("auto")[0]
    assert record["unsigned"] == (len(quantized_convs) if record["type"] == "uint8" else 0)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for fp32, quantized in zip(OrtDetector(fp32_onnx)(x), OrtDetector(out)(x)):
        assert fp32.shape == quantized.shape
        scale = float(fp32.abs().max())
        assert float((fp32 - quantized).abs().max()) < 0.1 * scale + 1e-3


def test_the_nncf_peers_record_the_tool_version_and_preset(fp32_onnx, tmp_path):
    import nncf

    default = get_method("peer", "nncf").quantize_onnx(fp32_onnx, tmp_path / "a.onnx", iter(_calibration()), {})
    mixed = get_method("peer", "nncf_mixed").quantize_onnx(fp32_onnx, tmp_path / "b.onnx", iter(_calibration()), {})
    assert default["tool"] == mixed["tool"] == "nncf" and default["version"] == nncf.__version__
    assert default["preset"].startswith("default") and mixed["preset"] == "mixed"
    assert default["calibration_items"] == 12  # one per image, every image
    # performance: symmetric activations (zero points 0 or 128 depending on sign); mixed: asymmetric
    zero_points = []
    for path in (tmp_path / "a.onnx", tmp_path / "b.onnx"):
        proto = onnx.load(str(path))
        values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        zero_points.append({int(np.asarray(values[n.input[2]]).ravel()[0]) for n in proto.graph.node
                            if n.op_type == "QuantizeLinear" and len(n.input) > 2})
    assert zero_points[0] <= {0, 128} and not zero_points[1] <= {0, 128}


@MODELOPT
def test_the_modelopt_peer_records_its_settings(fp32_onnx, tmp_path):
    from importlib.metadata import version

    settings = get_method("peer", "modelopt").quantize_onnx(fp32_onnx, tmp_path / "m.onnx",
                                                           iter(_calibration()), {})
    assert settings["version"] == version("nvidia-modelopt") and settings["calibration_images"] == 12
    assert settings["quantize_mode"] == "int8" and settings["calibration_eps"] == ["cpu"]


def test_listing_the_peers_imports_none_of_their_tools():
    code = ("import sys; from quantdet.methods import names; p = names('peer'); "
            "assert {'ort_minmax', 'nncf', 'nncf_mixed', 'modelopt', 'pt2e'} <= set(p), p; "
            "tools = ('nncf', 'modelopt', 'torchao', 'torch'); "
            "assert not any(t in sys.modules for t in tools), [t for t in tools if t in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)


def _small_detector(path):
    """(smoke params, the smoke study's student untrained, its input size), the model saved at
    `path` as the pretrain stage saves it: what the peers that quantize the PyTorch model read."""
    from quantdet import stages
    from quantdet.config import load_params
    from quantdet.models.io import save_model
    from tests.conftest import SMOKE

    params = load_params(SMOKE)
    size = params["models"]["input_size"]
    torch.manual_seed(0)
    detector = stages.detector_config(params, "student", 3)
    model = detectors.build(detector).eval()
    save_model(path, model, kind="fp32", detector=detector, classes={}, extra={"stride": 4, "input_size": size})
    return params, model, size


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                    reason="torchao is not installed (requirements.lock has it)")
def test_the_pt2e_peer_exports_its_converted_model_to_qdq_onnx(tmp_path):
    """PT2E quantizes the FP32 PyTorch model (a small detector here, the study's own kind);
    its converted graph, exported to ONNX, is a QDQ model with int8 weights onnxruntime runs."""
    params, model, size = _small_detector(tmp_path / "fp32.pt")
    export_onnx(model, tmp_path / "fp32.onnx", size, 17)
    method = get_method("peer", "pt2e")
    assert method.source == "torch"
    batches = [torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    settings = method.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "pt2e.onnx", iter(batches), params,
                                    fp32_model=tmp_path / "fp32.pt")
    assert settings["quantizer"] == "X86InductorQuantizer" and settings["calibration_images"] == 8
    proto = onnx.load(str(tmp_path / "pt2e.onnx"))
    onnx.checker.check_model(proto)
    # no source paths in the file: its bytes must not depend on where the study was cloned
    raw = (tmp_path / "pt2e.onnx").read_bytes()
    assert str(Path(quantdet.__file__).parent).encode() not in raw and b"stack_trace" not in raw
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(producers[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    assert all(inits[producers[c.input[1]].input[0]].data_type == onnx.TensorProto.INT8 for c in convs)
    from quantdet.stages.quantize import _peer_weight_type

    _peer_weight_type(tmp_path / "pt2e.onnx", "auto")   # as the peer stage stores it on this CPU
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(9))
    for fp32, quantized in zip(OrtDetector(tmp_path / "fp32.onnx")(x), OrtDetector(tmp_path / "pt2e.onnx")(x)):
        assert fp32.shape == quantized.shape
        assert float((fp32 - quantized).abs().max()) < 0.1 * float(fp32.abs().max()) + 1e-2


LITERT = pytest.mark.skipif(__import__("quantdet.export.litert", fromlist=["x"]).unavailable() is not None,
                            reason="LiteRT's converter environment is not installed (make venv-litert)")


@LITERT
def test_the_litert_peer_writes_a_full_integer_tflite_model_litert_runs(tmp_path):
    """LiteRT's PT2E INT8 of a small detector (the study's own kind), converted in .venv-litert:
    a .tflite model whose convolutions take int8 inputs, which LiteRT runs at any batch, with
    outputs within a few of their quantization steps of the FP32 model's."""
    from quantdet.export import litert

    params, model, size = _small_detector(tmp_path / "fp32.pt")
    method = get_method("peer", "litert")
    assert method.source == "torch" and method.runtime == "litert" and method.unavailable() is None
    batches = [torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    settings = method.quantize_tflite(tmp_path / "fp32.pt", tmp_path / "int8.tflite", tmp_path / "fp32.tflite",
                                      iter(batches), params)
    json.dumps(settings)
    assert settings["calibration_images"] == 8 and settings["tool"] == "litert-torch"
    ops = litert.op_summary(tmp_path / "int8.tflite")
    assert ops["convolutions_by_input_type"].get("int8", 0) > 0
    assert set(ops["convolutions_by_input_type"]) == {"int8"}, ops   # every conv on an integer kernel
    assert set(litert.op_summary(tmp_path / "fp32.tflite")["convolutions_by_input_type"]) == {"float32"}
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        reference = model(x)
    fp32 = litert.LiteRTDetector(tmp_path / "fp32.tflite")(x)
    int8 = litert.LiteRTDetector(tmp_path / "int8.tflite")
    one = [int8(x[i:i + 1]) for i in range(3)]     # one image at a time, or three in one call: the same
    for k, (ref, f, q) in enumerate(zip(reference, fp32, int8(x))):
        assert ref.shape == f.shape == q.shape
        assert torch.allclose(ref, f, atol=1e-3, rtol=1e-3)
        assert torch.equal(q, torch.cat([o[k] for o in one]))
        assert float((ref - q).abs().max()) < 0.1 * float(ref.abs().max()) + 1e-2


def test_a_litert_peer_is_evaluated_in_litert_and_refused_without_its_converter(monkeypatch, tmp_path):
    """The litert peer's models are named -lrt, run from their .tflite file and stand with the
    deployed models; without the converter environment `validate` refuses it, naming how to
    install it."""
    from quantdet import study
    from quantdet.config import load_params, validate_params
    from quantdet.errors import ParamsError
    from quantdet.export import litert
    from tests.conftest import SMOKE

    params = load_params(SMOKE)
    params["matrix"]["peer"] = ["litert"]
    monkeypatch.setenv(litert.ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(ParamsError, match=r"matrix\.peer: litert cannot run here: .*make venv-litert"):
        validate_params(params, source="params.yaml")
    name = study.parse_model_name("student-peer-litert-w8a8-lrt")
    assert name.runtime == "litert" and name.compared_as == "onnxruntime" and name.deployed == name.name
    assert study.evaluated_file(name) == study.tflite_file("student-peer-litert-w8a8")
    assert study.peer_evaluations("student-peer-litert-w8a8", ["onnxruntime", "openvino"]) == [name.name]
    assert study.peer_evaluations("student-peer-nncf-w8a8", ["onnxruntime"]) == ["student-peer-nncf-w8a8-ort"]


@ULTRALYTICS
def test_the_ultralytics_openvino_peer_runs_its_nncf_call_with_its_ignored_scope(tmp_path, monkeypatch):
    """Ultralytics' OpenVINO INT8 recipe on a YOLO network: its ignored scope, by its own rule on
    its own OpenVINO conversion, is the Detect head's own operators (decode, DFL), none of which
    quantdet's network holds; NNCF's mixed preset (asymmetric activations) on every convolution."""
    from quantdet import stages
    from quantdet.config import load_params
    from quantdet.methods.ultralytics_openvino_peer import ultralytics_ignored_scope
    from quantdet.models.io import save_model
    from tests.conftest import SMOKE

    monkeypatch.chdir(tmp_path)   # Ultralytics' settings: results/.ultralytics here
    params = load_params(SMOKE)
    params["models"]["student"] = {"detector": "yolo", "arch": "yolov8n.yaml"}
    size = params["models"]["input_size"]
    torch.manual_seed(0)
    detector = stages.detector_config(params, "student", 3)
    model = detectors.build(detector).eval()
    save_model(tmp_path / "fp32.pt", model, kind="fp32", detector=detector, classes={},
               extra={"stride": model.stride, "input_size": size})
    export_onnx(model, tmp_path / "fp32.onnx", size, 17)

    scope = ultralytics_ignored_scope(model, size)
    assert scope["head"] == "model.22" and scope["outside"] and not scope["body_sigmoids"]
    assert any(".dfl" in name for name in scope["outside"])

    method = get_method("peer", "ultralytics_openvino")
    assert method.source == "torch" and method.detectors == ("yolo",)
    batches = [torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    settings = method.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "ov.onnx", iter(batches), params,
                                    fp32_model=tmp_path / "fp32.pt")
    assert settings["preset"] == "mixed" and settings["calibration_items"] == 8
    assert settings["ignored_outside_network"] == len(scope["outside"]) and settings["ignored_in_network"] == []
    proto = onnx.load(str(tmp_path / "ov.onnx"))
    onnx.checker.check_model(proto)
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(producers[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    values = {n: onnx.numpy_helper.to_array(i) for n, i in inits.items()}
    zero_points = {int(np.asarray(values[n.input[2]]).ravel()[0]) for n in proto.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    assert not zero_points <= {0, 128}   # mixed: asymmetric activations
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    for fp32, quantized in zip(OrtDetector(tmp_path / "fp32.onnx")(x), OrtDetector(tmp_path / "ov.onnx")(x)):
        assert fp32.shape == quantized.shape
        assert float((fp32 - quantized).abs().max()) < 0.1 * float(fp32.abs().max()) + 1e-2


def test_a_body_sigmoid_the_recipe_keeps_in_float_is_found_in_the_onnx_graph_or_refused(tmp_path):
    from quantdet.methods.ultralytics_openvino_peer import _scope_path, onnx_sigmoids

    assert _scope_path("/model.4/m.0/cv1/act/Sigmoid") == "model.4.m.0.cv1.act"   # a YOLO body's names
    assert _scope_path("/cv2.0/cv2.0.0/act/Sigmoid") == "cv2.0.0.act"

    class Gate(torch.nn.Module):   # a block that calls sigmoid itself (SiLU would be Swish in OpenVINO)
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y * torch.sigmoid(y)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), Gate())

        def forward(self, x):
            return self.model(x)

    path = tmp_path / "gate.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17)
    assert onnx_sigmoids(path, ["model.1"]) == ["/model/model.1/Sigmoid"]
    with pytest.raises(ValueError, match=r"keeps the Sigmoid of model\.0 in float; the ONNX graph has 0"):
        onnx_sigmoids(path, ["model.0"])


def test_the_qat_subset_written_for_ultralytics_is_our_qat_subset_with_the_same_boxes(tmp_path):
    """Ultralytics' QAT trains on the images quantdet's QAT draws (SeededSubset, the same seed),
    and its label files hold the prepared split's boxes and classes."""
    from quantdet.data.dataset import DetectionDataset, SeededSubset
    from quantdet.data.prepare import prepare_dataset
    from quantdet.data.yolo import read_label_file
    from quantdet.methods.ultralytics_qat_peer import write_yolo_subset
    from tests.test_data_prepare import shrunk_params

    prepare_dataset(shrunk_params(), tmp_path / "prepared")
    split = tmp_path / "prepared" / "train"
    dataset = DetectionDataset(split, 32)
    written = write_yolo_subset(split, tmp_path / "yolo", 5, seed=3)
    assert written["images"] == 5 and written["names"] == dict(enumerate(dataset.class_names))
    chosen = SeededSubset(dataset, 5, 3).indices
    files = sorted((tmp_path / "yolo" / "images" / "train").iterdir())
    assert [int(f.stem) for f in files] == list(chosen)
    objects = 0
    for index, image in zip(chosen, files):
        info = dataset.images[index]
        assert image.resolve() == (split / "images" / info["file_name"]).resolve()
        label = tmp_path / "yolo" / "labels" / "train" / f"{image.stem}.txt"
        boxes, labels = dataset.targets[index]
        read = list(read_label_file(label, written["names"], info["width"], info["height"]))
        assert [c for c, _ in read] == labels.tolist()
        corners = [[x, y, x + w, y + h] for _, (x, y, w, h) in read]
        np.testing.assert_allclose(np.reshape(corners, (-1, 4)), boxes, atol=1e-3 * max(info["width"], info["height"]))
        objects += len(labels)
    assert written["objects"] == objects > 0
    data = __import__("yaml").safe_load(written["data_yaml"].read_text())
    assert data["train"] == "images/train" and data["names"] == written["names"]


@ULTRALYTICS
@MODELOPT
@pytest.mark.slow
def test_the_ultralytics_qat_peer_trains_with_ultralytics_and_exports_modelopt_qdq(tmp_path, monkeypatch):
    """Ultralytics' QAT (yolo train quantize=8) from the FP32 model, on the QAT budget: a QDQ
    model whose convolutions take quantized inputs and weights, with the head's output
    convolutions in float (Ultralytics' rule); its record says what each runtime executed
    (onnxruntime forms no QLinearConv without an output quantizer; OpenVINO runs int8)."""
    from quantdet import stages
    from quantdet.config import load_params
    from quantdet.data.prepare import prepare_dataset
    from quantdet.models.io import save_model
    from tests.conftest import SMOKE
    from tests.test_data_prepare import shrunk_params

    monkeypatch.chdir(tmp_path)   # Ultralytics' settings: results/.ultralytics here
    prepare_dataset(shrunk_params(embedded={"num_train": 24, "num_val": 4}), tmp_path / "data" / "prepared")
    params = load_params(SMOKE)
    params["models"]["student"] = {"detector": "yolo", "arch": "yolov8n.yaml"}
    params["quant"]["qat"].update(images=16, epochs=1, batch_size=8)
    size = params["models"]["input_size"]
    classes = len(json.loads((tmp_path / "data/prepared/train/annotations.json").read_text())["categories"])
    torch.manual_seed(0)
    detector = stages.detector_config(params, "student", classes)
    model = detectors.build(detector).eval()
    save_model(tmp_path / "fp32.pt", model, kind="fp32", detector=detector, classes={},
               extra={"stride": model.stride, "input_size": size})
    export_onnx(model, tmp_path / "fp32.onnx", size, 17)

    method = get_method("peer", "ultralytics_qat")
    assert method.source == "torch" and method.detectors == ("yolo",) and method.unavailable() is None
    assert "its own training loader" in method.calibration   # it reads no batch of the study's set
    assert all(get_method("peer", p).calibration is None for p in ("ort_minmax", "nncf", "pt2e", "ultralytics_onnx"))
    settings = method.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "qat.onnx", None, params,
                                    fp32_model=tmp_path / "fp32.pt")
    assert settings["train_images"] == 16 and settings["train_arguments"]["quantize"] == 8
    assert settings["train_arguments"]["epochs"] == 1 and settings["train_arguments"]["batch"] == 8
    assert settings["enabled"] > 0 and settings["disabled"] > 0
    proto = onnx.load(str(tmp_path / "qat.onnx"))
    onnx.checker.check_model(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    quantized = [c for c in convs if producers.get(c.input[1]) is not None
                 and producers[c.input[1]].op_type == "DequantizeLinear"]
    # every convolution but the head's 6 bare output convolutions (box and class, 3 levels)
    assert sorted(c.name for c in convs if c not in quantized) == sorted(
        f"/{branch}.{level}/{branch}.{level}.2/Conv" for branch in ("cv2", "cv3") for level in range(3))
    assert all(producers[c.input[0]].op_type == "DequantizeLinear" for c in quantized)
    inits = {i.name: i for i in proto.graph.initializer}   # weights stored as the integers they quantize to
    assert all(inits[producers[c.input[1]].input[0]].data_type == onnx.TensorProto.INT8 for c in quantized)
    assert settings["integer_weights"] == len(quantized)
    assert settings["executed"]["onnxruntime"]["convolutions_by_precision"] == {"fp32": len(convs)}
    assert settings["executed"]["openvino"]["convolutions_by_precision"].get("u8", 0) > 0
    assert not (tmp_path / "runs").exists()   # Ultralytics trained in a temporary folder
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    for fp32, qat in zip(OrtDetector(tmp_path / "fp32.onnx")(x), OrtDetector(tmp_path / "qat.onnx")(x)):
        assert fp32.shape == qat.shape


@ULTRALYTICS
@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolo26n.yaml"])
def test_a_qat_checkpoint_is_read_through_the_branch_the_study_reads(tmp_path, monkeypatch, arch):
    """Ultralytics' fuse() keeps one branch of an end-to-end head (YOLO26): the one its
    `end2end` flag selects, off in a loaded checkpoint. qat_network keeps the branch quantdet
    decodes (one-to-one, without NMS), so the QAT network's outputs are the FP32 network's
    outputs of that branch (BatchNorm folded), not the other branch's."""
    from quantdet.detectors.yolo import _detection_model
    from quantdet.methods.ultralytics_qat_peer import qat_network

    monkeypatch.chdir(tmp_path)
    family = detectors.get("yolo")
    config = family.config({"detector": "yolo", "arch": arch, "pretrained": False}, 3)
    torch.manual_seed(0)
    network = detectors.build(config).eval()
    with torch.no_grad():   # the two branches start as copies: make them differ, and BN non-trivial
        for name, value in network.named_parameters():
            if "one2one" in name:
                value.add_(0.2 * torch.randn_like(value))
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 2.0)
    detection = _detection_model(config["yaml"]).float()
    detection.load_state_dict(network.state_dict(), strict=True)
    torch.save({"model": detection, "train_args": {"task": "detect", "imgsz": 64}}, tmp_path / "last.pt")
    read = qat_network(tmp_path / "last.pt", config)
    assert read.end2end == config["end2end"] == (arch == "yolo26n.yaml")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = network(x), read(x)
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
