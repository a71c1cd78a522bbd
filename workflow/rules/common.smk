# Target lists and per-stage params, all derived from params.yaml by quantdet.study.
import json

from quantdet import study
from quantdet.config import select

CORRUPTIONS = study.corruptions(config)   # benchmark + held-out
SEVERITIES = config["corruptions"]["severities"]
EVALUATED = study.evaluated_models(config)
QUANTIZED = study.quantized_models(config)


wildcard_constraints:
    role="teacher|student",
    corruption="|".join(CORRUPTIONS) or "^$",
    severity=r"\d",
    model=r"(teacher|student)-[a-z0-9_-]+",
    seed=r"\d+",
    generator="|".join(study.GENERATORS),


def stage_params(stage, role="student", model=None, generator=None):
    """The params keys a stage reads, as a rule's `params:` (a change reruns the rule).
    Canonical JSON, so reordering keys in params.yaml reruns nothing."""
    keys = study.stage_params(stage, role, model=model, generator=generator)
    return json.dumps(select(config, keys), sort_keys=True)


def role_params(stage):
    return lambda wildcards: stage_params(stage, wildcards.role)


def model_params(stage):
    """For stages where some methods read other keys (AIT in `qat`)."""
    return lambda wildcards: stage_params(stage, model=wildcards.model)


def generator_params(stage):
    return lambda wildcards: stage_params(stage, generator=wildcards.generator)


def calibration_data(wildcards):
    """data/prepared, or the generated set a zero-shot method calibrates on."""
    return study.calibration_input(study.parse_model_name(wildcards.model))


def quantized_source(wildcards):
    return study.model_file(study.parse_model_name(wildcards.model).fp32_source)


def export_inputs(wildcards):
    name = study.parse_model_name(wildcards.model)
    inputs = {"model": study.model_file(name.model), "val": study.PREPARED}
    if name.quantized:
        inputs["fp32_onnx"] = study.onnx_file(name.fp32_source)
    return inputs


def evaluate_inputs(wildcards):
    name = study.parse_model_name(wildcards.model)
    model = study.onnx_file(name.model) if name.runtime == "onnxruntime" else study.model_file(name.model)
    splits = [study.split_dir(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    return {"model": model, "val": study.PREPARED, "splits": splits}


def get_final_output():
    # the generated sets, for their grid.png, even where no listed method reads one
    generated = [study.synthetic_dir(g) for g in config["quant"]["zeroshot"]["generators"]]
    return ["results/report.md", *generated]
