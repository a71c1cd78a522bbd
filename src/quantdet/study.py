"""The study table: params in, typed job rows out, one row per job of the study's DAG.

`jobs(params)` is the one place that decides what a study runs: the Snakefile's input
functions and params, the generated dvc.yaml (`quantdet dvc-yaml`), the report and
`results/study.tsv` all read it. What is run is params' `matrix` (bit widths, methods per
family, mimic variants, mixed-precision budgets, repeat seeds); how each method runs is its
settings, and each job records only the params leaves its method reads (the method registry,
quantdet.methods), so appending to the matrix adds jobs and reruns nothing else.

Model names are built here and parsed back here, nowhere else:

    teacher-fp32, student-fp32                       FP32 detectors from `pretrain`
    student-ptq-percentile-w8a8                      a quantized model, fake-quantized in PyTorch
    student-ptq-percentile-w8a8-ort                  the same model, exported and run in onnxruntime
    student-ptq-percentile-w8a8-ov                   the same ONNX model run in OpenVINO (f32 precision)
    student-qat-daqat-w4a4-r1                        a repeat of a method with seed 1 from the study's
                                                     FP32 model (calibration draw, QAT order re-seeded)
    student-fp32-s1, student-qat-daqat-w4a4-s1       a repeat of the headline chain with seed 1
                                                     (FP32 training and quantization re-seeded:
                                                     matrix.repeat.retrain)
    student-ptq-mixed-w5a8                           mixed-precision weights: w{b} is the budget,
                                                     the average weight bits (per parameter)
    student-ptq-zeroq-w8a8, student-ptq-gdfq-w8a8    zero-shot PTQ: calibrated on generated images
    student-qat-ait-w4a4                             zero-shot QAT: AIT on GDFQ generator samples
    student-mimic-qmimic-w8a8                        quantization mimic of the teacher (distill.mimic)
    student-peer-ort_minmax-w8a8-ort                 another tool's quantizer (a peer), from the FP32
                                                     ONNX model, evaluated deployed only
    yolo11n-fp32, yolo11n-qat-daqat-w8a8-ort         a detector beside the student (the detector
                                                     axis: `models.students.yolo11n`), through its
                                                     own matrix (the study's, or its `matrix` keys)
    student-fp16-ov, student-bf16-ov, student-bf16,  a deployment precision of an FP32 detector
    student-int8_dynamic-ort                         (matrix.precisions: precision -> runtimes):
                                                     OpenVINO's inference precision, PyTorch's bf16
                                                     autocast, onnxruntime's converted model

The part after the family (ptq, qat, mimic, peer) is a method of the registry of that family.

A *condition* is ``clean`` or the name of a corruption (evaluated at every severity): the
benchmark corruptions (averaged into mPC) and the held-out ones (reported apart), then those
of the other degradation suites of ``corruptions.suites`` (each averaged apart).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

ORT_SUFFIX = "-ort"
OV_SUFFIX = "-ov"
LITERT_SUFFIX = "-lrt"    # a peer whose tool deploys to LiteRT (a .tflite model; methods/litert_peer.py)
SUFFIXES = {"torch": "", "onnxruntime": ORT_SUFFIX, "openvino": OV_SUFFIX,
            "litert": LITERT_SUFFIX}  # runtime -> name suffix
DEPLOYED = ("onnxruntime", "openvino")  # runtimes that run the exported integer ONNX model
MIXED = "mixed"  # the PTQ method with per-layer weight bits (quant.mixed)
ROLES = ("teacher", "student")
ROLE = re.compile(r"^[a-z][a-z0-9_]*$")   # a role: teacher, student or a key of models.students
# what an extra student's matrix may set (the rest is the study's): no mimic (the teacher is the
# student's) and no repeats (those measure the headline comparisons' seed-to-seed spread)
STUDENT_MATRIX_KEYS = ("bits", "ptq", "qat", "peer", "mixed", "precisions")
PRECISION = "precision"   # the stage of a deployment-precision model (quantdet.export.precision)
PRECISIONS = ("fp16", "bf16", "int8_dynamic")

_NAME = re.compile(
    r"^(?P<role>[a-z][a-z0-9_]*)-(?:(?P<fp32>fp32)|(?P<precision>fp16|bf16|int8_dynamic)|(?P<stage>ptq|qat|mimic|peer)-(?P<method>[a-z0-9_]+)"
    r"-w(?P<wbits>\d)a(?P<abits>\d))(?:-(?P<repeat>[sr])(?P<seed>\d+))?(?P<rt>-ort|-ov|-lrt)?$"
)


@dataclass(frozen=True)
class ModelName:
    role: str                 # teacher | student | an extra student (models.students)
    stage: str                # pretrain | ptq | qat | mimic | peer | precision
    method: str | None        # observer / recipe / zero-shot method / mimic variant / peer / the
                              # deployment precision (fp16, bf16, int8_dynamic); None for FP32
    weight_bits: int | None
    act_bits: int | None
    runtime: str              # torch | onnxruntime | openvino | litert (a LiteRT peer)
    seed: int | None = None   # a repeat seed; None: the study's seed
    retrained: bool = True    # with a seed: its FP32 source retrained with it (-s), or the
                              # study's FP32 model, the method alone re-seeded (-r)

    @property
    def quantized(self) -> bool:
        return self.weight_bits is not None

    @property
    def fp32(self) -> bool:
        """An FP32 model from `pretrain` (not a quantized or deployment-precision one)."""
        return self.stage == "pretrain"

    @property
    def precision(self) -> bool:
        """A deployment precision of an FP32 model (matrix.precisions)."""
        return self.stage == PRECISION

    @property
    def _seed_suffix(self) -> str:
        if self.seed is None:
            return ""
        return f"-{'s' if self.retrained or not self.quantized else 'r'}{self.seed}"

    @property
    def model(self) -> str:
        """Name of the trained/quantized model file (without the runtime suffix)."""
        if self.precision:
            return f"{self.role}-{self.method}"
        if not self.quantized:
            return f"{self.role}-fp32{self._seed_suffix}"
        return (f"{self.role}-{self.stage}-{self.method}-w{self.weight_bits}a{self.act_bits}"
                f"{self._seed_suffix}")

    @property
    def name(self) -> str:
        return self.model + SUFFIXES[self.runtime]

    @property
    def fp32_source(self) -> str:
        """The FP32 model this one was made from: of the same seed if retrained with it."""
        return f"{self.role}-fp32{self._seed_suffix if self.retrained else ''}"

    @property
    def bits_label(self) -> str:
        if self.precision:
            return self.method
        return "fp32" if not self.quantized else f"W{self.weight_bits}A{self.act_bits}"

    @property
    def base(self) -> str:
        """The name without seed and runtime: the method at its bit width."""
        return ModelName(self.role, self.stage, self.method, self.weight_bits, self.act_bits,
                         "torch").model

    @property
    def deployed(self) -> str:
        """The name of this model exported and run in onnxruntime (a LiteRT peer: in LiteRT)."""
        return self.name if self.runtime == "litert" else self.model + ORT_SUFFIX

    @property
    def compared_as(self) -> str:
        """The runtime whose models this one is compared with: a peer deployed by its own tool in
        its own runtime (LiteRT) stands with the deployed models, as the onnxruntime peers do."""
        return "onnxruntime" if self.runtime == "litert" else self.runtime

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
    runtime = {v: k for k, v in SUFFIXES.items()}[m["rt"] or ""]
    seed = None if m["seed"] is None else int(m["seed"])
    if m["precision"]:
        if m["seed"] is not None:
            raise ValueError(f"not a quantdet model name: {name!r} (a deployment precision has no repeats)")
        return ModelName(m["role"], PRECISION, m["precision"], None, None, runtime)
    if m["fp32"]:
        if m["repeat"] == "r":
            raise ValueError(f"not a quantdet model name: {name!r} (an FP32 repeat is -s, retrained)")
        return ModelName(m["role"], "pretrain", None, None, None, runtime, seed)
    return ModelName(m["role"], m["stage"], m["method"], int(m["wbits"]), int(m["abits"]), runtime,
                     seed, m["repeat"] != "r")


def quantized_model_name(role: str, stage: str, method: str, weight_bits: int, act_bits: int,
                         seed: int | None = None, retrained: bool = True) -> str:
    return ModelName(role, stage, method, weight_bits, act_bits, "torch", seed, retrained).model


def method_of(name: ModelName):
    """The registered method a quantized model's name stands for."""
    from quantdet.methods import get_method

    return get_method(name.stage, name.method)


