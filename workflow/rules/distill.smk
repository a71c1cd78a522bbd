rule mimic:
    input:
        model=quantized_source,
        teacher="results/models/teacher-fp32.pt",
        data="data/prepared",
    output:
        "results/models/{model}.pt",
    wildcard_constraints:
        model=r"student-mimic-[a-z0-9_]+-w\da\d",
    params:
        read=stage_params("mimic"),
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
