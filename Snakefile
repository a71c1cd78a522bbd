# quantdet: one study, from data to report. The rules only wire files to `quantdet <stage>`.
from snakemake.utils import min_version, validate

min_version("9.0")


# params.yaml read by quantdet first, as every `quantdet` command reads it: a damaged or
# cut-short file is refused naming the file and line (Snakemake's own parse names neither).
from quantdet.config import check_params_file, validate_params

PARAMS_LINES = check_params_file("params.yaml")


configfile: "params.yaml"


# Locks left by a Snakemake that was killed are released (src/quantdet/stale_locks.py); with
# the default profile's rerun-incomplete, the same command finishes a killed study.
if workflow.is_main_process:
    from quantdet.stale_locks import release_stale_locks

    for _lock in release_stale_locks():
        print(f"quantdet: removed {_lock}: its Snakemake was killed and holds it no more")


# params.yaml may be a study overlay: merged onto the project's params.yaml (the base study)
# and checked (schema, method registry) as every `quantdet` command does.
config.update(validate_params(config, source="params.yaml", check_backbones=True, lines=PARAMS_LINES))


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
