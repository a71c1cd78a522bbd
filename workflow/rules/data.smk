rule prepare:
    output:
        directory("data/prepared"),
    params:
        read=job_params("prepare", lambda w: "data"),
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
        directory("data/corrupted/{corruption}"),
    params:
        read=job_params("corrupt", by_corruption),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/corrupt/{corruption}.log",
    benchmark:
        "benchmarks/corrupt/{corruption}.tsv"
    shell:
        "quantdet corrupt --params params.yaml --corruption {wildcards.corruption}"
        " --out {output} --log {log}"
