rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        directory("results/eval/{model}/{condition}"),
    params:
        read=stage_params("evaluate"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/evaluate/{model}/{condition}.log",
    threads: config["evaluate"]["threads"]
    shell:
        "quantdet evaluate --params params.yaml --model {wildcards.model}"
        " --condition {wildcards.condition} --out {output} --log {log}"
