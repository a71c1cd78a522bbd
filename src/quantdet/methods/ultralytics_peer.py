"""Ultralytics' own INT8 for ONNX (`yolo export format=onnx quantize=8`): what a YOLO user gets
from the tool they already have. The exporter hands its FP32 ONNX graph to
`ultralytics.utils.export.onnx.onnx_int8_quantize`, which runs onnxruntime's `quantize_static`
with its defaults (QDQ, per-tensor int8 weights and activations, MinMax calibration) on the
Conv, Gemm and MatMul nodes only: every other node is left in float, so that the box decode
and the class scores never share one int8 scale.

This peer calls that same function, from the Ultralytics version installed, on the FP32 ONNX
graph quantdet exports of the same network, calibrated on the study's calibration images with
the preprocessing every peer sees (`base.onnx_feeds`). What differs from running `yolo export`:
the graph (quantdet's export leaves the box decode outside the network, where Ultralytics'
puts it inside and keeps it in float, so both quantize the same convolutions) and the
calibration images (`yolo export` draws them from the `data` yaml's split). The YOLO family
only: the recipe is Ultralytics', for its networks."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod, onnx_feeds

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


@register_method
class UltralyticsOnnx(PeerMethod):
    name = "ultralytics_onnx"
    detectors = ("yolo",)
    description = ("peer: Ultralytics' ONNX INT8 export recipe (its onnx_int8_quantize: onnxruntime "
                   "quantize_static, QDQ per-tensor S8S8, MinMax, Conv/Gemm/MatMul only)")

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        import onnx

        from quantdet.detectors.yolo import ultralytics_imported, ultralytics_version

        ultralytics_imported()
        from ultralytics.utils.export.onnx import onnx_int8_quantize

        graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
        input_name = graph.input[0].name
        kept_float = sum(node.op_type not in QUANTIZED_OPS for node in graph.node)
        feeds = [feed[input_name] for feed in onnx_feeds(fp32_onnx, calibration)]
        onnx_int8_quantize(str(fp32_onnx), str(out), feeds, lambda batch: batch, input_name=input_name)
        return {"tool": "ultralytics", "version": ultralytics_version(),
                "function": "ultralytics.utils.export.onnx.onnx_int8_quantize",
                "api": "onnxruntime.quantization.quantize_static (its defaults)",
                "quant_format": "QDQ", "per_channel": False, "activation_type": "QInt8",
                "weight_type": "QInt8", "calibrate_method": "MinMax",
                "quantized_op_types": list(QUANTIZED_OPS), "nodes_kept_float": kept_float,
                "calibration_batches": len(feeds)}
