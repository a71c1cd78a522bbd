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
    threads: config["export"]["threads"]
    shell:
        "quantdet export --params params.yaml --model {wildcards.model} --out {output.onnx} --log {log}"
