rule ptq:
    input:
        job_inputs("ptq", by_model),
    output:
        "results/models/{model}.pt",
    wildcard_constraints:
        model=PTQ_MODEL,
    params:
        read=job_params("ptq", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/ptq/{model}.log",
    benchmark:
        "benchmarks/ptq/{model}.tsv"
    threads: config["train"]["threads"]
    shell:
        "quantdet ptq --params params.yaml --model {wildcards.model} --out {output} --log {log}"


# methods writing a file beside the model (mixed precision: its per-layer bits): the same
# command, with that file as an output too
rule ptq_mixed:
    input:
        job_inputs("ptq", by_model),
    output:
        model="results/models/{model}.pt",
        bits="results/models/{model}.bits.json",
    wildcard_constraints:
        model=PTQ_FILES_MODEL,
    params:
        read=job_params("ptq", by_model),
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
        job_inputs("qat", by_model),
    output:
        "results/models/{model}.pt",
    wildcard_constraints:
        model=QAT_MODEL,
    params:
        read=job_params("qat", by_model),
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


# other tools' quantizers: the FP32 ONNX model in, an integer ONNX model out (evaluated deployed)
rule peer:
    input:
        job_inputs("peer", by_model),
    output:
        onnx="results/models/{model}.onnx",
        report="results/models/{model}.export.json",
    wildcard_constraints:
        model=PEER_MODEL,
    params:
        read=job_params("peer", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/peer/{model}.log",
    benchmark:
        "benchmarks/peer/{model}.tsv"
    threads: config["export"]["threads"]
    shell:
        "quantdet peer --params params.yaml --model {wildcards.model} --out {output.onnx} --log {log}"


rule peer_litert:
    input:
        job_inputs("peer", by_model),
    output:
        tflite="results/models/{model}.tflite",
        report="results/models/{model}.export.json",
    wildcard_constraints:
        model=LITERT_PEER_MODEL,
    params:
        read=job_params("peer", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/peer/{model}.log",
    benchmark:
        "benchmarks/peer/{model}.tsv"
    threads: config["export"]["threads"]
    shell:
        "quantdet peer --params params.yaml --model {wildcards.model} --out {output.tflite} --log {log}"
