"""Zero-shot quantization: calibration sets generated from the FP32 student alone
(data/synthetic/<generator>), and PTQ calibrated on them.

- ZeroQ (Cai et al.): images optimised so the student's BatchNorm statistics match;
- GDFQ (Xu et al.): a conditional generator trained against the student (BN statistics plus
  the class loss), sampled for the calibration set.

The observer that takes the ranges is quant.zeroshot.observer for both.
"""
from quantdet.methods import register_method
from quantdet.methods.base import DataGenerator, PTQMethod


class _ZeroShotPTQ(PTQMethod):
    reads = ("quant.zeroshot.observer", "quant.ptq.percentile")

    def observer_for(self, params):
        return params["quant"]["zeroshot"]["observer"]


@register_method
class ZeroQPTQ(_ZeroShotPTQ):
    name = generated = "zeroq"
    description = "zero-shot PTQ calibrated on ZeroQ's distilled images (BN-statistics matching)"


@register_method
class GDFQPTQ(_ZeroShotPTQ):
    name = generated = "gdfq"
    description = "zero-shot PTQ calibrated on GDFQ generator samples"


@register_method
class ZeroQImages(DataGenerator):
    name = "zeroq"
    reads = ("quant.zeroshot.zeroq",)
    description = "ZeroQ: images optimised to match the FP32 student's BatchNorm statistics"

    def generate(self, model, payload, params, seed):
        import numpy as np

        from quantdet.zeroshot.distilled import distill_images

        cfg = params["quant"]["zeroshot"]["zeroq"]
        images, history = distill_images(model, cfg["images"], params["models"]["input_size"],
                                         batch_size=cfg["batch_size"], steps=cfg["steps"],
                                         lr=cfg["lr"], seed=seed)
        return {"images": images, "labels": None, "trained": None, "history": history,
                "metrics": {"bns_first": float(np.mean(history["first_loss"])),
                            "bns_last": float(np.mean(history["last_loss"]))}}


@register_method
class GDFQGenerator(DataGenerator):
    name = "gdfq"
    reads = ("quant.zeroshot.gdfq",)
    description = "GDFQ: a conditional generator trained against the FP32 student"

    def generate(self, model, payload, params, seed):
        import numpy as np
        import torch

        from quantdet.zeroshot.generator import sample_inputs, train_generator

        cfg = params["quant"]["zeroshot"]["gdfq"]
        trained, history = train_generator(
            model, len(payload["classes"]["category_ids"]), params["models"]["input_size"],
            iterations=cfg["iterations"], batch_size=cfg["batch_size"], lr=cfg["lr"],
            betas=cfg["betas"], bns_weight=cfg["bns_weight"], class_topk=cfg["class_topk"],
            noise_dim=cfg["noise_dim"], channels=cfg["channels"], seed=seed)
        noise, labels = sample_inputs(cfg["images"], trained.num_classes, trained.noise_dim,
                                      torch.Generator().manual_seed(seed + 1))
        images = torch.cat([trained.sample(n, y).cpu() for n, y in zip(noise.split(64), labels.split(64))])
        window = max(1, len(history["bns"]) // 10)  # first and last tenth of training
        metrics = {f"{k}_{when}": float(np.mean(v[:window] if when == "first" else v[-window:]))
                   for k, v in history.items() for when in ("first", "last")}
        return {"images": images, "labels": labels, "trained": trained, "history": history,
                "metrics": metrics}
