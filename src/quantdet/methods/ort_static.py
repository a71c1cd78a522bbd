"""onnxruntime's own post-training quantizer (`onnxruntime.quantization.quantize_static`), the
one deployment engineers reach for first: QDQ format, per-channel int8 weights, uint8
activations (U8S8), calibrated on the study's calibration images with MinMax, Percentile
(its default 99.999) or Entropy. A peer baseline: it starts from our FP32 ONNX export and is
evaluated deployed only."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod, onnx_feeds


class _OrtStatic(PeerMethod):
    calibrate_method = ""

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)

        class Feeds(CalibrationDataReader):
            def __init__(self, feeds):
                self.feeds = feeds

            def get_next(self):
                return next(self.feeds, None)

        settings = {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
                    "weight_type": "QInt8", "calibrate_method": self.calibrate_method}
        quantize_static(str(fp32_onnx), str(out), Feeds(onnx_feeds(fp32_onnx, calibration)),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, self.calibrate_method))
        return settings


@register_method
class OrtMinMax(_OrtStatic):
    name = "ort_minmax"
    calibrate_method = "MinMax"
    description = "peer: onnxruntime quantize_static, QDQ per-channel U8S8, MinMax calibration"


@register_method
class OrtPercentile(_OrtStatic):
    name = "ort_percentile"
    calibrate_method = "Percentile"
    description = "peer: onnxruntime quantize_static, QDQ per-channel U8S8, Percentile (99.999) calibration"


@register_method
class OrtEntropy(_OrtStatic):
    name = "ort_entropy"
    calibrate_method = "Entropy"
    description = "peer: onnxruntime quantize_static, QDQ per-channel U8S8, Entropy calibration"