# ---------------------------------------------------------------------------- the matrix
def matrix(params: dict) -> dict:
    return params["matrix"]


# ---------------------------------------------------------------------------- the detector axis
def extra_students(params: dict) -> list[str]:
    """The detectors beside the student (`models.students`), by name, in params order; an
    entry set to null (a study file's way to drop one of the base study's) is none."""
    return [name for name, entry in (params["models"].get("students") or {}).items() if entry is not None]


def students(params: dict) -> list[str]:
    """Every student role of the study: `student` first, then the extra ones."""
    return ["student", *extra_students(params)]


def model_key(role: str) -> str:
    """The params key that describes a role's network."""
    return f"models.{role}" if role in ROLES else f"models.students.{role}"


def model_params(params: dict, role: str) -> dict:
    """A role's network settings (detector, arch/backbone, checkpoint, ...), without the matrix
    of an extra student."""
    if role in ROLES:
        return params["models"][role]
    extra = params["models"].get("students") or {}
    if extra.get(role) is None:
        from quantdet.errors import QuantdetError

        raise QuantdetError(f"{role}: not a model of this study (models.student, models.teacher or a "
                            f"key of models.students: {', '.join(extra_students(params)) or 'none'})")
    return {k: v for k, v in extra[role].items() if k != "matrix"}


