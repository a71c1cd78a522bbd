"""AIT (zero-shot QAT): ranges calibrated on GDFQ's generated images with
quant.zeroshot.observer and kept fixed; fine-tuned on fresh generator samples labelled by the
FP32 model, with the KL divergence to it only, SGD and gradient inflation."""
from pathlib import Path

from quantdet.methods import register_method
from quantdet.methods.base import QATMethod


@register_method
class AIT(QATMethod):
    name = "ait"
    generated = "gdfq"
    training_reads = ()
    reads = ("quant.zeroshot.observer", "quant.zeroshot.ait")
    description = ("zero-shot QAT (AIT): KL to the FP32 model on GDFQ generator samples, SGD "
                   "with gradient inflation")

    def recipe_for(self, params):
        from quantdet.zeroshot.ait import ait_recipe

        return ait_recipe(params["quant"]["zeroshot"]["observer"])

    def training(self, job, recipe):
        """`fit` arguments: the FP32 model as the teacher of fresh generator samples, the KL
        loss, SGD (no weight decay: the inflation predicts the step exactly) and inflation."""
        from functools import partial

        from quantdet import detectors
        from quantdet.zeroshot.ait import GeneratedBatches, GradientInflation, distillation_loss
        from quantdet.zeroshot.generator import load_generator

        cfg = job.params["quant"]["zeroshot"]["ait"]
        generator = load_generator(job.require(Path(job.calibration_split) / "generator.pt"))
        dataset = GeneratedBatches(generator, job.fp32, cfg["images_per_epoch"], job.seed)
        total_iters = cfg["epochs"] * max(1, cfg["images_per_epoch"] // cfg["batch_size"])
        inflation = GradientInflation(total_iters, cfg["rho_start"], cfg["rho_end"],
                                      cfg["kappa_max"], cfg["kappa_warmup_iters"])
        return ({"dataset": dataset, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
                 "lr": cfg["lr"], "weight_decay": 0.0, "warmup_iters": cfg["warmup_iters"],
                 "loss_fn": partial(distillation_loss,
                                    class_logits=detectors.of_model(job.fp32).class_logits),
                 "collate_fn": dataset.collate,
                 "prepare_batch": dataset.prepare, "optimizer": "sgd",
                 "momentum": cfg["momentum"], "after_backward": inflation}, None)

    def quant_info(self, job):
        return {"training_data": {"generator": f"{job.calibration_split}/generator.pt",
                                  "ait": job.params["quant"]["zeroshot"]["ait"]}}
