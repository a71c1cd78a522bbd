"""The study matrix: which models and conditions a params file asks for.

Model names are built here and parsed back here, nowhere else:

    teacher-fp32, student-fp32                       FP32 detectors from `pretrain`
    student-ptq-percentile-w8a8                      a quantized model, fake-quantized in PyTorch
    student-ptq-percentile-w8a8-ort                  the same model, exported and run in onnxruntime
    student-fp32-s1, student-qat-daqat-w4a4-s1       a repeat of the headline chain with seed 1
                                                     (FP32 training and quantization re-seeded)
    student-ptq-mixed-w5a8                           mixed-precision weights: w{b} is the budget,
                                                     the average weight bits (per parameter)
    student-ptq-zeroq-w8a8, student-ptq-gdfq-w8a8    zero-shot PTQ: calibrated on generated images
    student-qat-ait-w4a4                             zero-shot QAT: AIT on GDFQ generator samples
    student-mimic-qmimic-w8a8                        quantization mimic of the teacher (distill.mimic)

A *condition* is ``clean`` or the name of a corruption (evaluated at every severity): the
benchmark corruptions (averaged into mPC) and the held-out ones (reported apart).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ORT_SUFFIX = "-ort"
MIXED = "mixed"  # the PTQ method with per-layer weight bits (quant.mixed)
ROLES = ("teacher", "student")

_NAME = re.compile(
    r"^(?P<role>teacher|student)-(?:(?P<fp32>fp32)|(?P<stage>ptq|qat|mimic)-(?P<method>[a-z0-9_]+)"
    r"-w(?P<wbits>\d)a(?P<abits>\d))(?:-s(?P<seed>\d+))?(?P<ort>-ort)?$"
)


@dataclass(frozen=True)
class ModelName:
    role: str                 # teacher | student
    stage: str                # pretrain | ptq | qat | mimic
    method: str | None        # observer / recipe / zero-shot method / mimic variant; None for FP32
    weight_bits: int | None
    act_bits: int | None
    runtime: str              # torch | onnxruntime
    seed: int | None = None   # a repeat seed; None: the study's seed

    @property
    def quantized(self) -> bool:
        return self.weight_bits is not None

    @property
    def _seed_suffix(self) -> str:
        return "" if self.seed is None else f"-s{self.seed}"

    @property
    def model(self) -> str:
        """Name of the trained/quantized model file (without the runtime suffix)."""
        if not self.quantized:
            return f"{self.role}-fp32{self._seed_suffix}"
        return (f"{self.role}-{self.stage}-{self.method}-w{self.weight_bits}a{self.act_bits}"
                f"{self._seed_suffix}")

    @property
    def name(self) -> str:
        return self.model + (ORT_SUFFIX if self.runtime == "onnxruntime" else "")

    @property
    def fp32_source(self) -> str:
        """The FP32 model this one was made from (of the same seed)."""
        return f"{self.role}-fp32{self._seed_suffix}"

    @property
    def bits_label(self) -> str:
        return "fp32" if not self.quantized else f"W{self.weight_bits}A{self.act_bits}"

    @property
    def base(self) -> str:
        """The name without seed and runtime: the method at its bit width."""
        return ModelName(self.role, self.stage, self.method, self.weight_bits, self.act_bits,
                         "torch").model

    def run_seed(self, params: dict) -> int:
        """The seed this model's training and calibration use."""
        return params.get("study", {}).get("seed", 0) if self.seed is None else self.seed

    @property
    def mixed_precision(self) -> bool:
        """Per-layer weight bits; weight_bits is then the budget, an average."""
        return self.method == MIXED


def parse_model_name(name: str) -> ModelName:
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"not a quantdet model name: {name!r}")
    runtime = "onnxruntime" if m["ort"] else "torch"
    seed = None if m["seed"] is None else int(m["seed"])
    if m["fp32"]:
        return ModelName(m["role"], "pretrain", None, None, None, runtime, seed)
    return ModelName(m["role"], m["stage"], m["method"], int(m["wbits"]), int(m["abits"]), runtime,
                     seed)