def role_matrix(params: dict, role: str = "student") -> dict:
    """What a student role runs: the study's matrix for `student`; for an extra student, the
    study's with its own `matrix` keys (STUDENT_MATRIX_KEYS) over it, no mimic, no repeats."""
    m = matrix(params)
    if role in ROLES:
        return m
    own = (params["models"]["students"][role] or {}).get("matrix") or {}
    return {**m, **{k: own[k] for k in STUDENT_MATRIX_KEYS if k in own}, "mimic": [],
            "repeat": {**m["repeat"], "seeds": []}}


def ptq_models(params: dict) -> list[str]:
    names = []
    for role in students(params):
        m = role_matrix(params, role)
        names += [quantized_model_name(role, "ptq", method, b, b) for method in m["ptq"] for b in m["bits"]]
    return names + mixed_models(params)


def mixed_models(params: dict) -> list[str]:
    """One mixed-precision PTQ model per average-bits budget."""
    act_bits = params["quant"]["mixed"]["act_bits"]
    return [quantized_model_name(role, "ptq", MIXED, b, act_bits) for role in students(params)
            for b in role_matrix(params, role)["mixed"]]


def qat_models(params: dict) -> list[str]:
    names = []
    for role in students(params):
        m = role_matrix(params, role)
        names += [quantized_model_name(role, "qat", recipe, b, b) for recipe in m["qat"] for b in m["bits"]]
    return names


def mimic_models(params: dict) -> list[str]:
    m = matrix(params)
    return [quantized_model_name("student", "mimic", variant, b, b)
            for variant in m["mimic"] for b in m["bits"]]


def quantized_models(params: dict) -> list[str]:
    """The study's quantized models (study seed); each is exported and evaluated deployed too."""
    return ptq_models(params) + qat_models(params) + mimic_models(params)


def peer_models(params: dict) -> list[str]:
    """Other tools' quantized ONNX models, at the study's widths the tool supports."""
    from quantdet.methods import get_method

    names = []
    for role in students(params):
        m = role_matrix(params, role)
        names += [quantized_model_name(role, "peer", p, b, b) for p in m.get("peer", [])
                  for b in m["bits"] if b in get_method("peer", p).bits]
    return names


def peer_runtime(model: str) -> str:
    """The runtime a peer's model deploys to: onnxruntime (an integer ONNX model) unless its
    tool has its own (methods.base.PeerMethod.runtime)."""
    return method_of(parse_model_name(model)).runtime


def peer_evaluations(model: str, rt: list[str]) -> list[str]:
    """A peer's evaluated names: an ONNX peer in onnxruntime, and OpenVINO where
    `matrix.runtimes` lists it; a peer with a runtime of its own (LiteRT) in that runtime."""
    own = peer_runtime(model)
    if own != "onnxruntime":
        return [model + SUFFIXES[own]]
    return [model + SUFFIXES[r] for r in DEPLOYED if r == "onnxruntime" or r in rt]


