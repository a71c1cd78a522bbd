"""NVIDIA TensorRT Model Optimizer's ONNX post-training quantizer
(`modelopt.onnx.quantization.quantize`, quantize_mode "int8"): what TensorRT users run on an ONNX
model before building an engine. Its int8 defaults: entropy calibration, symmetric int8
activations and per-channel int8 weights, QDQ placed where TensorRT fuses them. Two settings
differ from its defaults, both for a CPU run with onnxruntime: calibration on the CPU execution
provider only, and the unquantized rest kept in FP32 (`high_precision_dtype="fp32"`; its default
fp16 is for TensorRT, and the other peers keep FP32 too); weights are stored as int8
initializers (`dq_only`, the same numbers as its default Q→DQ pair on FP32 weights). The same
calibration images and preprocessing as the other ONNX peers (`base.onnx_feeds`), all of them.
A peer baseline: evaluated deployed only.

It needs `nvidia-modelopt` without its `[onnx]` extra (which pins onnx 1.21 and
onnxruntime-gpu 1.24, against the project's onnx and onnxruntime), plus the packages its ONNX
path imports (requirements.txt)."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod, onnx_feeds


@register_method
class ModelOpt(PeerMethod):
    name = "modelopt"
    description = ("peer: NVIDIA ModelOpt ONNX INT8 PTQ (modelopt.onnx.quantization.quantize), "
                   "entropy calibration, symmetric int8, QDQ as placed for TensorRT")

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        import shutil
        import tempfile
        from importlib.metadata import version
        from pathlib import Path

        import numpy as np
        from modelopt.onnx.quantization import quantize

        feeds = list(onnx_feeds(fp32_onnx, calibration))
        input_name = next(iter(feeds[0]))
        images = np.concatenate([feed[input_name] for feed in feeds])
        settings = {"tool": "nvidia-modelopt", "version": version("nvidia-modelopt"),
                    "api": "modelopt.onnx.quantization.quantize", "quantize_mode": "int8",
                    "calibration_method": "entropy", "calibration_eps": ["cpu"],
                    "high_precision_dtype": "fp32", "dq_only": True,
                    "calibration_images": int(len(images)), "quant_format": "QDQ"}
        with tempfile.TemporaryDirectory() as tmp:
            source, quantized = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            shutil.copy(fp32_onnx, source)  # it writes its shape-inferred model over its input
            quantize(str(source), quantize_mode="int8", calibration_data={input_name: images},
                     calibration_method="entropy", calibration_eps=["cpu"],
                     high_precision_dtype="fp32", dq_only=True, output_path=str(quantized),
                     log_level="WARNING")
            shutil.move(str(quantized), str(out))
        return settings
