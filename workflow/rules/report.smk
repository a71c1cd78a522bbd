rule report:
    input:
        job_inputs("report", the_report),
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
            "results/plots/accuracy_vs_robustness.png",
            caption="../report/accuracy_vs_robustness.rst",
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
        "results/tables/detectors.csv",
        "results/tables/quantization_drop.csv",
        "results/tables/ap_vs_severity.csv",
        "results/metrics/robustness.json",
        "results/metrics/export.json",
        "results/study.tsv",
        "results/environment.json",
    params:
        read=job_params("report", the_report),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/report.log",
    shell:
        "quantdet report --params params.yaml --out results --log {log}"


rule intervals:
    input:
        job_inputs("intervals", lambda wildcards: "intervals"),
    output:
        "results/metrics/intervals.json",
    params:
        read=job_params("intervals", lambda wildcards: "intervals"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/intervals.log",
    benchmark:
        "benchmarks/intervals.tsv"
    threads: config["statistics"]["processes"]
    shell:
        "quantdet intervals --params params.yaml --out {output} --log {log}"


rule ablation:
    input:
        job_inputs("ablation", lambda wildcards: "ablation"),
    output:
        "results/metrics/percentile_ablation.json",
    params:
        read=job_params("ablation", lambda wildcards: "ablation"),
    conda:
        "../envs/quantdet.yaml"
    log:
        "logs/ablation.log",
    benchmark:
        "benchmarks/ablation.tsv"
    shell:
        "quantdet ablation --params params.yaml --out {output} --log {log}"