def tflite_file(model: str) -> str:
    """A LiteRT peer's model (methods/litert_peer.py)."""
    return f"{MODELS}/{model}.tflite"


def peer_file(model: str) -> str:
    """The file a peer job writes: its integer ONNX model, or its own runtime's."""
    return tflite_file(model) if peer_runtime(model) == "litert" else onnx_file(model)


def precision_models(params: dict) -> list[str]:
    """Each FP32 detector at each deployment precision, in each of its runtimes
    (matrix.precisions: {precision: [runtime, ...]}; quantdet.export.precision)."""
    names = []
    for role in students(params):
        for precision, rts in (role_matrix(params, role).get("precisions") or {}).items():
            names += [ModelName(role, PRECISION, precision, None, None, rt).name for rt in rts or []]
    return names


def precision_file(model: str) -> str:
    """A deployment-precision model's record: what the runtime ran, agreement, latency."""
    return f"{MODELS}/{model}.precision.json"


def precision_job(params: dict, model: str) -> "Job":
    """The job checking a deployment precision in its runtime (and writing its onnxruntime
    model): from the FP32 detector's ONNX and PyTorch files."""
    name = parse_model_name(model)
    outputs = (precision_file(model),) + ((onnx_file(name.model),) if name.runtime == "onnxruntime" else ())
    return Job(PRECISION, model, outputs,
               (onnx_file(name.fp32_source), model_file(name.fp32_source), PREPARED),
               tuple(job_reads(PRECISION)), (("model", model),), method=name.method,
               bits=name.bits_label, runtime=name.runtime, log=f"logs/precision/{model}.log",
               out=precision_file(model))


def evaluated_file(name: "ModelName") -> str:
    """The file an evaluation runs: the integer ONNX model (deployed), a precision's own
    onnxruntime model or its FP32 source (OpenVINO's ONNX, PyTorch's model file), else the
    PyTorch model."""
    if name.precision:
        if name.runtime == "onnxruntime":
            return onnx_file(name.model)
        return onnx_file(name.fp32_source) if name.runtime == "openvino" else model_file(name.fp32_source)
    if name.runtime == "litert":
        return tflite_file(name.model)
    return onnx_file(name.model) if name.runtime in DEPLOYED else model_file(name.model)


def generators(params: dict) -> list[str]:
    """The generated sets the study's methods calibrate or train on, in matrix order."""
    from quantdet.methods import get_method

    m = matrix(params)
    needed = [get_method(family, method).generated for family in ("ptq", "qat")
              for method in m[family]]
    return list(dict.fromkeys(g for g in needed if g))


def calibration_split(name: ModelName) -> str:
    """The images a quantized model calibrates on: generated ones for zero-shot methods."""
    generated = method_of(name).generated
    return synthetic_dir(generated) if generated else f"{PREPARED}/calib"


def calibration_input(name: ModelName) -> str:
    """The DAG input holding the calibration split (a whole prepare output for real data)."""
    generated = method_of(name).generated
    return synthetic_dir(generated) if generated else PREPARED


def repeat_seeds(params: dict, family: str) -> list[int]:
    """The repeat seeds of a family (`ptq` or `qat`): quantdet.config.family_seeds."""
    from quantdet.config import family_seeds
    return family_seeds(matrix(params)["repeat"], family)


def repeat_models(params: dict) -> list[str]:
    """The headline methods again for each repeat seed, at every bit width: from the study's
    FP32 student with the method re-seeded (its calibration images redrawn from train, its QAT
    data order re-seeded: `-r{seed}`), or, with `matrix.repeat.retrain`, from an FP32 student
    retrained with the seed (`student-fp32-s{seed}`, then `-s{seed}` models). They measure the
    seed-to-seed spread the headline comparisons carry. Each family takes its own seeds
    (`repeat_seeds`): QAT's spread is the wider one, so a study can give it more."""
    m = matrix(params)
    repeat = m["repeat"]
    retrain = repeat["retrain"]
    seeds = {family: repeat_seeds(params, family) for family in ("ptq", "qat")}
    names = []
    for seed in repeat["seeds"]:
        if retrain:
            names.append(ModelName("student", "pretrain", None, None, None, "torch", seed).model)
        if seed in seeds["ptq"]:
            names += [quantized_model_name("student", "ptq", p, b, b, seed, retrain)
                      for p in repeat["ptq"] if p in m["ptq"] for b in m["bits"]]
        if seed in seeds["qat"]:
            names += [quantized_model_name("student", "qat", r, b, b, seed, retrain)
                      for r in repeat["qat"] if r in m["qat"] for b in m["bits"]]
    return names


