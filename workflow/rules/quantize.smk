rule ptq:
    input:
        model=quantized_source,
        data=calibration_data,
    output:
        "results/models/{model}.pt",
    wildcard_constraints:
        model=r"(teacher|student)-ptq-(?!mixed-)[a-z0-9_]+-w\da\d(-s\d+)?",
    params:
        read=model_params("ptq"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/ptq/{model}.log",
    benchmark:
        "benchmarks/ptq/{model}.tsv"
    threads: config["train"]["threads"]
    shell:
        "quantdet ptq --params params.yaml --model {wildcards.model} --out {output} --log {log}"


# mixed precision: the same command, and the per-layer bits beside the model
rule ptq_mixed:
    input:
        model=quantized_source,
        data="data/prepared",
    output:
        model="results/models/{model}.pt",
        bits="results/models/{model}.bits.json",
    wildcard_constraints:
        model=r"(teacher|student)-ptq-mixed-w\da\d",
    params:
        read=stage_params("ptq"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/ptq/{model}.log",
    benchmark:
        "benchmarks/ptq/{model}.tsv"
    threads: config["train"]["threads"]
    shell:
        "quantdet ptq --params params.yaml --model {wildcards.model} --out {output.model} --log {log}"


rule qat:
    input:
        model=quantized_source,
        data=calibration_data,
    output:
        "results/models/{model}.pt",
    wildcard_constraints:
        model=r"(teacher|student)-qat-[a-z0-9_]+-w\da\d(-s\d+)?",
    params:
        read=model_params("qat"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/qat/{model}.log",
    benchmark:
        "benchmarks/qat/{model}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=0,
    shell:
        "quantdet qat --params params.yaml --model {wildcards.model} --out {output} --log {log}"
