"""OpenVINO NNCF's post-training quantizer (`nncf.quantize`), run on the FP32 ONNX export with
NNCF's ONNX backend: what an OpenVINO user runs. Its defaults otherwise: target device ANY,
fast bias correction, activation ranges the mean over calibration images of each image's
min/max, per-channel symmetric int8 weights; weights stored as int8 initializers, QDQ nodes
that onnxruntime runs. Two presets: `performance` (NNCF's default for a CNN: symmetric
activations too) and `mixed` (asymmetric activations). The same calibration images and
preprocessing as the onnxruntime peers (`base.onnx_feeds`), fed one image per item as NNCF
recommends, every image used (subset_size = their number). A peer baseline: evaluated
deployed only."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod, onnx_feeds


class _NNCF(PeerMethod):
    preset = ""        # "" for nncf.quantize's default (None), else a QuantizationPreset name

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        import nncf
        import onnx
        from nncf.onnx.quantization.backend_parameters import is_weight_compression_needed

        feeds = list(onnx_feeds(fp32_onnx, calibration, per_image=True))
        model = onnx.load(str(fp32_onnx))
        preset = getattr(nncf.QuantizationPreset, self.preset) if self.preset else None
        quantized = nncf.quantize(model, nncf.Dataset(feeds), preset=preset, subset_size=len(feeds))
        onnx.save(quantized, str(out))
        return {"tool": "nncf", "version": nncf.__version__, "backend": "ONNX",
                "api": "nncf.quantize", "preset": self.preset.lower() if self.preset else
                "default (performance for a non-transformer model)",
                "target_device": "ANY", "fast_bias_correction": True,
                "calibration_items": len(feeds), "subset_size": len(feeds),
                "int8_weight_initializers": is_weight_compression_needed(None),
                "quant_format": "QDQ"}


@register_method
class NNCFDefault(_NNCF):
    name = "nncf"
    description = ("peer: OpenVINO NNCF nncf.quantize (ONNX backend), default preset (performance: "
                   "symmetric int8 weights and activations), QDQ")


@register_method
class NNCFMixed(_NNCF):
    name = "nncf_mixed"
    preset = "MIXED"
    description = ("peer: OpenVINO NNCF nncf.quantize (ONNX backend), mixed preset (symmetric "
                   "weights, asymmetric activations), QDQ")