def runtimes(params: dict) -> list[str]:
    """Where the study evaluates its quantized models: `torch` (fake-quantized, simulated) and
    `onnxruntime` (the exported integer model, deployed)."""
    return list(matrix(params)["runtimes"])


def analysed_runtime(params: dict) -> str:
    """The runtime whose quantized models the study's method comparisons use: the simulation
    where the study evaluates it, else the deployed models."""
    return next(r for r in ("torch", "onnxruntime", "openvino") if r in runtimes(params))


def export_timed(name: ModelName) -> bool:
    """Whether a model's export times its latency: the study seed's quantized models (a repeat
    seed's model runs the same graph; FP32 is timed beside each quantized model)."""
    return name.quantized and name.seed is None


def teacher_needed(params: dict) -> bool:
    """The FP32 teacher is trained (and evaluated) when a method of the study learns from it."""
    from quantdet.methods import get_method

    return any(get_method("mimic", v).teacher for v in matrix(params)["mimic"])


def fp32_models(params: dict) -> list[str]:
    return (["teacher-fp32"] if teacher_needed(params) else []) + [f"{r}-fp32" for r in students(params)]


def exported_models(params: dict) -> list[str]:
    """The quantized models exported to integer ONNX: every one of the study seed, and the
    repeats where the study evaluates deployed models."""
    repeats = [m for m in repeat_models(params) if parse_model_name(m).quantized]
    return quantized_models(params) + (repeats if set(DEPLOYED) & set(runtimes(params)) else [])


def evaluated_models(params: dict) -> list[str]:
    """Every model the study evaluates: the FP32 teacher (when needed) and student, each
    quantized model in each runtime of `matrix.runtimes` (fake-quantized in PyTorch; its
    exported ONNX model in onnxruntime, in OpenVINO), the peers (deployed only: in onnxruntime,
    and OpenVINO where listed), then the repeats."""
    names = fp32_models(params)
    rt = runtimes(params)

    def evaluations(q):
        return [q + SUFFIXES[r] for r in ("torch", "onnxruntime", "openvino") if r in rt]

    for q in quantized_models(params):
        names += evaluations(q)
    for p in peer_models(params):
        names += peer_evaluations(p, rt)
    for r in repeat_models(params):
        names += evaluations(r) if parse_model_name(r).quantized else [r]
    return names + precision_models(params)


def not_run_here(params: dict) -> dict[str, str]:
    """The evaluated models this machine's runtimes cannot run, and why: a deployment
    precision whose runtime, asked of a one-convolution model, ran something else
    (quantdet.export.precision.probe; e.g. OpenVINO f16 on a CPU without AVX-512 FP16). Their
    jobs record `not_run`; intervals and the report leave them out and say why."""
    from quantdet.export.precision import probe

    reasons = {}
    for model in precision_models(params):
        name = parse_model_name(model)
        reason = probe(name.method, name.runtime)
        if reason:
            reasons[model] = reason
    return reasons


def measured_models(params: dict) -> list[str]:
    """The evaluated models this machine measures: `evaluated_models` less `not_run_here`."""
    skipped = not_run_here(params)
    return [m for m in evaluated_models(params) if m not in skipped]


def trained_models(params: dict) -> list[str]:
    """Every model file the study makes, FP32 and quantized, repeats included."""
    names = [*fp32_models(params), *quantized_models(params)]
    return names + [m for m in repeat_models(params) if m not in names]


def benchmark_corruptions(params: dict) -> list[str]:
    """The corruptions mPC averages over (Michaelis et al.: the 15 benchmark ones)."""
    return list(params["corruptions"]["names"])


def heldout_corruptions(params: dict) -> list[str]:
    """Corruptions evaluated and reported apart from mPC (the benchmark's 4 held-out ones)."""
    return list(params["corruptions"].get("heldout", []))


def suite_conditions(params: dict) -> dict[str, dict[str, list[int]]]:
    """The degradation suites the study runs (corruptions.suites), each {corruption: severities}
    (quantdet.corruptions.suites); imagecorruptions' are the benchmark and held-out ones."""
    from quantdet.corruptions import suites

    return suites.study_conditions(params["corruptions"])


