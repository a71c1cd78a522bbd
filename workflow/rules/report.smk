rule report:
    input:
        evals=expand("results/eval/{model}", model=EVALUATED),
        exports=expand("results/models/{model}.export.json", model=QUANTIZED),
        bits=[study.bits_file(m) for m in QUANTIZED if study.parse_model_name(m).mixed_precision],
        generated=[study.synthetic_dir(g) for g in config["quant"]["zeroshot"]["generators"]],
    output:
        report(
            "results/report.md",
            caption="../report/study_report.rst",
            category="Report",
        ),
        report(
            "results/plots/ap_vs_severity.png",
            caption="../report/ap_vs_severity.rst",
            category="Plots",
        ),
        report(
            "results/plots/rpc_per_model.png",
            caption="../report/rpc_per_model.rst",
            category="Plots",
        ),
        report(
            "results/plots/ap_per_corruption.png",
            caption="../report/ap_per_corruption.rst",
            category="Plots",
        ),
        report(
            "results/tables/robustness.csv",
            caption="../report/robustness_table.rst",
            category="Tables",
        ),
        "results/tables/ap_by_condition.csv",
        "results/tables/quantization_drop.csv",
        "results/tables/ap_vs_severity.csv",
        "results/metrics/robustness.json",
        "results/metrics/export.json",
    params:
        read=stage_params("report"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/report.log",
    shell:
        "quantdet report --params params.yaml --out results --log {log}"