def quantized_model_name(role: str, stage: str, method: str, weight_bits: int, act_bits: int,
                         seed: int | None = None) -> str:
    return ModelName(role, stage, method, weight_bits, act_bits, "torch", seed).model


def ptq_models(params: dict) -> list[str]:
    q = params["quant"]
    return [quantized_model_name("student", "ptq", method, b, b)
            for method in q["ptq"]["methods"] for b in q["bits"]] + mixed_models(params)


def mixed_models(params: dict) -> list[str]:
    """One mixed-precision PTQ model per average-bits budget."""
    m = params["quant"]["mixed"]
    return [quantized_model_name("student", "ptq", MIXED, b, m["act_bits"]) for b in m["budgets"]]


def qat_models(params: dict) -> list[str]:
    q = params["quant"]
    return [quantized_model_name("student", "qat", recipe, b, b)
            for recipe in q["qat"]["recipes"] for b in q["bits"]]


def zeroshot_models(params: dict) -> list[str]:
    """PTQ calibrated on, and QAT (AIT) trained on, generated images only."""
    z, bits = params["quant"]["zeroshot"], params["quant"]["bits"]
    return ([quantized_model_name("student", "ptq", m, b, b) for m in z["ptq_methods"] for b in bits]
            + [quantized_model_name("student", "qat", m, b, b) for m in z["qat_methods"] for b in bits])


def mimic_models(params: dict) -> list[str]:
    return [quantized_model_name("student", "mimic", variant, b, b)
            for variant in params["distill"]["mimic"]["variants"] for b in params["quant"]["bits"]]


def quantized_models(params: dict) -> list[str]:
    """The study's quantized models (study seed); each is exported and evaluated deployed too."""
    return ptq_models(params) + qat_models(params) + zeroshot_models(params) + mimic_models(params)


# Zero-shot method -> the generated set (data/synthetic/<generator>) it calibrates and trains on.
ZEROSHOT_GENERATOR = {"zeroq": "zeroq", "gdfq": "gdfq", "ait": "gdfq"}
GENERATORS = ("zeroq", "gdfq")


def is_zero_shot(name: ModelName) -> bool:
    return name.stage in ("ptq", "qat") and name.method in ZEROSHOT_GENERATOR


def calibration_split(name: ModelName) -> str:
    """The images a quantized model calibrates on: generated ones for zero-shot methods."""
    if is_zero_shot(name):
        return synthetic_dir(ZEROSHOT_GENERATOR[name.method])
    return f"{PREPARED}/calib"


def calibration_input(name: ModelName) -> str:
    """The DAG input holding the calibration split (a whole prepare output for real data)."""
    return calibration_split(name) if is_zero_shot(name) else PREPARED


def repeat_models(params: dict) -> list[str]:
    """The headline chain again for each repeat seed: the FP32 student retrained, and the
    headline PTQ methods and QAT recipes (those the study runs) re-run from it at every bit
    width. Evaluated in PyTorch only: they measure run-to-run spread, not deployment."""
    repeat, q = params.get("study", {}).get("repeat", {}), params["quant"]
    names = []
    for seed in repeat.get("seeds", []):
        names.append(ModelName("student", "pretrain", None, None, None, "torch", seed).model)
        names += [quantized_model_name("student", "ptq", m, b, b, seed)
                  for m in repeat["ptq"] if m in q["ptq"]["methods"] for b in q["bits"]]
        names += [quantized_model_name("student", "qat", r, b, b, seed)
                  for r in repeat["qat"] if r in q["qat"]["recipes"] for b in q["bits"]]
    return names


def evaluated_models(params: dict) -> list[str]:
    """Every model the study evaluates: FP32 teacher and student, each quantized model
    fake-quantized in PyTorch, and its exported ONNX model in onnxruntime, then the repeats."""
    names = ["teacher-fp32", "student-fp32"]
    for q in quantized_models(params):
        names += [q, q + ORT_SUFFIX]
    return names + repeat_models(params)