def other_suites(params: dict) -> dict[str, dict[str, list[int]]]:
    """The suites besides imagecorruptions (each with its own mean and relative AP)."""
    from quantdet.corruptions.suites import DEFAULT

    return {name: c for name, c in suite_conditions(params).items() if name != DEFAULT}


def suite_of(corruption: str, params: dict) -> str:
    for name, conditions_ in suite_conditions(params).items():
        if corruption in conditions_:
            return name
    raise KeyError(f"{corruption!r} is in none of the study's degradation suites")


def corruptions(params: dict) -> list[str]:
    """Every corruption the study writes and evaluates: imagecorruptions' benchmark and
    held-out ones, then each other suite's."""
    names = benchmark_corruptions(params) + heldout_corruptions(params)
    return names + [c for suite in other_suites(params).values() for c in suite if c not in names]


def conditions(params: dict) -> list[str]:
    return ["clean", *corruptions(params)]


def severities_of(condition: str, params: dict) -> list[int]:
    if condition == "clean":
        return [0]
    for suite in other_suites(params).values():
        if condition in suite:
            return list(suite[condition])
    return list(params["corruptions"]["severities"])



# ---------------------------------------------------------------------------- the job table
# Params leaves read by the stages that are not a method's (a method's: quantdet.methods).
STAGE_READS = {
    "prepare": ("study.seed", "data"),
    "corrupt": ("corruptions.seed", "corruptions.images", "corruptions.severities"),
    "pretrain": ("study.seed", "models.input_size", "models.{role}", "train"),
    "export": ("models.input_size", "export", "evaluate"),
    "evaluate": ("models.input_size", "evaluate"),
    PRECISION: ("models.input_size", "export", "evaluate"),
    "ablation": ("study.seed", "models.input_size", "quant.ptq", "quant.ablation", "evaluate"),
    "intervals": ("study", "matrix", "corruptions", "statistics"),
    "report": ("study", "matrix", "data", "corruptions", "models", "quant", "distill", "statistics"),
}
INTERVALS = "results/metrics/intervals.json"
ABLATION = "results/metrics/percentile_ablation.json"
CLI = {"zeroshot_data": "zeroshot-data"}  # stage -> `quantdet` subcommand, where they differ


@dataclass(frozen=True)
class Job:
    """One job of the study: the `quantdet` command that makes `outputs` from `inputs`."""
    stage: str                        # prepare corrupt pretrain zeroshot_data ptq qat mimic peer export
                                      # precision evaluate ablation intervals report
    target: str                       # the model, corruption (`fog`), generator or `report`
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()       # the params leaves it reads: a change reruns it
    options: tuple[tuple[str, str], ...] = ()  # command-line options besides params/out/log
    method: str | None = None
    bits: str | None = None
    seed: int | None = None
    runtime: str | None = None
    log: str = ""
    out: str = ""                     # the --out argument (the first output unless given)
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """A unique job name (a DVC stage name: letters, digits, - and _)."""
        if self.target in (self.stage, "data"):
            return self.stage
        return f"{self.stage}-{self.target.replace('/', '-')}"

    @property
    def command(self) -> str:
        args = " ".join(f"--{k} {v}" for k, v in self.options)
        return " ".join(filter(None, [f"quantdet {CLI.get(self.stage, self.stage)} --params params.yaml",
                                      args, f"--out {self.out or self.outputs[0]}",
                                      f"--log {self.log}"]))


def corrupt_reads(corruption: str, params: dict) -> list[str]:
    """What a corrupt job reads: imagecorruptions' severities, or its own suite's settings."""
    from quantdet.corruptions import suites

    suite = suite_of(corruption, params)
    if suite == suites.DEFAULT:
        return job_reads("corrupt")
    return ([r for r in job_reads("corrupt") if r != "corruptions.severities"]
            + [f"corruptions.{key}" for key in suites.get(suite).reads(corruption)])


