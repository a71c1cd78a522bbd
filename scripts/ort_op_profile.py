"""Where an ONNX model's time goes in onnxruntime, per operator type: the outlier-aware export
against a plain integer export, for instance.

    python scripts/ort_op_profile.py results/models/student-qat-fqn-w8a8.onnx \
        results/models/student-qat-oaqat-w8a8.onnx [--batch 8 --threads 2 --runs 20]

onnxruntime's own profiler (SessionOptions.enable_profiling), after 5 warm-up runs; kernel time
summed over threads, per run. Profiling adds overhead: compare models measured the same way,
not with `quantdet bench` figures.
"""
import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort


def profile(path: str, batch: int, threads: int, runs: int) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[2]
    size = size if isinstance(size, int) else 128   # a dynamic input: the study's input size
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    name = session.get_inputs()[0].name
    for _ in range(5 + runs):
        session.run(None, {name: x})
    events = json.load(open(session.end_profiling()))
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1000 / (5 + runs)
    return dict(by_op)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args()
    results = {m: profile(m, a.batch, a.threads, a.runs) for m in a.models}
    ops = sorted({op for r in results.values() for op in r}, key=lambda op: -max(r.get(op, 0) for r in results.values()))
    print("ms per run (kernel time) | " + " | ".join(os.path.basename(m) for m in a.models))
    print(f"{'total':24s} " + " ".join(f"{sum(r.values()):10.2f}" for r in results.values()))
    for op in ops:
        print(f"{op:24s} " + " ".join(f"{r.get(op, 0):10.2f}" for r in results.values()))


if __name__ == "__main__":
    main()
