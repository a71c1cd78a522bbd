"""LiteRT's own post-training INT8 (litert-torch's PT2E recipe) as a peer: what an edge or phone
deployment runs, and the successor of the TFLite post-training quantizer of the TFLite study
among the project's sources (yolov3-tiny, -0.05 mAP on VOC2007).

It quantizes the FP32 PyTorch model (the file the ONNX export was made from) on the same
calibration images as the other peers, converted to a full-integer `.tflite` model (int8
weights per channel, int8 activations per tensor), and is deployed in LiteRT's own runtime
(ai-edge-litert's interpreter, XNNPACK): its model names end in -lrt, and its latency is against
the FP32 model converted by the same tool, timed in the same runtime. Converting runs in
.venv-litert (`make venv-litert`; quantdet.export.litert). Any detector family whose network
torch.export can trace."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod


@register_method
class LiteRT(PeerMethod):
    name = "litert"
    source = "torch"
    runtime = "litert"
    description = ("peer: LiteRT's PT2E INT8 (litert-torch PT2EQuantizer, symmetric per-channel int8 "
                   "weights, per-tensor int8 activations), a full-integer .tflite run in LiteRT")

    def unavailable(self):
        from quantdet.export.litert import unavailable

        return unavailable()

    def quantize_tflite(self, fp32_model, out, fp32_out, calibration, params: dict) -> dict:
        """Write the INT8 model to `out` and the FP32 conversion to `fp32_out` (the latency
        baseline), calibrating on `calibration` (float image batches); return the settings."""
        import numpy as np

        from quantdet.export.litert import convert

        images = np.concatenate([batch.float().numpy() for batch in calibration])
        return convert(fp32_model, images, fp32_out, out)
