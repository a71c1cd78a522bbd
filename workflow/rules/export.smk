rule export:
    input:
        job_inputs("export", by_model),
    output:
        onnx="results/models/{model}.onnx",
        report="results/models/{model}.export.json",
    wildcard_constraints:
        model=EXPORTED_MODEL,
    params:
        read=job_params("export", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/export/{model}.log",
    benchmark:
        "benchmarks/export/{model}.tsv"
    # the threads latency is timed with, alone on them; an export that times nothing (FP32, a
    # repeat seed's model) needs one
    threads: lambda wildcards: config["export"]["threads"] if export_timed(wildcards.model) else 1
    shell:
        "quantdet export --params params.yaml --model {wildcards.model} --out {output.onnx} --log {log}"


# A deployment precision (matrix.precisions) in onnxruntime: its converted model and its record.
rule precision_onnx:
    input:
        job_inputs("precision", by_precision_ort),
    output:
        report="results/models/{role}-{precision}-ort.precision.json",
        onnx="results/models/{role}-{precision}.onnx",
    wildcard_constraints:
        precision=PRECISION,
    params:
        read=job_params("precision", by_precision_ort),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/precision/{role}-{precision}-ort.log",
    benchmark:
        "benchmarks/precision/{role}-{precision}-ort.tsv"
    threads: config["export"]["threads"]   # latency is timed on them
    shell:
        "quantdet precision --params params.yaml --model {wildcards.role}-{wildcards.precision}-ort "
        "--out {output.report} --log {log}"


# A deployment precision in OpenVINO or PyTorch: it runs the FP32 files; its record.
rule precision:
    input:
        job_inputs("precision", by_model),
    output:
        "results/models/{model}.precision.json",
    wildcard_constraints:
        model=ROLE + "-" + PRECISION + "(-ov)?",
    params:
        read=job_params("precision", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/precision/{model}.log",
    benchmark:
        "benchmarks/precision/{model}.tsv"
    threads: config["export"]["threads"]
    shell:
        "quantdet precision --params params.yaml --model {wildcards.model} --out {output} --log {log}"