def job_reads(stage: str, role: str = "student", model: str | None = None,
              generator: str | None = None, params: dict | None = None) -> list[str]:
    """The params leaves a job reads: its stage's, or its method's (quantdet.methods)."""
    from quantdet.methods import method_reads

    if generator is not None:
        return method_reads("generate", generator)
    if stage in ("ptq", "qat", "mimic", "peer"):
        if model is None:
            raise ValueError(f"{stage}: the params a job reads depend on its model's method")
        return method_reads(stage, parse_model_name(model).method)
    if stage == "export" and model is not None and not parse_model_name(model).quantized:
        return ["models.input_size", "export"]  # no detections compared: `evaluate` unread
    reads = []
    for key in STAGE_READS[stage]:
        if key != "models.{role}":
            reads.append(key)
        elif role in ROLES or params is None:
            reads.append(model_key(role))
        else:  # an extra student's network settings, not its matrix: appending a method to it
            reads += [f"{model_key(role)}.{k}" for k in model_params(params, role)]   # retrains nothing
    return reads


def _model_job(params: dict, model: str) -> Job:
    """The job making a model file: pretrain (FP32), or its family's stage."""
    name = parse_model_name(model)
    log = f"logs/{name.stage}/{model}.log"
    if not name.quantized:
        options = (("role", name.role),) + ((("seed", str(name.seed)),) if name.seed is not None else ())
        # a user's trained checkpoint replaces training: the job reads (and hashes) that file
        checkpoint = model_params(params, name.role).get("checkpoint")
        return Job("pretrain", model, (model_file(model),), (PREPARED,) + ((checkpoint,) if checkpoint else ()),
                   tuple(job_reads("pretrain", name.role, params=params)), options, seed=name.seed, log=log)
    method = method_of(name)
    if name.stage == "peer":  # from the FP32 ONNX (or PyTorch) model to an integer ONNX model
        sources = (onnx_file(name.fp32_source),) + (
            (model_file(name.fp32_source),) if method.source == "torch" else ())
        out = peer_file(model)
        return Job("peer", model, (out, f"{MODELS}/{model}.export.json"), sources + (PREPARED,),
                   tuple(job_reads("peer", model=model)), (("model", model),), method=name.method,
                   bits=name.bits_label, runtime=method.runtime, log=log, out=out)
    inputs = [model_file(name.fp32_source), calibration_input(name)]
    if method.teacher:
        inputs.insert(1, model_file("teacher-fp32"))
    outputs = (model_file(model),) + tuple(f"{MODELS}/{model}{s}" for s in method.extra_outputs)
    return Job(name.stage, model, outputs, tuple(inputs), tuple(job_reads(name.stage, model=model)),
               (("model", model),), method=name.method, bits=name.bits_label, seed=name.seed,
               runtime="torch", log=log, out=model_file(model))


def jobs(params: dict) -> list[Job]:
    """Every job of the study, in DAG order."""
    rows = [Job("prepare", "data", (PREPARED,), (), tuple(job_reads("prepare")), log="logs/prepare.log")]
    for c in corruptions(params):   # one job per corruption writes all its severities: with one
        # per severity, process start-up and tracking outweighed the corrupting
        rows.append(Job("corrupt", c, (corrupted_dir(c),), (PREPARED,), tuple(corrupt_reads(c, params)),
                        (("corruption", c),), log=f"logs/corrupt/{c}.log"))
    fp32 = fp32_models(params)
    rows += [_model_job(params, m) for m in fp32]
    for g in generators(params):
        # the val split is read only for the real row of grid.png
        rows.append(Job("zeroshot_data", g, (synthetic_dir(g),), (model_file("student-fp32"), PREPARED),
                        tuple(job_reads("zeroshot_data", generator=g)), (("generator", g),),
                        method=g, log=f"logs/zeroshot_data/{g}.log"))
    rows += [_model_job(params, m) for m in trained_models(params)[len(fp32):] + peer_models(params)]
    exported = exported_models(params)
    sources = list(dict.fromkeys(parse_model_name(q).fp32_source
                                 for q in exported + peer_models(params) + precision_models(params)))
    for m in sources + exported:  # FP32 sources first: the baselines of the latency figures
        name = parse_model_name(m)
        inputs = (model_file(m), PREPARED) + ((onnx_file(name.fp32_source),) if name.quantized else ())
        rows.append(Job("export", m, (onnx_file(m), f"{MODELS}/{m}.export.json"), inputs,
                        tuple(job_reads("export", model=m)), (("model", m),), method=name.method,
                        bits=name.bits_label, seed=name.seed, runtime="onnxruntime",
                        log=f"logs/export/{m}.log", out=onnx_file(m)))
    rows += [precision_job(params, m) for m in precision_models(params)]
    splits = tuple(corrupted_dir(c) for c in corruptions(params))
    for m in evaluated_models(params):
        name = parse_model_name(m)
        # a precision's evaluation waits for its check (quantdet.export.precision)
        checked = (precision_file(m),) if name.precision else ()
        if name.runtime == "litert":   # its record holds the detector config
            checked = (f"{MODELS}/{name.model}.export.json",)
        rows.append(Job("evaluate", m, (eval_dir(m),), (evaluated_file(name), *checked, PREPARED, *splits),
                        tuple(job_reads("evaluate")), (("model", m),), method=name.method,
                        bits=name.bits_label, seed=name.seed, runtime=name.runtime,
                        log=f"logs/evaluate/{m}.log"))
    if ablation_needed(params):
        rows.append(Job("ablation", "ablation", (ABLATION,), (model_file("student-fp32"), PREPARED),
                        tuple(job_reads("ablation")), log="logs/ablation.log"))
    rows.append(Job("intervals", "intervals", (INTERVALS,),
                    (PREPARED, *splits, *(eval_dir(m) for m in evaluated_models(params))),
                    tuple(job_reads("intervals")), log="logs/intervals.log"))
    rows.append(Job("report", "report", REPORT_OUTPUTS, tuple(report_inputs(params)),
                    tuple(job_reads("report")), log="logs/report.log", out="results"))
    return rows


