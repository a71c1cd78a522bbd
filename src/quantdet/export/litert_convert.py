"""LiteRT's own PyTorch conversion and post-training INT8 quantization of a quantdet FP32 model
file, as its documentation gives them: litert_torch.convert for the float model; for INT8,
torch.export, torchao's prepare_pt2e with litert-torch's PT2EQuantizer
(get_symmetric_quantization_config(is_per_channel=True): int8 weights symmetric per channel,
int8 activations per tensor, histogram observers), calibration, convert_pt2e(fold_quantize=False)
and litert_torch.convert with that quantizer. Batch 1, as LiteRT deploys (the runner resizes).

Runs in .venv-litert (requirements-litert.lock), started by quantdet.export.litert.convert:
python -m quantdet.export.litert_convert --model M.pt --calibration X.npy --fp32-out a.tflite
--int8-out b.tflite --record r.json"""
from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version

import numpy as np


def convert(model_file: str, calibration: np.ndarray, fp32_out: str, int8_out: str) -> dict:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from quantdet.models.io import load_model

    model, payload = load_model(model_file)
    model = model.float().eval()
    size = int(payload["input_size"])
    example = (torch.zeros(1, 3, size, size),)
    start = time.perf_counter()
    litert_torch.convert(model, example).export(fp32_out)
    fp32_seconds = time.perf_counter() - start

    start = time.perf_counter()
    exported = torch.export.export(model, example).module()
    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in calibration:   # the exported graph has batch 1
            prepared(torch.from_numpy(np.ascontiguousarray(image[None], np.float32)))
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(int8_out)
    return {"tool": "litert-torch", "litert_torch_version": version("litert-torch"),
            "litert_converter_version": version("litert-converter"),
            "torch_version": torch.__version__.split("+")[0],
            "api": "torch.export.export, prepare_pt2e, convert_pt2e(fold_quantize=False), "
                   "litert_torch.convert(quant_config=QuantConfig(pt2e_quantizer))",
            "quantizer": "litert_torch PT2EQuantizer",
            "config": "get_symmetric_quantization_config(is_per_channel=True)",
            "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor (histogram observer)",
            "calibration_images": int(len(calibration)), "batch": 1, "input_size": size,
            "seconds": {"fp32_convert": round(fp32_seconds, 1),
                        "int8_quantize_convert": round(time.perf_counter() - start, 1)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calibration", required=True)
    p.add_argument("--fp32-out", required=True)
    p.add_argument("--int8-out", required=True)
    p.add_argument("--record", required=True)
    args = p.parse_args(argv)
    record = convert(args.model, np.load(args.calibration), args.fp32_out, args.int8_out)
    with open(args.record, "w") as f:
        json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
