rule prepare:
    output:
        directory("data/prepared"),
    params:
        read=stage_params("prepare"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/prepare.log",
    shell:
        "quantdet prepare --params params.yaml --out {output} --log {log}"


rule corrupt:
    input:
        "data/prepared",
    output:
        directory("data/corrupted/{corruption}/{severity}"),
    params:
        read=stage_params("corrupt"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/corrupt/{corruption}/{severity}.log",
    shell:
        "quantdet corrupt --params params.yaml --corruption {wildcards.corruption}"
        " --severity {wildcards.severity} --out {output} --log {log}"
