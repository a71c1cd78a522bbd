# Zero-shot data: generated from the FP32 student alone, by a registered generator. The zero-shot models themselves are
# ordinary ptq/qat jobs (quantize.smk) whose calibration input is data/synthetic/<generator>.
rule zeroshot_data:
    input:
        job_inputs("zeroshot_data", by_generator),
    output:
        directory("data/synthetic/{generator}"),
    params:
        read=job_params("zeroshot_data", by_generator),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/zeroshot_data/{generator}.log",
    benchmark:
        "benchmarks/zeroshot_data/{generator}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=0,
    shell:
        "quantdet zeroshot-data --params params.yaml --generator {wildcards.generator}"
        " --out {output} --log {log}"
