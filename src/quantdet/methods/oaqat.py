"""Outlier-aware QAT (QuantDemoire): the largest-|w| weights of each layer kept in FP16 outside
the grid (side paths in the export), error-minimizing (MSE) activation ranges kept fixed, and a
quantization-error loss on the outlier channels of each activation."""
from contextlib import contextmanager
from pathlib import Path

from quantdet.methods import register_method
from quantdet.methods.base import QATMethod
from quantdet.quant.recipe import QATRecipe


@register_method
class OutlierAwareQAT(QATMethod):
    name = "oaqat"
    reads = ("quant.qat.outlier",)
    # Ranges that minimize the quantization error on sampled calibration values, kept fixed:
    # tracking them by EMA min/max or percentiles would replace the error-minimizing clipping
    # by another rule; the error-aware loss instead moves the outlier channels' activations
    # back onto the fixed grid.
    recipe = QATRecipe("oaqat", "mse", None, False, False,
                       "outlier-aware QAT (QuantDemoire): largest-|w| weights kept in FP16 outside "
                       "the grid, error-minimizing (MSE) activation ranges, quantization-error loss "
                       "on outlier channels", outlier_aware=True)
    description = recipe.description

    def training(self, job, recipe):
        """The default fine-tuning, each step's change of an output channel's weights capped
        (quant.qat.outlier.max_update): the term measures activations against fixed ranges, and
        an uncapped Adam step moves the smallest folded channels out of them."""
        args, degradations = super().training(job, recipe)
        return {**args, "max_update": job.params["quant"]["qat"]["outlier"]["max_update"]}, degradations

    def extra_loss(self, job, qmodel):
        from quantdet.quant.outlier import QuantErrorLoss

        return QuantErrorLoss(qmodel, job.params["quant"]["qat"]["outlier"]["loss_weight"])

    @contextmanager
    def export_variants(self, torch_model, out, payload, export_params):
        """The ONNX exports with the outliers dropped ("plain": also without the 8-bit output
        requantization; "no_side_paths": with it), in a temporary folder, as paths with
        their file sizes: what the FP16 side paths cost."""
        import tempfile

        from quantdet.export.onnx_export import export_onnx
        from quantdet.quant.outlier import outlier_layers, side_paths_disabled

        layers = [m for m in outlier_layers(torch_model) if m.has_outliers]
        if not layers:
            yield None
            return
        outliers = sum(int(m.outlier_mask.sum()) for m in layers)
        variants = {}
        with tempfile.TemporaryDirectory() as tmp:
            for key, keep in (("plain", False), ("no_side_paths", True)):
                path = Path(tmp) / f"{key}-{Path(out).name}"
                with side_paths_disabled(torch_model, keep_output_quant=keep):
                    export_onnx(torch_model, path, payload["input_size"], export_params["opset"],
                                weights=export_params.get("weight_type", "auto"))
                variants[key] = {"path": path, "size_bytes": path.stat().st_size,
                                 "outliers": outliers}
            yield variants

    def export_summary(self, variants, latency, graph, out):
        return {"outlier_side_paths": {
            **graph.get("side_paths", {}), "weights_kept_fp16": variants["plain"]["outliers"],
            "extra_bytes": Path(out).stat().st_size - variants["plain"]["size_bytes"],
            "size_bytes_without": variants["plain"]["size_bytes"],
            "latency_ms_with": latency["int8_onnx"],
            "latency_ms_without": latency["int8_onnx_plain"],
            "latency_ms_without_side_paths_only": latency["int8_onnx_no_side_paths"],
            "note": "without = the same model with its outlier weights dropped: no side "
                    "paths and no 8-bit output requantization (plain QDQ export); "
                    "without_side_paths_only keeps the 8-bit requantization"}}
