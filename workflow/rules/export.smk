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
