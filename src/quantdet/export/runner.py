"""Run an exported detector in onnxruntime with the same call signature as the PyTorch model."""
from __future__ import annotations

import numpy as np
import torch


class OrtDetector:
    """Callable on a B×3×S×S float tensor; returns the outputs as torch tensors."""

    def __init__(self, path, threads: int = 1, optimized_model_path: str | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_model_path:
            opts.optimized_model_filepath = optimized_model_path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.path = str(path)

    def run_numpy(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, np.float32)})

    def __call__(self, images: torch.Tensor):
        return tuple(torch.from_numpy(o) for o in self.run_numpy(images.numpy()))

    def eval(self):
        return self