def benchmark_corruptions(params: dict) -> list[str]:
    """The corruptions mPC averages over (Michaelis et al.: the 15 benchmark ones)."""
    return list(params["corruptions"]["names"])


def heldout_corruptions(params: dict) -> list[str]:
    """Corruptions evaluated and reported apart from mPC (the benchmark's 4 held-out ones)."""
    return list(params["corruptions"].get("heldout", []))


def corruptions(params: dict) -> list[str]:
    """Every corruption the study writes and evaluates."""
    return benchmark_corruptions(params) + heldout_corruptions(params)


def conditions(params: dict) -> list[str]:
    return ["clean", *corruptions(params)]


def severities_of(condition: str, params: dict) -> list[int]:
    return [0] if condition == "clean" else list(params["corruptions"]["severities"])


# The params keys each stage reads: Snakemake rules declare them as `params:` (so a change
# reruns the rule) and dvc.yaml lists the same keys. `{role}` is the model role.
STAGE_PARAMS = {
    "prepare": ["study.seed", "data"],
    "corrupt": ["corruptions.seed"],
    "pretrain": ["study.seed", "models.input_size", "models.{role}", "train"],
    "ptq": ["study.seed", "models.input_size", "quant.ptq", "quant.degradations", "quant.mixed"],
    "qat": ["study.seed", "models.input_size", "quant.ptq", "quant.qat", "quant.degradations",
            "train.weight_decay", "train.threads", "train.processes"],
    "zeroshot_data": ["study.seed", "models.input_size", "quant.zeroshot.{generator}"],
    "mimic": ["study.seed", "models.input_size", "quant.ptq", "quant.qat.ema_momentum",
              "distill.mimic", "train.weight_decay", "train.threads", "train.processes"],
    "export": ["models.input_size", "export", "evaluate"],
    "evaluate": ["models.input_size", "evaluate"],
    "report": ["study", "data", "corruptions", "models", "quant", "distill"],
}


# Methods that a stage runs with other keys than its own: "<stage>:<method>".
STAGE_PARAMS["ptq:zeroq"] = STAGE_PARAMS["ptq:gdfq"] = ["study.seed", "models.input_size", "quant.ptq",
                                                         "quant.zeroshot.observer"]
STAGE_PARAMS["qat:ait"] = ["study.seed", "models.input_size", "quant.ptq", "quant.zeroshot.observer",
                           "quant.zeroshot.ait", "train.threads", "train.processes"]


def stage_params(stage: str, role: str = "student", model: str | None = None,
                 generator: str | None = None) -> list[str]:
    key = stage
    if model is not None and any(k.startswith(f"{stage}:") for k in STAGE_PARAMS):
        method = parse_model_name(model).method
        key = f"{stage}:{method}" if f"{stage}:{method}" in STAGE_PARAMS else stage
    return [k.format(role=role, generator=generator) for k in STAGE_PARAMS[key]]


# Paths shared by the Snakefile, dvc.yaml and the stages.
PREPARED = "data/prepared"
CORRUPTED = "data/corrupted"
MODELS = "results/models"
EVAL = "results/eval"
SYNTHETIC = "data/synthetic"


def split_dir(condition: str, severity: int) -> str:
    if condition == "clean":
        return f"{PREPARED}/val"
    return f"{CORRUPTED}/{condition}/{severity}"


def synthetic_dir(generator: str) -> str:
    return f"{SYNTHETIC}/{generator}"


def model_file(model: str) -> str:
    return f"{MODELS}/{model}.pt"


def bits_file(model: str) -> str:
    """A mixed-precision model's per-layer sensitivities and chosen bits."""
    return f"{MODELS}/{model}.bits.json"


def onnx_file(model: str) -> str:
    return f"{MODELS}/{model}.onnx"


def eval_dir(model: str) -> str:
    """One evaluation job per model writes every condition under this folder."""
    return f"{EVAL}/{model}"


def eval_metrics_file(model: str, condition: str) -> str:
    return f"{EVAL}/{model}/{condition}/metrics.json"
