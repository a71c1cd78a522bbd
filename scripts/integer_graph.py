"""Our W8A8 export against the peers' integer graphs of the same network: what each runtime
makes of it, and how fast it runs (issue: the fastest integer graph).

    python scripts/integer_graph.py --out /tmp/graphs [--roles student yolo11n] [--size 128]

For each role of params.yaml (an untrained network: speed does not depend on the weights), it
writes the FP32 ONNX export, our min/max W8A8 export with uint8 and with int8 weights, and the
peers' models (onnxruntime's quantize_static, NNCF), all calibrated on the same random images
(ranges, not speed, depend on them), then prints for each model the operators onnxruntime runs after its
graph optimizations (how many convolutions run as integer kernels, what stays in float) and
the latency of each model in onnxruntime and OpenVINO, each timed in its own process by
`quantdet bench` (batch 8, 2 threads).
"""
import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import torch

from quantdet.data.embedded import CLASSES   # the default dataset's classes


def ort_ops(path: Path) -> dict[str, int]:
    """Operator counts of the graph onnxruntime runs (ORT_ENABLE_ALL, CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def build(role: str, params: dict):
    """The untrained FP32 network of `models.<role>`, for the default dataset's classes."""
    from quantdet import detectors
    from quantdet.stages.train import detector_config

    return detectors.build(detector_config(params, role, num_classes=len(CLASSES))).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--roles", nargs="+", default=["student", "yolo11n"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--peers", nargs="*", default=["ort_minmax", "nncf"])
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()

    from quantdet.config import load_params
    from quantdet.export.onnx_export import export_onnx, output_names
    from quantdet.methods import get_method
    from quantdet.quant.ptq import post_training_quantize

    params = load_params(args.params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    calib = [torch.rand(8, 3, args.size, args.size) for _ in range(2)]
    summary = {}
    for role in args.roles:
        model = build(role, params)
        names = output_names(model)
        fp32 = out / f"{role}-fp32.onnx"
        export_onnx(model, fp32, args.size, 17, output_names=names)
        q = post_training_quantize(model, iter(calib), "minmax", 8, 8, {"calib_batches": 2})
        files = {"fp32": fp32}
        # our export with each weight type: `auto` picks uint8 on a CPU without VNNI (exact
        # U8U8 kernels), int8 with it (U8S8, which onnxruntime's quantizer always writes)
        for weights in ("uint8", "int8"):
            files[f"ours-{weights}"] = out / f"{role}-ours-{weights}-w8a8.onnx"
            export_onnx(q, files[f"ours-{weights}"], args.size, 17, output_names=names, weights=weights)
        for peer in args.peers:
            path = out / f"{role}-{peer}-w8a8.onnx"
            get_method("peer", peer).quantize_onnx(fp32, path, iter(calib), params)
            files[peer] = path
        summary[role] = {key: {"ort_ops": ort_ops(path)} for key, path in files.items()}
        for key, info in summary[role].items():
            print(role, key, json.dumps(info["ort_ops"]))
        if not args.no_bench:
            bench = subprocess.run([sys.executable, "-m", "quantdet.cli", "bench", *map(str, files.values()),
                                    "--runtime", "onnxruntime", "openvino", "--batch", "8", "--threads", "2"],
                                   capture_output=True, text=True)
            print(bench.stdout[-4000:], bench.stderr[-2000:])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
