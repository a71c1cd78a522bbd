"""PyTorch 2 Export (PT2E) post-training quantization with `X86InductorQuantizer`: the
PyTorch-native CPU int8 path (torch.export, prepare_pt2e, calibration, convert_pt2e; deployed
with torch.compile's inductor, which lowers the quantized graph to int8 kernels). In torch 2.14
it lives in torchao (`torchao.quantization.pt2e`), no longer in torch.ao.quantization.

It quantizes the FP32 PyTorch model (the file the ONNX export was made from), with the
quantizer's default config: static, per-channel symmetric int8 weights, per-tensor asymmetric
uint8 activations, where the x86 inductor backend fuses them. Calibrated on the same batches
as the other peers. To be evaluated like them, its converted graph is exported to ONNX with
the torch.export-based exporter (`torch.onnx.export(dynamo=True)`): QDQ nodes on int8 weights,
which onnxruntime runs. A peer baseline: evaluated deployed only (onnxruntime, not inductor)."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod

STACK_TRACE = "pkg.torch.onnx.stack_trace"


def drop_stack_traces(proto) -> None:
    """Remove the exporter's Python stack trace from every node of an ONNX model (in place).
    torch.onnx's dynamo exporter records, per node, the source lines that made it, with absolute
    paths (the clone's folder, the virtual environment): the file's bytes, and so its size, would
    depend on where the study was cloned, and the file would carry the user's paths. The other
    node metadata (names, scopes) stays."""
    for node in proto.graph.node:
        for i in reversed(range(len(node.metadata_props))):
            if node.metadata_props[i].key == STACK_TRACE:
                del node.metadata_props[i]


@register_method
class PT2EX86Inductor(PeerMethod):
    name = "pt2e"
    source = "torch"
    description = ("peer: PyTorch PT2E (torchao prepare_pt2e/convert_pt2e) with X86InductorQuantizer, "
                   "default config, exported to QDQ ONNX")

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        import tempfile
        import warnings
        from importlib.metadata import version
        from pathlib import Path

        import onnx
        import torch
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)

        from quantdet.export.onnx_export import output_names
        from quantdet.models.io import load_model

        if fp32_model is None:
            raise ValueError("pt2e quantizes the FP32 PyTorch model: pass fp32_model")
        model, _ = load_model(fp32_model)
        names = output_names(model)
        size = params["models"]["input_size"]
        example = (torch.zeros(2, 3, size, size),)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        exported = torch.export.export(model, example, dynamic_shapes=dynamic).module()
        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        images = 0
        with torch.no_grad():
            for batch in calibration:
                prepared(batch.float())
                images += len(batch)
        converted = move_exported_model_to_eval(convert_pt2e(prepared))
        opset = 18
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # a converted graph module keeps .training set; its ops are in eval mode already
            warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
            path = Path(tmp) / "pt2e.onnx"
            torch.onnx.export(converted, example, str(path), dynamo=True, opset_version=opset,
                              input_names=["images"], output_names=names,
                              dynamic_shapes=dynamic, verbose=False)
            proto = onnx.load(str(path))  # its weights may sit in a side file: into one file
        drop_stack_traces(proto)
        onnx.save(proto, str(out), save_as_external_data=False)
        return {"tool": "torchao pt2e", "torchao_version": version("torchao"),
                "torch_version": torch.__version__.split("+")[0],
                "api": "torch.export.export, prepare_pt2e, convert_pt2e",
                "quantizer": "X86InductorQuantizer", "config": "get_default_x86_inductor_quantization_config()",
                "weights": "int8 per-channel symmetric", "activations": "uint8 per-tensor asymmetric",
                "calibration_images": images,
                "onnx_export": f"torch.onnx.export(dynamo=True, opset_version={opset})",
                "quant_format": "QDQ"}
