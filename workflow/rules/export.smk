rule export:
    input:
        unpack(export_inputs),
    output:
        onnx="results/models/{model}.onnx",
        report="results/models/{model}.export.json",
    params:
        read=stage_params("export"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/export/{model}.log",
    benchmark:
        "benchmarks/export/{model}.tsv"
    threads: config["export"]["threads"]
    shell:
        "quantdet export --params params.yaml --model {wildcards.model} --out {output.onnx} --log {log}"
