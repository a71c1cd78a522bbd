"""Ultralytics' own INT8 for OpenVINO (`yolo export format=openvino int8=True`), the path most
Ultralytics users deploy on Intel CPUs. Its exporter (`ultralytics.utils.export.openvino
.torch2openvino`) converts the network with its decode to OpenVINO and calls

    nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED, ignored_scope=...)

with NNCF's other defaults, where the ignored scope is, by its own rule, every `Sigmoid`
operator and every operator of the Detect head's own forward (`<head>/...`) and of its DFL
(`<head>.dfl...`): the decode, its concatenations and the class sigmoid stay in float.

This peer runs that call on the network quantdet exports (decode outside), with NNCF's ONNX
backend, so that the model is an integer ONNX model evaluated and timed like every peer
(onnxruntime, and OpenVINO at f32). The ignored scope is Ultralytics' rule applied to
Ultralytics' own OpenVINO conversion of the same weights, then carried onto quantdet's graph:
Detect's own operators and its DFL are not in quantdet's network (their count is recorded);
a `Sigmoid` of the network's body (where a block calls it; SiLU becomes OpenVINO's Swish, not
a Sigmoid) is matched to quantdet's ONNX node of the same module, and one that cannot be
matched is an error, never skipped. What differs from `yolo export`: the backend (NNCF's ONNX
backend, not its OpenVINO one: the same algorithms on the same quantizer placement rules,
target device ANY) and the calibration images (the study's, one image per item like the
`nncf` peers, where `yolo export` reads its `data` yaml). The YOLO family only."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod, onnx_feeds


def _scope_path(node_name: str) -> str:
    """The module path of a torch.onnx node name: its scopes, less the operator's own name, each
    either a child's name (`/model.4/m.0/cv1/...`: `model.4.m.0.cv1`) or the child's path from
    the scope above (`/model/model.1/...`: `model.1`)."""
    path = ""
    for part in node_name.strip("/").split("/")[:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def ultralytics_ignored_scope(network, input_size: int) -> dict:
    """What `yolo export format=openvino int8=True` leaves in float, by Ultralytics' rule on its
    own conversion of `network` (a quantdet YoloNetwork): {"head": the Detect module's scope,
    "outside": the ignored operators that quantdet's network does not contain (Detect's own
    forward, its DFL), "body_sigmoids": the module paths of the ignored Sigmoids of the body}."""
    import torch

    from quantdet.detectors.yolo import _detection_model, ultralytics_imported

    ultralytics_imported()
    import openvino as ov

    detection = _detection_model(network.detector_config["yaml"]).eval()
    detection.model.load_state_dict(network.model.state_dict())
    head = detection.model[-1]
    head.export, head.format = True, "openvino"    # what Ultralytics' exporter sets
    image = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        traced = torch.jit.trace(detection, image, strict=False, check_trace=False)
    operations = ov.convert_model(traced, input=image.shape, example_input=image).get_ordered_ops()
    # torch2openvino's rule, as written there
    sigmoids = [op.get_friendly_name() for op in operations if op.get_type_name() == "Sigmoid"]
    scope = sigmoids[-1].split("/", 1)[0]
    ignored = [op.get_friendly_name() for op in operations
               if op.get_type_name() == "Sigmoid" or op.get_friendly_name().startswith((f"{scope}/", f"{scope}.dfl"))]
    outside = [n for n in ignored if n.startswith((f"{scope}/", f"{scope}.dfl"))]
    body = [n.split("/", 1)[0].removeprefix("__module.") for n in ignored if n not in outside]
    return {"head": scope.removeprefix("__module."), "outside": outside, "body_sigmoids": body}


def onnx_sigmoids(fp32_onnx, module_paths: list[str]) -> list[str]:
    """The FP32 ONNX graph's Sigmoid nodes of the named modules (one each), or ValueError naming
    the module whose Sigmoid the graph does not hold."""
    import onnx

    nodes = {}
    for node in onnx.load(str(fp32_onnx), load_external_data=False).graph.node:
        if node.op_type == "Sigmoid":
            nodes.setdefault(_scope_path(node.name), []).append(node.name)
    found = []
    for path in module_paths:
        match = nodes.get(path, [])
        if len(match) != 1:
            raise ValueError(f"{fp32_onnx}: Ultralytics' OpenVINO recipe keeps the Sigmoid of {path} in float; "
                             f"the ONNX graph has {len(match)} Sigmoid nodes of that module")
        found += match
    return found


@register_method
class UltralyticsOpenVINO(PeerMethod):
    name = "ultralytics_openvino"
    detectors = ("yolo",)
    source = "torch"     # its ignored scope comes from Ultralytics' conversion of the network
    description = ("peer: Ultralytics' OpenVINO INT8 export recipe (NNCF nncf.quantize, preset mixed, "
                   "its ignored scope), on NNCF's ONNX backend")

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        import nncf
        import onnx

        from quantdet.detectors.yolo import ultralytics_version
        from quantdet.models.io import load_model

        network, payload = load_model(fp32_model)
        scope = ultralytics_ignored_scope(network.eval(), int(payload["input_size"]))
        names = onnx_sigmoids(fp32_onnx, scope["body_sigmoids"])
        feeds = list(onnx_feeds(fp32_onnx, calibration, per_image=True))
        ignored = nncf.IgnoredScope(names=names, validate=True) if names else None
        quantized = nncf.quantize(onnx.load(str(fp32_onnx)), nncf.Dataset(feeds),
                                  preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignored)
        onnx.save(quantized, str(out))
        return {"tool": "ultralytics", "version": ultralytics_version(),
                "function": "ultralytics.utils.export.openvino.torch2openvino (quantize=8)",
                "api": "nncf.quantize", "nncf_version": nncf.__version__, "backend": "ONNX",
                "preset": "mixed", "target_device": "ANY", "subset_size": "default (300)",
                "calibration_items": len(feeds), "head": scope["head"],
                "ignored_outside_network": len(scope["outside"]),
                "ignored_in_network": names, "quant_format": "QDQ"}
