"""Clean latency measurement: every model timed in its own process.

Timing several inference sessions interleaved in one process misleads: each session keeps
its own thread pool, whose threads spin for a while after a run and compete with the next
session's. So each (model, runtime) pair runs in a fresh Python process (`python -m
quantdet.export.latency --worker ...`), one after another, all with the same input batch,
thread count and number of runs. In its process a model is warmed up, then timed in
repetitions of `runs` calls each; a repetition's figure is the median of its calls, and
repetitions go on until two consecutive ones agree within `tolerance` (5%) or `max_reps`
is reached. The figure reported is the mean of the agreeing pair (the median of all
repetitions if none agreed, with `converged: false`).

Runtimes: `onnxruntime` (CPU execution provider, all graph optimizations) and `openvino`
(CPU, INFERENCE_PRECISION_HINT f32: on CPUs with bf16 or AMX, OpenVINO otherwise runs float
layers in bf16, which is not an FP32 baseline); `openvino-default` is OpenVINO with its
default precision hint, recorded separately; `openvino-f16` and `openvino-bf16` ask for those
inference precisions (the deployment precisions, quantdet.export.precision). `torch` and
`torch-bf16` time a quantdet model file (.pt) in PyTorch, in float32 and under bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNTIMES = ("onnxruntime", "openvino", "openvino-default", "openvino-f16", "openvino-bf16", "torch",
            "torch-bf16", "litert")
OV_HINTS = {"openvino": "f32", "openvino-f16": "f16", "openvino-bf16": "bf16"}


def _input_size(path: str) -> int:
    import onnx

    if str(path).endswith(".tflite"):
        from quantdet.export.litert import input_size

        return input_size(path)
    if str(path).endswith(".pt"):
        from quantdet.models.io import load_model

        return int(load_model(path)[1]["input_size"])

    proto = onnx.load(path, load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].dim_value > 0:
        return int(dims[2].dim_value)
    meta = {p.key: p.value for p in proto.metadata_props}
    return int(meta["quantdet.input_size"])


def _dense_copy(path: str) -> tuple[str, bool]:
    """OpenVINO's ONNX reader does not take sparse initializers (the outlier side paths'
    kernels): a temporary copy with them stored dense, same values."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(path)
    if not proto.graph.sparse_initializer:
        return path, False
    for sparse in proto.graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        dense = np.zeros(int(np.prod(sparse.dims)), values.dtype)
        dense[numpy_helper.to_array(sparse.indices).ravel()] = values
        proto.graph.initializer.append(
            numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
    del proto.graph.sparse_initializer[:]
    fd, tmp = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    onnx.save(proto, tmp)
    return tmp, True


def _session(path: str, runtime: str, threads: int, batch_shape):
    """A callable running one batch (numpy in, outputs discarded)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x}), {"version": ort.__version__}
    if runtime in ("torch", "torch-bf16"):
        import torch

        from quantdet.models.io import load_model

        torch.set_num_threads(threads)
        model = load_model(path)[0].eval()
        dtype = torch.bfloat16 if runtime == "torch-bf16" else None

        def run(x):
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                return model(torch.from_numpy(x))
        return run, {"version": torch.__version__, "precision_hint": "bf16" if dtype else "f32"}
    if runtime.startswith("openvino"):
        import openvino as ov

        core = ov.Core()
        path, densified = _dense_copy(path)
        model = core.read_model(path)
        model.reshape({model.inputs[0].any_name: list(batch_shape)})
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": 1}
        if runtime in OV_HINTS:
            config["INFERENCE_PRECISION_HINT"] = OV_HINTS[runtime]
        compiled = core.compile_model(model, "CPU", config)
        if densified:
            os.remove(path)
        request = compiled.create_infer_request()
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        if runtime in OV_HINTS and hint != OV_HINTS[runtime]:   # never time a fallback under its name
            raise RuntimeError(f"{runtime}: not run: OpenVINO {ov.__version__} compiled the model at {hint}, "
                               f"not {OV_HINTS[runtime]}: this CPU cannot run {OV_HINTS[runtime]}")
        info = {"version": ov.__version__, "precision_hint": hint}
        if densified:
            info["sparse_initializers_densified"] = True
        return lambda x: request.infer({0: x}), info
    if runtime == "litert":   # a .tflite model in LiteRT's interpreter (XNNPACK on the CPU)
        from quantdet.export.litert import LiteRTDetector, version

        model = LiteRTDetector(path, threads=threads)   # the batch, one image after another
        return model.run_numpy, {"version": version(), "batch_run_as": f"{batch_shape[0]} runs of batch {model.batch}"}
    raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")


def time_model(path: str, runtime: str, batch: int, threads: int, runs: int, warmup: int = 5,
               tolerance: float = 0.05, max_reps: int = 5, images: str | None = None,
               seed: int = 0) -> dict:
    """Time one model in this process (the worker's body; call `measure` from elsewhere)."""
    if images:
        x = np.load(images).astype(np.float32)
        x = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    else:
        size = _input_size(path)
        x = np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)
    run, info = _session(path, runtime, threads, x.shape)
    for _ in range(warmup):
        run(x)
    medians: list[float] = []
    converged = False
    while len(medians) < max_reps:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run(x)
            times.append((time.perf_counter() - start) * 1000)
        medians.append(statistics.median(times))
        if len(medians) >= 2 and abs(medians[-1] - medians[-2]) <= tolerance * min(medians[-2:]):
            converged = True
            break
    latency = statistics.fmean(medians[-2:]) if converged else statistics.median(medians)
    return {"model": str(path), "runtime": runtime, "latency_ms": round(latency, 3),
            "repetition_medians_ms": [round(m, 3) for m in medians], "converged": converged,
            "batch": batch, "threads": threads, "runs": runs, "warmup": warmup,
            "pid": os.getpid(), **info}


def measure(path, runtime: str = "onnxruntime", batch: int = 8, threads: int = 2,
            runs: int = 30, warmup: int = 5, tolerance: float = 0.05, max_reps: int = 5,
            images: np.ndarray | str | None = None, timeout: float | None = 900) -> dict:
    """Time one model in a fresh Python process; returns the worker's record."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(images, np.ndarray):
            np.save(Path(tmp) / "images.npy", images.astype(np.float32))
            images = str(Path(tmp) / "images.npy")
        cmd = [sys.executable, "-m", "quantdet.export.latency", str(path), "--runtime", runtime,
               "--batch", str(batch), "--threads", str(threads), "--runs", str(runs),
               "--warmup", str(warmup), "--tolerance", str(tolerance), "--max-reps", str(max_reps)]
        if images:
            cmd += ["--images", str(images)]
        env = dict(os.environ)
        # the worker imports this very package, wherever it was imported from
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"latency worker failed for {path} ({runtime}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(models, runtimes=("onnxruntime",), baseline=None, **kwargs) -> dict:
    """Time every model with every runtime, each in its own process, one after another.

    Ratios are the baseline's latency over each model's (a speedup: > 1 is faster), per
    runtime; the baseline is the first model unless given.
    """
    models = list(dict.fromkeys(str(m) for m in models))
    baseline = str(baseline) if baseline is not None else models[0]
    if baseline not in models:
        models = [baseline, *models]
    results = []
    for runtime in runtimes:
        for model in models:
            try:
                results.append(measure(model, runtime, **kwargs))
            except (RuntimeError, subprocess.TimeoutExpired) as e:  # one model's failure
                results.append({"model": model, "runtime": runtime, "latency_ms": None,
                                "error": str(e).strip().splitlines()[-1]})
    by_runtime: dict[str, dict[str, float]] = {}
    for r in results:
        by_runtime.setdefault(r["runtime"], {})[r["model"]] = r["latency_ms"]
    for r in results:
        base = by_runtime[r["runtime"]][baseline]
        r["speedup_vs_baseline"] = (round(base / r["latency_ms"], 3)
                                    if base and r["latency_ms"] else None)
    settings = {k: kwargs[k] for k in ("batch", "threads", "runs") if k in kwargs}
    return {"baseline": baseline, "settings": settings, "results": results}


def format_table(report: dict) -> str:
    rows = [("model", "runtime", "ms", "vs baseline", "reps (ms)")]
    for r in report["results"]:
        runtime = r["runtime"] + (f" ({r['precision_hint']})" if "precision_hint" in r else "")
        if r["latency_ms"] is None:
            rows.append((Path(r["model"]).name, runtime, "-", "-", "failed: " + r["error"][:60]))
            continue
        ratio = r["speedup_vs_baseline"]
        rows.append((Path(r["model"]).name, runtime, f"{r['latency_ms']:.2f}",
                     "-" if ratio is None else f"{ratio:.2f}x",
                     ", ".join(f"{m:.2f}" for m in r["repetition_medians_ms"])
                     + ("" if r["converged"] else " (no 2 within tolerance)")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\nbaseline: {Path(report['baseline']).name} (vs baseline = its latency / this one's)"


def _worker_main(argv=None) -> int:
    p = argparse.ArgumentParser(description="time one model in this process (a latency worker)")
    p.add_argument("model")
    p.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--max-reps", type=int, default=5)
    p.add_argument("--images")
    a = p.parse_args(argv)
    record = time_model(a.model, a.runtime, a.batch, a.threads, a.runs, a.warmup, a.tolerance,
                        a.max_reps, a.images)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
