"""What a registered method is: a class per family, with the hooks its family's driver calls.

Subclass one of ``PTQMethod``, ``QATMethod``, ``MimicMethod`` or ``DataGenerator``, set its
attributes, override the hooks it changes, and decorate it with ``register_method``.
Hooks receive the driver's job (``quantdet.stages.quantize.QuantizeJob``): the params, the
parsed model name, the FP32 model and its file's payload, and ``calibration()``, which opens a
fresh pass over the method's calibration images.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field


class Method:
    name: str = ""
    family: str = ""
    description: str = ""
    reads: tuple[str, ...] = ()      # params leaves read beyond the family's (methods.FAMILY_READS)
    generated: str | None = None     # calibrates / trains on data/synthetic/<generated>
    teacher: bool = False            # needs the FP32 teacher (results/models/teacher-fp32.pt)
    extra_outputs: tuple[str, ...] = ()  # files beside the model, by suffix (".bits.json")
    detectors: tuple[str, ...] = ()  # the detector families it serves (empty: every family)

    def accepts(self, name: str) -> bool:
        """Whether a model name's method part stands for this method (parametric names)."""
        return name == self.name

    def register_observers(self) -> None:
        """Register the observers (quant.observers) this method brings, if any: called before it
        quantizes and when a model file naming an unknown observer is loaded."""

    def describe(self, name: str) -> str:
        """The report's line for a model of this method (``name``: the model's method part)."""
        return self.description

    def export_variants(self, torch_model, out, payload: dict, export_params: dict):
        """A context manager yielding other exports of the same model whose latency the export
        stage measures beside it ({key: {"path", "size_bytes", ...}}: each file is timed in its
        own process while the context is open), or None."""
        return nullcontext(None)

    def export_summary(self, variants: dict, latency: dict, graph: dict, out) -> dict:
        """What the export report records about the variants."""
        return {}


@dataclass
class PTQResult:
    model: object                    # the fake-quantized model
    observer: str                    # the observer that took its activation ranges
    quant: dict = field(default_factory=dict)      # extra entries of the model file's quant info
    metrics: dict = field(default_factory=dict)    # extra MLflow metrics
    files: dict = field(default_factory=dict)      # suffix -> JSON payload written beside the model


class PTQMethod(Method):
    family = "ptq"
    observer: str = ""               # quant.observers name taking the activation ranges
    degraded_calibration = False     # calibration images degraded on line (quant.degradations)

    def observer_for(self, params: dict) -> str:
        return self.observer

    def quantize(self, job) -> PTQResult:
        """Calibrate the FP32 model on one pass of the calibration set."""
        from quantdet.quant.ptq import post_training_quantize

        observer = self.observer_for(job.params)
        qmodel = post_training_quantize(job.fp32, job.calibration(self.degraded_calibration),
                                        observer, job.name.weight_bits, job.name.act_bits,
                                        job.params["quant"]["ptq"])
        return PTQResult(qmodel, observer)


class QATMethod(Method):
    family = "qat"
    recipe = None                    # quant.qat.QATRecipe
    # the leaves the default `training` reads (a method training otherwise sets its own)
    training_reads = ("quant.qat.epochs", "quant.qat.images", "quant.qat.batch_size",
                      "quant.qat.lr", "quant.qat.warmup_iters")

    def recipe_for(self, params: dict):
        return self.recipe

    def training(self, job, recipe) -> tuple[dict, dict | None]:
        """`fit` arguments for the fine-tuning, and the identity of on-line degradations of the
        training batches (None without): by default the real train split, a seeded subset of
        quant.qat.images per epoch, degraded where the recipe says so."""
        from quantdet import study
        from quantdet.data.dataset import DetectionDataset, SeededSubset, collate_detections
        from quantdet.data.degraded import DegradedDataset

        params, seed = job.params, job.seed
        qat_cfg = params["quant"]["qat"]
        from quantdet.detectors import letterbox_of

        dataset = DetectionDataset(job.require(f"{study.PREPARED}/train"),
                                   params["models"]["input_size"], augment=True, seed=seed,
                                   letterbox=letterbox_of(job.payload["detector"]))
        if qat_cfg.get("images") is not None and qat_cfg["images"] < len(dataset):
            dataset = SeededSubset(dataset, qat_cfg["images"], seed)  # a per-epoch budget
        degradations = None
        if recipe.degraded_batches:
            d = params["quant"]["degradations"]
            dataset = DegradedDataset(dataset, d["names"], d["p"], d["severities"], seed)
            degradations = dataset.identity()
        return ({"dataset": dataset, "epochs": qat_cfg["epochs"], "batch_size": qat_cfg["batch_size"],
                 "lr": qat_cfg["lr"], "weight_decay": params["train"]["weight_decay"],
                 "warmup_iters": qat_cfg["warmup_iters"], "collate_fn": collate_detections,
                 "workers": params["train"]["workers"]}, degradations)

    def extra_loss(self, job, qmodel):
        """A context manager yielding a term added to the training loss (or None)."""
        return nullcontext(None)

    def quant_info(self, job) -> dict:
        """Extra entries of the model file's quant info."""
        return {}


class MimicMethod(Method):
    family = "mimic"
    teacher = True


class PeerMethod(Method):
    """Another tool's quantizer: from the FP32 ONNX model and the calibration images to an
    integer ONNX model, evaluated deployed only (its model names end in -ort)."""
    family = "peer"
    bits: tuple[int, ...] = (8,)     # the widths the tool quantizes to (W{b}A{b})
    # what the tool quantizes: "onnx", the FP32 ONNX export; "torch", the FP32 PyTorch model
    # (its file is then an input of the job too, passed as `fp32_model`)
    source: str = "onnx"
    # the runtime its model deploys to: "onnxruntime" (an integer ONNX model, `quantize_onnx`), or
    # a runtime of the tool's own ("litert": a .tflite model, `quantize_tflite`; model names -lrt)
    runtime: str = "onnxruntime"
    # None: it calibrates on the study's calibration batches; else why it reads none of them
    calibration: str | None = None

    def unavailable(self) -> str | None:
        """Why the tool cannot run in this installation (`quantdet validate` refuses it), or None."""
        return None

    def quantize_onnx(self, fp32_onnx, out, calibration, params: dict, fp32_model=None) -> dict:
        """Write the quantized model to `out` from `fp32_onnx` (or from `fp32_model`, the FP32
        model file, for a `source = "torch"` tool), calibrating on `calibration` (an iterable of
        float image batches, B×3×S×S tensors); return its settings."""
        raise NotImplementedError


def onnx_feeds(fp32_onnx, calibration, per_image: bool = False):
    """The calibration batches as an ONNX model's input feeds ({input name: float32 array}),
    one per batch, or one per image (`per_image`, each 1×3×S×S): what every peer calibrates on,
    so that they all see the same images with the same preprocessing."""
    import numpy as np
    import onnx

    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
    for images in calibration:
        array = images.numpy().astype(np.float32)
        for part in (np.split(array, len(array)) if per_image else (array,)):
            yield {input_name: part}


class DataGenerator(Method):
    """A zero-shot data generator: makes a calibration set from the FP32 student alone."""
    family = "generate"

    def generate(self, model, payload: dict, params: dict, seed: int) -> dict:
        """Returns {"images": uint8-able tensor, "labels": per-image class labels or None,
        "trained": a generator module to save or None, "metrics": {...}}."""
        raise NotImplementedError
