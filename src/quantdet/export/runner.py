"""Run an exported detector in onnxruntime with the same call signature as the PyTorch model."""
from __future__ import annotations

import json

import numpy as np
import torch

from quantdet.integrity import verify_file


def detector_config(metadata: dict) -> dict:
    """The detector config an exported model was made from (its `quantdet.detector` metadata;
    files exported before the detector registry hold quantdet's first detector)."""
    if "quantdet.detector" in metadata:
        return json.loads(metadata["quantdet.detector"])
    from quantdet.detectors import DEFAULT

    return {"family": DEFAULT}


class OrtDetector:
    """Callable on a B×3×S×S float tensor; returns the outputs as torch tensors."""

    def __init__(self, path, threads: int = 1, optimized_model_path: str | None = None):
        import onnxruntime as ort

        verify_file(path)   # a damaged file refused naming it (quantdet.integrity)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_model_path:
            opts.optimized_model_filepath = optimized_model_path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.detector_config = detector_config(self.metadata)
        self.path = str(path)

    def run_numpy(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, np.float32)})

    def __call__(self, images: torch.Tensor):
        return tuple(torch.from_numpy(o) for o in self.run_numpy(images.numpy()))

    def eval(self):
        return self


class OvDetector:
    """The same callable as OrtDetector, in OpenVINO on the CPU. Inference precision f32: the
    CPU plugin's default on AVX-512-bf16/AMX machines is bf16, which is not the exported
    model's arithmetic; the precision that ran is recorded in `info`. A deployment precision
    (quantdet.export.precision) asks for another hint."""

    def __init__(self, path, threads: int = 1, precision_hint: str = "f32"):
        import onnx
        import openvino as ov

        from quantdet.export.latency import _dense_copy

        verify_file(path)
        self.metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        core = ov.Core()
        readable, densified = _dense_copy(str(path))   # OpenVINO reads no sparse initializers
        try:
            model = core.read_model(readable)
        finally:
            if densified:
                import os
                os.remove(readable)
        name = model.inputs[0].any_name
        shape = list(model.inputs[0].get_partial_shape())
        model.reshape({name: ov.PartialShape([-1, *[int(str(d)) for d in shape[1:]]])})   # any batch
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": precision_hint})
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.any_name for o in self.compiled.outputs]
        self.detector_config = detector_config(self.metadata)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.info = {"runtime": "openvino", "version": ov.__version__,
                     "precision_hint": hint.to_string() if hasattr(hint, "to_string") else str(hint)}
        self.path = str(path)

    def run_numpy(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: np.ascontiguousarray(images, np.float32)})
        return [np.array(result[output]) for output in self.compiled.outputs]

    def __call__(self, images: torch.Tensor):
        return tuple(torch.from_numpy(o) for o in self.run_numpy(images.numpy()))

    def eval(self):
        return self