def find_job(params: dict, stage: str, target: str) -> Job:
    for job in jobs(params):
        if job.stage == stage and job.target == target:
            return job
    raise KeyError(f"no {stage} job for {target!r} in this study")


def ablation_needed(params: dict) -> bool:
    """The percentile ablation runs where the study runs percentile PTQ."""
    return "percentile" in matrix(params)["ptq"]


def report_inputs(params: dict) -> list[str]:
    inputs = [PREPARED, INTERVALS]  # the summary's classes; every figure's interval
    inputs += [ABLATION] if ablation_needed(params) else []
    inputs += [eval_dir(m) for m in evaluated_models(params)]
    inputs += [f"{MODELS}/{q}.export.json" for q in quantized_models(params) + peer_models(params)]
    inputs += [precision_file(m) for m in precision_models(params)]
    inputs += [f"{MODELS}/{q}{s}" for q in quantized_models(params)
               for s in method_of(parse_model_name(q)).extra_outputs]
    return inputs + [synthetic_dir(g) for g in generators(params)]


REPORT_OUTPUTS = ("results/report.md", "results/plots/ap_vs_severity.png",
                  "results/plots/rpc_per_model.png", "results/plots/ap_per_corruption.png",
                  "results/plots/accuracy_vs_robustness.png",
                  "results/tables/robustness.csv", "results/tables/ap_by_condition.csv",
                  "results/tables/detectors.csv", "results/tables/precisions.csv", "results/tables/losses.csv",
                  "results/tables/quantization_drop.csv", "results/tables/ap_vs_severity.csv",
                  "results/metrics/robustness.json", "results/metrics/export.json",
                  "results/study.tsv", "results/environment.json")

TABLE_COLUMNS = ("job", "stage", "target", "method", "bits", "seed", "runtime", "inputs",
                 "outputs", "reads")


def study_table(params: dict) -> str:
    """The job table as TSV, one row per job (lists joined by spaces)."""
    lines = ["\t".join(TABLE_COLUMNS)]
    for j in jobs(params):
        cells = [j.name, j.stage, j.target, j.method or "", j.bits or "",
                 "" if j.seed is None else str(j.seed), j.runtime or "", " ".join(j.inputs),
                 " ".join(j.outputs), " ".join(j.reads)]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


# Paths shared by the Snakefile, dvc.yaml and the stages.
PREPARED = "data/prepared"
CORRUPTED = "data/corrupted"
MODELS = "results/models"
EVAL = "results/eval"
SYNTHETIC = "data/synthetic"


def corrupted_dir(corruption: str) -> str:
    """The corrupt job's output: the corrupted splits of one corruption, a folder per severity."""
    return f"{CORRUPTED}/{corruption}"


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
