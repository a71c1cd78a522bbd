# Every job's inputs and params come from the study table (quantdet.study.jobs), which the
# generated dvc.yaml and the report read too; wildcard constraints come from the method registry.
import json

from quantdet import study
from quantdet.config import select
from quantdet.methods import methods

JOBS = {(job.stage, job.target): job for job in study.jobs(config)}
CORRUPTIONS = study.corruptions(config)   # benchmark + held-out
# teacher, student and the detectors beside the student (models.students)
ROLE = "(" + "|".join(["teacher", *study.students(config)]) + ")"


def _names(family, extra_outputs):
    """Model-name pattern of a family's methods, split by whether they write files beside the
    model (a rule's outputs are fixed, so those methods get their own rule)."""
    accepted = [m.name + (r"(_l\d+(p\d+)?)?" if family == "mimic" else "")
                for m in methods(family) if bool(m.extra_outputs) == extra_outputs]
    return "(" + "|".join(accepted) + ")" if accepted else "^$"


wildcard_constraints:
    role=ROLE,
    corruption="|".join(CORRUPTIONS) or "^$",
    severity=r"\d",
    model=ROLE + r"-[a-z0-9_-]+",
    seed=r"\d+",
    generator="|".join(m.name for m in methods("generate")),


PTQ_MODEL = rf"{ROLE}-ptq-{_names('ptq', False)}-w\da\d(-[sr]\d+)?"
PTQ_FILES_MODEL = rf"{ROLE}-ptq-{_names('ptq', True)}-w\da\d(-[sr]\d+)?"
QAT_MODEL = rf"{ROLE}-qat-{_names('qat', False)}-w\da\d(-[sr]\d+)?"
MIMIC_MODEL = rf"{ROLE}-mimic-{_names('mimic', False)}-w\da\d(-[sr]\d+)?"
def _peer_names(runtime):
    """Model-name pattern of the peers deploying to `runtime` (methods.base.PeerMethod.runtime):
    an ONNX peer's job writes an .onnx file, a LiteRT peer's a .tflite one."""
    accepted = [m.name for m in methods("peer") if m.runtime == runtime]
    return "(" + "|".join(accepted) + ")" if accepted else "^$"


PEER_MODEL = rf"{ROLE}-peer-{_peer_names('onnxruntime')}-w\da\d"
LITERT_PEER_MODEL = rf"{ROLE}-peer-{_peer_names('litert')}-w\da\d"
# our models; a peer's ONNX is its own job's, a deployment precision's its precision job's
EXPORTED_MODEL = ROLE + r"-(?!peer-|(fp16|bf16|int8_dynamic)\.)[a-z0-9_-]+"   # (then .onnx, .export.json)
PRECISION = "(" + "|".join(study.PRECISIONS) + ")"


def job_of(stage, target):
    try:
        return JOBS[(stage, target)]
    except KeyError:
        raise ValueError(f"{stage} {target}: not a job of this study (see results/study.tsv)") from None


def _read(job):
    """The params leaves the job reads, as a rule's `params:` (a change reruns the job).
    Canonical JSON, so reordering keys in params.yaml reruns nothing."""
    return json.dumps(select(config, list(job.reads)), sort_keys=True)


def job_inputs(stage, target):
    """Input function: the job's inputs from the table. `target` builds the job's target
    from the wildcards."""
    return lambda wildcards: list(job_of(stage, target(wildcards)).inputs)


def job_params(stage, target):
    return lambda wildcards: _read(job_of(stage, target(wildcards)))


def export_timed(model):
    return study.export_timed(study.parse_model_name(model))


def by_model(wildcards):
    return wildcards.model


def by_precision_ort(wildcards):
    return f"{wildcards.role}-{wildcards.precision}-ort"


def by_role(wildcards):
    return f"{wildcards.role}-fp32"


def by_repeat(wildcards):
    return f"{wildcards.role}-fp32-s{wildcards.seed}"


def by_corruption(wildcards):
    return wildcards.corruption


def by_generator(wildcards):
    return wildcards.generator


def the_report(wildcards):
    return "report"


def get_final_output():
    # the generated sets, for their grid.png, even where the report would not need them
    return ["results/report.md", *[study.synthetic_dir(g) for g in study.generators(config)]]
