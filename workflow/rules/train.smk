rule pretrain:
    input:
        job_inputs("pretrain", by_role),
    output:
        "results/models/{role}-fp32.pt",
    params:
        read=job_params("pretrain", by_role),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/pretrain/{role}-fp32.log",
    benchmark:
        "benchmarks/pretrain/{role}-fp32.tsv"
    # train.pretrain_processes data-parallel processes of train.threads each (where set)
    threads: config["train"]["threads"] * (config["train"].get("pretrain_processes") or 1)
    # training is the long chain of the DAG: start it before the many short jobs
    priority: 10
    resources:
        gpu=0,
    shell:
        "quantdet pretrain --params params.yaml --role {wildcards.role} --out {output} --log {log}"


rule pretrain_repeat:
    input:
        job_inputs("pretrain", by_repeat),
    output:
        "results/models/{role}-fp32-s{seed}.pt",
    params:
        read=job_params("pretrain", by_repeat),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/pretrain/{role}-fp32-s{seed}.log",
    benchmark:
        "benchmarks/pretrain/{role}-fp32-s{seed}.tsv"
    threads: config["train"]["threads"] * (config["train"].get("pretrain_processes") or 1)
    priority: 10
    resources:
        gpu=0,
    shell:
        "quantdet pretrain --params params.yaml --role {wildcards.role} --seed {wildcards.seed}"
        " --out {output} --log {log}"
