rule evaluate:
    input:
        job_inputs("evaluate", by_model),
    output:
        directory("results/eval/{model}"),
    params:
        read=job_params("evaluate", by_model),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/evaluate/{model}.tsv"
    threads: config["evaluate"]["threads"]
    shell:
        "quantdet evaluate --params params.yaml --model {wildcards.model} --out {output} --log {log}"
