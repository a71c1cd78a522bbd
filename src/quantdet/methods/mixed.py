"""Mixed-precision PTQ: per-layer weight bits chosen by sensitivity under an average-bits
budget (quant.mixed). The model name's w<b> is the budget; its per-layer bits are written
beside the model (`.bits.json`)."""
import logging

from quantdet.methods import register_method
from quantdet.methods.base import PTQMethod, PTQResult

log = logging.getLogger("quantdet")


@register_method
class MixedPrecision(PTQMethod):
    name = "mixed"
    reads = ("quant.mixed.bit_choices", "quant.mixed.act_bits", "quant.mixed.observer",
             "quant.mixed.sensitivity", "quant.mixed.sensitivity_batches", "quant.ptq.percentile")
    extra_outputs = (".bits.json",)
    description = ("mixed-precision PTQ: per-layer weight bits by sensitivity, within an "
                   "average-bits budget")

    def observer_for(self, params):
        return params["quant"]["mixed"]["observer"]

    def quantize(self, job) -> PTQResult:
        from torch.utils.data import DataLoader

        from quantdet import study
        from quantdet.data.dataset import DetectionDataset, collate_detections
        from quantdet.quant.mixed import mixed_precision_quantize

        params, name = job.params, job.name
        cfg, ptq_cfg = params["quant"]["mixed"], params["quant"]["ptq"]
        from quantdet.detectors import letterbox_of

        dataset = DetectionDataset(f"{study.PREPARED}/calib", params["models"]["input_size"],
                                   augment=False, letterbox=letterbox_of(job.payload["detector"]))
        loader = DataLoader(dataset, batch_size=ptq_cfg["calib_batch_size"], shuffle=False,
                            collate_fn=collate_detections)
        labelled = []
        for images, targets, _ in loader:
            if len(labelled) == cfg["sensitivity_batches"]:
                break
            labelled.append((images, targets))
        # mixed precision calibrates twice: `calibration` opens a fresh pass each time
        qmodel, report = mixed_precision_quantize(
            job.fp32, job.calibration, labelled, budget=name.weight_bits,
            bit_choices=cfg["bit_choices"], act_bits=name.act_bits, method=cfg["observer"],
            ptq_params=ptq_cfg, metric=cfg["sensitivity"])
        log.info("%s: %.3f average weight bits (budget %d), sensitivity pass %.1f s", name.model,
                 report["average_weight_bits"], name.weight_bits, report["sensitivity_seconds"])
        # every layer's bits; weight_bits (the default for unnamed layers) is the highest choice
        quant = {"weight_bits": max(report["bit_choices"]),
                 "layer_bits": {r["layer"]: r["bits"] for r in report["layers"]},
                 "weight_bits_budget": name.weight_bits,
                 "average_weight_bits": report["average_weight_bits"]}
        return PTQResult(qmodel, cfg["observer"], quant=quant,
                         metrics={"average_weight_bits": report["average_weight_bits"],
                                  "sensitivity_seconds": report["sensitivity_seconds"]},
                         files={".bits.json": {"model": name.model, **report}})
