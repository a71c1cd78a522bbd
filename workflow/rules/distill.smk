rule mimic:
    input:
        job_inputs("mimic", by_model),
    output:
        "results/models/{model}.pt",
    wildcard_constraints:
        model=MIMIC_MODEL,
    params:
        read=job_params("mimic", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/mimic/{model}.log",
    benchmark:
        "benchmarks/mimic/{model}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=0,
    shell:
        "quantdet mimic --params params.yaml --model {wildcards.model} --out {output} --log {log}"
