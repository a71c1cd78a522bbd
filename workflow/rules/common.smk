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


def stage_params(stage, role="student"):
    """The params keys a stage reads, as a rule's `params:` (a change reruns the rule).
    Canonical JSON, so reordering keys in params.yaml reruns nothing."""
    return json.dumps(select(config, study.stage_params(stage, role)), sort_keys=True)


def role_params(stage):
    return lambda wildcards: stage_params(stage, wildcards.role)


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
    return ["results/report.md"]
