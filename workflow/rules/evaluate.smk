rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        directory("results/eval/{model}"),
    params:
        read=stage_params("evaluate"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/evaluate/{model}.log",
    threads: config["evaluate"]["threads"]
    shell:
        "quantdet evaluate --params params.yaml --model {wildcards.model} --out {output} --log {log}"
