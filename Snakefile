# quantdet: one study, from data to report. The rules only wire files to `quantdet <stage>`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


# params.yaml may be a study overlay: merged onto the project's params.yaml (the base study)
# and checked (schema, method registry) as every `quantdet` command does.
from quantdet.config import validate_params

config.update(validate_params(config, source="params.yaml", check_backbones=True))


validate(config, schema="workflow/schemas/params.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Run by Snakemake itself, not submitted as cluster jobs (--executor slurm): the report only
# reads the evaluation files and draws tables and plots.
localrules:
    all,
    report,


onstart:
    shell("quantdet track-study --params params.yaml")


rule all:
    default_target: True
    input:
        get_final_output(),
