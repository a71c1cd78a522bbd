"""LiteRT (TensorFlow Lite's successor) as a runtime: `.tflite` models run by ai-edge-litert's
interpreter on the CPU (its XNNPACK delegate), with the call signature of the other runners
(quantdet.export.runner). What makes a `.tflite` model is LiteRT's PyTorch converter,
litert-torch, which cannot share requirements.lock: it lives in .venv-litert (`make
venv-litert`) and runs there as a subprocess (quantdet.export.litert_convert)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from quantdet.errors import QuantdetError
from quantdet.integrity import verify_file

ENV = "QUANTDET_LITERT_PYTHON"   # the converter's interpreter, where .venv-litert is elsewhere
INSTALL = "make venv-litert (requirements-litert.lock)"


def converter_python() -> Path | None:
    """The Python of LiteRT's converter environment: $QUANTDET_LITERT_PYTHON, else the
    .venv-litert beside the checkout this package runs from; None where there is none."""
    if os.environ.get(ENV):
        path = Path(os.environ[ENV])
        return path if path.exists() else None
    path = Path(__file__).resolve().parents[3] / ".venv-litert" / "bin" / "python"
    return path if path.exists() else None


def unavailable() -> str | None:
    """Why LiteRT models cannot be made here, or None."""
    if converter_python() is None:
        return (f"LiteRT's converter (litert-torch) is not installed: {INSTALL}, or point ${ENV} at "
                "a Python that has it")
    return None


def convert(model_file, calibration: np.ndarray, fp32_out, int8_out, timeout: float = 3600) -> dict:
    """The FP32 PyTorch model file converted by litert-torch to `fp32_out` (.tflite, float) and,
    quantized with its PT2E INT8 recipe on the `calibration` images (N×3×S×S float32), to
    `int8_out`; returns the converter's record. Runs in the converter's environment."""
    import tempfile

    python = converter_python()
    if python is None:
        raise QuantdetError(f"litert: {unavailable()}")
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "calibration.npy"
        np.save(images, np.ascontiguousarray(calibration, np.float32))
        record = Path(tmp) / "record.json"
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])   # this very package, wherever it runs from
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        cmd = [str(python), "-m", "quantdet.export.litert_convert", "--model", str(model_file),
               "--calibration", str(images), "--fp32-out", str(fp32_out), "--int8-out", str(int8_out),
               "--record", str(record)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode != 0 or not record.exists():
            raise QuantdetError(f"litert: converting {model_file} failed ({python}):\n{done.stderr[-3000:]}")
        return json.loads(record.read_text())


def _output_order(details: list[dict]) -> list[dict]:
    """The outputs in the PyTorch model's order: litert-torch names them output_<i>."""
    def index(d):
        found = re.search(r"output_(\d+)", d["name"])
        return int(found[1]) if found else 0
    return sorted(details, key=index)


class LiteRTDetector:
    """Callable on a B×3×S×S float tensor, returning float outputs as torch tensors: an integer
    input is quantized with the model's own input scale, integer outputs dequantized with theirs
    (a full-integer model's interface). The model runs at the batch it was converted at (1, as
    LiteRT deploys), one image after another: resizing its input does not resize the constant
    shapes inside a converted graph (YOLO12's attention reshapes), which then returns one
    image's outputs for a whole batch."""

    def __init__(self, path, threads: int = 1, detector_config: dict | None = None):
        from ai_edge_litert.interpreter import Interpreter

        verify_file(path)
        self.path = str(path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = _output_order(self.interpreter.get_output_details())
        self.batch = int(self.input["shape"][0])
        self.detector_config = detector_config

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if self.input["dtype"] != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        out = []
        for d in self.outputs:
            value = self.interpreter.get_tensor(d["index"])
            if value.shape[0] != len(x):
                raise QuantdetError(f"{self.path}: LiteRT returned {value.shape[0]} images' outputs for {len(x)}")
            if d["dtype"] != np.float32:
                scale, zero = d["quantization"]
                value = (value.astype(np.float32) - zero) * scale
            out.append(np.array(value, np.float32))
        return out

    def run_numpy(self, images: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(images, np.float32)
        parts = [self._run(x[i:i + self.batch]) for i in range(0, len(x), self.batch)]
        return [np.concatenate(p) for p in zip(*parts)]

    def __call__(self, images: torch.Tensor):
        return tuple(torch.from_numpy(o) for o in self.run_numpy(images.numpy()))

    def eval(self):
        return self


def input_size(path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    return int(Interpreter(model_path=str(path)).get_input_details()[0]["shape"][2])


def op_summary(path) -> dict:
    """What the model runs: its operators by count, and its convolutions by the type of their
    input (int8: an integer kernel; float32: a float one)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()   # the interpreter's only list of operators
    convs = Counter(dtypes.get(int(op["inputs"][0]), "?") for op in ops
                    if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    return {"operators": dict(Counter(op["op_name"] for op in ops).most_common()),
            "convolutions_by_input_type": dict(convs),
            "input_type": np.dtype(interpreter.get_input_details()[0]["dtype"]).name,
            "output_types": sorted({np.dtype(d["dtype"]).name for d in interpreter.get_output_details()})}


def version() -> str:
    from importlib.metadata import version as v

    return v("ai-edge-litert")


if __name__ == "__main__":   # a quick look: python -m quantdet.export.litert model.tflite
    print(json.dumps(op_summary(sys.argv[1]), indent=1))
