"""OA-QAT's quantization-error term at the start of training, per quantizer: where it comes from.

For each FP32 student named, in a finished study folder: the oaqat model is prepared exactly as
the `qat` stage prepares it (calibration, outlier weights, outlier channels), and the first
training batches run through it in training mode. For every graph quantizer with outlier
channels the term's share is split into rounding (values inside the clipping range) and
clipping (values outside it), with the fraction of outlier-channel values clipped and how far
beyond the range the largest one lies, in steps.

    python scripts/oaqat_term.py --study DIR --models student-qat-oaqat-w8a8 student-qat-oaqat-w8a8-s1

With --train, instead: the term of every training batch of the model's real `qat` job (its
fit, in a temporary file; the study's outputs are not touched), and the epoch means.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def analyse(model_name: str, batches: int) -> dict:
    from quantdet import study
    from quantdet.config import load_params
    from quantdet.models.io import load_model
    from quantdet.quant.modules import QUANTIZE
    from quantdet.quant.outlier import QuantErrorLoss, graph_quantizers
    from quantdet.quant.qat import prepare_qat
    from quantdet.stages.quantize import QuantizeJob

    params = load_params("params.yaml")
    name = study.parse_model_name(model_name)
    method = study.method_of(name)
    fp32, payload = load_model(study.model_file(name.fp32_source))
    job = QuantizeJob(params, name, fp32, payload)
    recipe = method.recipe_for(params)
    ptq, qat = params["quant"]["ptq"], params["quant"]["qat"]
    torch.manual_seed(job.seed)
    qmodel, _ = prepare_qat(fp32, recipe, name.weight_bits, name.act_bits, job.calibration(),
                            ptq["calib_batches"], ptq["percentile"], qat["ema_momentum"],
                            outlier=qat["outlier"])
    training, _ = method.training(job, recipe)
    dataset = training["dataset"]
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=training["batch_size"], shuffle=False,
                                         collate_fn=training["collate_fn"])
    quantizers = [q for q in graph_quantizers(qmodel) if hasattr(q, "outlier_channels")]
    index = {id(q): i for i, q in enumerate(quantizers)}
    stats = {i: {"round": 0.0, "clip": 0.0, "clipped": 0.0, "beyond_steps": 0.0} for i in index.values()}

    def hook(module, args, kwargs, output):
        if module.mode != QUANTIZE or not kwargs.get("observe", True):
            return
        x = args[0].detach().index_select(1, module.outlier_channels)
        scale, zp = float(module.scale), float(module.zero_point)
        lo, hi = (module.qmin - zp) * scale, (module.qmax - zp) * scale
        err = (x - output.detach().index_select(1, module.outlier_channels)) / scale
        inside = (x >= lo) & (x <= hi)
        s = stats[index[id(module)]]
        s["round"] += float((err.pow(2) * inside).mean()) / batches
        s["clip"] += float((err.pow(2) * ~inside).mean()) / batches
        s["clipped"] += float((~inside).float().mean()) / batches
        s["beyond_steps"] = max(s["beyond_steps"], float(((x - hi).clamp(min=0) / scale).max()),
                                float(((lo - x).clamp(min=0) / scale).max()))

    handles = [q.register_forward_hook(hook, with_kwargs=True) for q in quantizers]
    qmodel.train()
    terms = []
    with QuantErrorLoss(qmodel, 1.0) as loss:
        for b, batch in enumerate(loader):
            if b == batches:
                break
            qmodel(batch[0])
            terms.append(float(loss(qmodel, batch[0], None, None)[0]))
    for h in handles:
        h.remove()
    n = len(quantizers)
    per = [{"quantizer": i, **{k: round(v, 4) for k, v in s.items()},
            "share": round((s["round"] + s["clip"]) / n / max(1e-12, sum(terms) / len(terms)), 4)}
           for i, s in stats.items()]
    per.sort(key=lambda r: -r["share"])
    return {"model": model_name, "term": sum(terms) / len(terms), "batches": len(terms),
            "quantizers": n, "round": sum(s["round"] for s in stats.values()) / n,
            "clip": sum(s["clip"] for s in stats.values()) / n, "top": per[:6]}


def train(model_name: str) -> dict:
    """The quantization-error term of each batch of the model's `qat` job, run afresh."""
    import tempfile

    from quantdet import study
    from quantdet.config import load_params
    from quantdet.quant import outlier
    from quantdet.stages import quantize

    values = []
    measured = outlier.QuantErrorLoss.__call__

    def record(self, *args):
        value, parts = measured(self, *args)
        values.append(parts["quant_error"])
        return value, parts

    params = load_params("params.yaml")
    checkpoint = Path("results/checkpoints") / f"{study.parse_model_name(model_name).model}.ckpt"
    with tempfile.TemporaryDirectory() as tmp:
        saved = checkpoint.with_name(checkpoint.name + ".kept")
        if checkpoint.exists():
            checkpoint.rename(saved)  # a finished job's checkpoint would be resumed: train afresh
        outlier.QuantErrorLoss.__call__ = record
        try:
            quantize.qat(params, model_name, out=f"{tmp}/model.pt")
        finally:
            outlier.QuantErrorLoss.__call__ = measured
            checkpoint.unlink(missing_ok=True)
            if saved.exists():
                saved.rename(checkpoint)
    return {"model": model_name, "batches": [round(v, 4) for v in values],
            "mean": round(sum(values) / max(1, len(values)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a study folder (its params.yaml, results/)")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--train", action="store_true", help="the term of each batch of the real qat job")
    args = parser.parse_args()
    os.chdir(args.study)
    os.environ["QUANTDET_TRACKING"] = "off"
    torch.set_num_threads(1)
    if args.train:
        print(json.dumps([train(m) for m in args.models], indent=1))
    else:
        print(json.dumps([analyse(m, args.batches) for m in args.models], indent=1))


if __name__ == "__main__":
    main()
