"""Do a runtime's int8 kernels compute our W8A8 model exactly on this CPU? One tiny quantized
model (the export tests' `tiny_model`, min/max PTQ), exported with int8 weights and with uint8
weights (int8 + 128, zero point 128: the same values), run in onnxruntime and in OpenVINO (f32
inference precision); for each, the fraction of outputs within one quantization step of the
simulated PyTorch model (`export.fidelity.output_agreement`).

    python scripts/weight_saturation.py [--bits 8 4]

On a CPU without AVX-512 VNNI, the u8 x s8 multiply-add (vpmaddubsw) saturates at 16 bits:
that is why `export.weight_type: auto` picks uint8 weights there.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    args = ap.parse_args()

    from quantdet.environment import cpu_flags
    from quantdet.export.fidelity import output_agreement
    from quantdet.export.onnx_export import export_onnx, weight_type
    from quantdet.export.runner import OrtDetector, OvDetector
    from quantdet.quant.ptq import post_training_quantize
    from tests.quant_models import tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits:
            torch.manual_seed(0)
            batches = [torch.rand(8, 3, 32, 32) for _ in range(3)]
            model = post_training_quantize(tiny_model(), batches, "minmax", bits, bits, {"calib_batches": 3})
            images = torch.rand(16, 3, 32, 32)
            for kind in ("int8", "uint8"):
                path = os.path.join(tmp, f"w{bits}-{kind}.onnx")
                export_onnx(model, path, 32, 17, weights=kind)
                for runtime, runner in (("onnxruntime", OrtDetector), ("openvino", OvDetector)):
                    fractions = output_agreement(model, runner(path), images, bits)["within_one_step_fraction"]
                    rows.append({"bits": f"W{bits}A{bits}", "weights": kind, "runtime": runtime,
                                 "within_one_step": {k: round(v, 4) for k, v in fractions.items()}})
    flags = sorted(f for f in cpu_flags() if "vnni" in f or f in ("avx2", "avx512f"))
    print(json.dumps({"cpu_flags": flags, "auto_picks": weight_type("auto"), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
