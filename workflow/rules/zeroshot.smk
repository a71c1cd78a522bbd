# Zero-shot data: generated from the FP32 student alone. The zero-shot models themselves are
# ordinary ptq/qat jobs (quantize.smk) whose calibration input is data/synthetic/<generator>.
rule zeroshot_data:
    input:
        model="results/models/student-fp32.pt",
        # only the val split is read, for the real row of grid.png
        data="data/prepared",
    output:
        directory("data/synthetic/{generator}"),
    params:
        read=generator_params("zeroshot_data"),
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
