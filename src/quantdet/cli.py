"""`quantdet <stage> --params params.yaml ...`: one subcommand per stage, all called the same
way by Snakemake rules and DVC stages."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import textwrap
from pathlib import Path

from quantdet.errors import QuantdetError

LATENCY_RUNTIMES = ("onnxruntime", "openvino", "openvino-default", "openvino-f16", "openvino-bf16", "torch",
                    "torch-bf16", "litert")   # quantdet.export.latency.RUNTIMES (not imported: --help stays fast)

# The documentation site's results page: `quantdet measured` rewrites its measured blocks.
RESULTS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "results.md"


# What each command reads and writes (paths relative to the study folder, the working directory
# of Snakemake and DVC jobs): `quantdet <stage> --help` prints it, and the documentation's CLI
# reference (scripts/gen_docs.py) is generated from the same help.
READS_WRITES = {
    "validate": ("the params file (--params), the base params.yaml and "
                 "workflow/schemas/params.schema.yaml", "the merged params, on standard output"),
    "methods": ("the method registry (src/quantdet/methods/, modules named in QUANTDET_METHODS); "
                "no params file: it runs in any folder", "the list, on standard output"),
    "detectors": ("the detector registry (src/quantdet/detectors/, modules named in "
                  "QUANTDET_DETECTORS); no params file: it runs in any folder", "the list, on standard output"),
    "suites": ("the degradation-suite registry (src/quantdet/corruptions/suites/, modules named in "
               "QUANTDET_SUITES); no params file: it runs in any folder", "the list, on standard output"),
    "compose": ("the study files given and the base params.yaml", "the complete params file --out"),
    "dvc-yaml": ("the params file", "dvc.yaml (--out), one DVC stage per job of the study table"),
    "study-table": ("the params file", "the study table as TSV (--out, default standard output)"),
    "measured": ("a finished study (--root): params.yaml, results/metrics/intervals.json, "
                 "results/environment.json, .snakemake/log/, benchmarks/, results/models/*.export.json, "
                 "results/metrics/percentile_ablation.json",
                 "its measured block in the results page (--into, default docs/results.md of the project), "
                 "or standard output with --into -"),
    "reproduce": ("two finished studies (--root, --against): results/metrics/, results/eval/, "
                  "results/models/*.export.json and *.train.json, data/prepared/summary.json",
                  "the comparison on standard output, and into the results page's reproduced block with --into"),
    "track-study": ("the params file; MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db)",
                    "the study's MLflow parent run"),
    "track-flush": ("results/tracking/pending/*.json", "one MLflow run per queued job"),
    "prepare": ("the dataset named by data.source in the params file (embedded, coco, voc, yolo)",
                "data/prepared/ (--out): COCO-format train/, val/, calib/ and summary.json"),
    "corrupt": ("data/prepared/val", "data/corrupted/CORRUPTION/SEVERITY/ (--out), one folder per severity"),
    "pretrain": ("data/prepared/ (or the checkpoint of models.ROLE.checkpoint, imported instead of trained)",
                 "results/models/ROLE-fp32[-sSEED].pt (--out); per-epoch checkpoints in results/checkpoints/"),
    "zeroshot-data": ("results/models/student-fp32.pt and data/prepared/",
                      "data/synthetic/GENERATOR/ (--out): the generated images, grid.png"),
    "ptq": ("results/models/DETECTOR-fp32.pt and the calibration images (data/prepared/calib, or "
            "data/synthetic/GENERATOR/ for a zero-shot method)",
            "results/models/MODEL.pt (--out); a mixed-precision model also MODEL.bits.json"),
    "qat": ("results/models/DETECTOR-fp32.pt and data/prepared/ (data/synthetic/gdfq/ for ait)",
            "results/models/MODEL.pt (--out)"),
    "mimic": ("results/models/student-fp32.pt, results/models/teacher-fp32.pt and data/prepared/",
              "results/models/MODEL.pt (--out)"),
    "peer": ("results/models/DETECTOR-fp32.onnx (the .pt for a PyTorch peer) and data/prepared/calib",
             "results/models/MODEL.onnx (--out) and MODEL.export.json (latency beside the FP32 source)"),
    "export": ("results/models/MODEL.pt, data/prepared/val and, for a quantized model, its FP32 ONNX source",
               "results/models/MODEL.onnx (--out) and MODEL.export.json (latency, agreement, sizes)"),
    "evaluate": ("the model (results/models/MODEL.pt, or MODEL.onnx for a -ort/-ov model), "
                 "data/prepared/val and data/corrupted/",
                 "results/eval/MODEL/CONDITION/ (--out): COCO metrics.json and detections"),
    "ablation": ("results/models/student-fp32.pt and data/prepared/",
                 "results/metrics/percentile_ablation.json (--out)"),
    "intervals": ("results/eval/*/ and data/prepared/, data/corrupted/",
                  "results/metrics/intervals.json (--out)"),
    "bench": ("the ONNX files given (quantdet model files, .pt, for the torch runtimes)",
              "a latency table on standard output, and JSON with --out"),
    "precision": ("results/models/DETECTOR-fp32.onnx and .pt, data/prepared/val",
                  "results/models/MODEL.precision.json (--out: what the runtime ran, agreement with FP32, "
                  "latency) and, for an onnxruntime precision, results/models/DETECTOR-PRECISION.onnx"),
    "report": ("results/eval/, results/metrics/intervals.json, results/models/*.export.json and the "
               "other jobs' outputs",
               "results/report.md, results/plots/*.png, results/tables/, results/metrics/*.json, "
               "results/study.tsv, results/environment.json (under --out)"),
}

def _description(name: str, help_text: str) -> str:
    reads, writes = READS_WRITES[name]
    return "\n\n".join(textwrap.fill(text, 92) for text in
                        (help_text[0].upper() + help_text[1:] + ".", f"Reads: {reads}.", f"Writes: {writes}."))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantdet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`quantdet STAGE --help` says what a stage reads and writes. `quantdet methods`, "
               "`quantdet detectors` and `quantdet suites` list the registries in any folder.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="study parameters (params.yaml)")
    common.add_argument("--log", help="also write the log to this file")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name, help_text):
        return sub.add_parser(name, parents=[common], help=help_text, description=_description(name, help_text),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    stage("validate", "validate params.yaml against the schema and print it merged onto the base study")
    stage("methods", "list the registered methods of each family, with the params leaves they read")
    stage("detectors", "list the registered detector families and the architectures each accepts")
    stage("suites", "list the registered degradation suites and the degradations each writes")
    p = stage("compose", "write a study overlay merged onto the base params.yaml (a complete params file)")
    p.add_argument("overlays", nargs="+", help="study files (overlays), applied in order")
    p.add_argument("--out", required=True)
    p = stage("dvc-yaml", "write dvc.yaml for this params file from the study table")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    p = stage("study-table", "write the study table (one row per job) as TSV")
    p.add_argument("--out", default="-", help="a file, or - for standard output")
    p = stage("measured", "a measured block of the results page (docs/results.md), generated from a "
                          "finished study's outputs")
    p.add_argument("--root", default=".", help="the folder of the finished study")
    p.add_argument("--into", "--readme", dest="into", metavar="PAGE",
                   help="rewrite this page's measured block (default: the project's docs/results.md; "
                        "- prints it instead; --readme is the former name of this option)")
    p.add_argument("--block", help="a named block (<!-- measured:NAME:begin -->) instead of the default one")
    p.add_argument("--stages", nargs="+", help="only the FP32 models and these stages' or methods' models "
                   "(e.g. mimic; zeroq gdfq ait minmax), "
                   "with the comparisons among them")
    p = stage("reproduce", "compare two finished runs of a study number by number (timings left out); "
              "exit status 1 when they differ")
    p.add_argument("--root", default=".", help="the folder of the first finished study")
    p.add_argument("--against", required=True, help="the folder of the second")
    p.add_argument("--into", "--readme", dest="into", metavar="PAGE",
                   help="also write the result into this page's reproduced block (e.g. docs/results.md; "
                        "--readme is the former name of this option)")
    stage("track-study", "create the study's MLflow parent run (once, before jobs fan out)")
    stage("track-flush", "log the job runs queued under results/tracking/pending/ to MLflow "
          "(tracking.log: report; the report job does it at the end of a study)")
    p = stage("prepare", "write the COCO-format train/val/calib splits")
    p.add_argument("--out", default="data/prepared")
    p = stage("corrupt", "write the corrupted copies of the val split for one corruption")
    p.add_argument("--corruption", required=True)
    p.add_argument("--severity", type=int, help="only this severity (default: every one of "
                   "corruptions.severities, a subfolder each under --out)")
    p.add_argument("--out")
    p = stage("pretrain", "train an FP32 detector from scratch, or import a trained checkpoint")
    p.add_argument("--role", required=True, help="teacher, student or a key of models.students")
    p.add_argument("--seed", type=int, help="a repeat seed (study.repeat.seeds) instead of study.seed")
    p.add_argument("--out")
    p = stage("zeroshot-data", "generate a calibration set from the FP32 student alone "
                               "(a registered generator: ZeroQ distilled images or a GDFQ generator)")
    p.add_argument("--generator", required=True)
    p.add_argument("--out")
    for name, text in (("ptq", "post-training quantization of an FP32 model"),
                       ("qat", "quantization-aware training of an FP32 model (a named recipe)"),
                       ("mimic", "quantization mimic: fine-tune the quantized student against "
                                 "the FP32 teacher's features"),
                       ("peer", "another tool's quantizer (a registered peer method) applied to "
                                "the FP32 ONNX model"),
                       ("export", "export a model to ONNX (QDQ for quantized models), "
                                  "measure latency and simulated-vs-deployed agreement")):
        p = stage(name, text)
        p.add_argument("--model", required=True, help="the model's name, e.g. student-ptq-dacal-w8a8")
        p.add_argument("--out")
    p = stage("precision", "a deployment precision (fp16, bf16, int8_dynamic) of an FP32 detector in "
                           "a runtime: convert, check what the runtime ran, time it against FP32")
    p.add_argument("--model", required=True, help="the model's name, e.g. student-fp16-ov")
    p.add_argument("--out")
    p = stage("evaluate", "COCO box metrics of one model on clean data and on every corruption "
                          "and severity of the study")
    p.add_argument("--model", required=True, help="the model's name, e.g. student-ptq-dacal-w8a8-ort")
    p.add_argument("--out", help="folder for the model's results (one subfolder per condition)")
    p = stage("ablation", "where percentile clipping costs accuracy: percentile on every "
                          "quantizer group but one, and on one alone")
    p.add_argument("--out", default="results/metrics/percentile_ablation.json")
    p = stage("intervals", "95%% intervals of every model's figures and every comparison "
                           "(image bootstrap, paired)")
    p.add_argument("--out", default="results/metrics/intervals.json")
    p = stage("bench", "latency of ONNX models, each timed in its own process, with ratios "
                       "against an FP32 baseline (the first model unless --baseline)")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx", help="ONNX files (a .pt model file for torch runtimes)")
    p.add_argument("--runtime", nargs="+", default=["onnxruntime"],
                   choices=list(LATENCY_RUNTIMES),
                   help="openvino: precision hint f32; openvino-default: its default hint; "
                        "openvino-f16, openvino-bf16: those inference precisions; torch, torch-bf16: "
                        "a quantdet model file (.pt) in PyTorch, float32 or under bf16 autocast")
    p.add_argument("--baseline", help="the FP32 model the ratios are against")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30, help="timed runs per repetition")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-reps", type=int, default=5,
                   help="repetitions at most, until two consecutive agree within 5%%")
    p.add_argument("--out", help="also write the results as JSON")
    p = stage("report", "P/mPC/rPC tables, plots and results/report.md")
    p.add_argument("--out", default="results", help="results root")
    missing = set(sub.choices) ^ set(READS_WRITES)
    assert not missing, f"READS_WRITES and the stages differ: {sorted(missing)}"
    return parser


# Stages that train with quantdet.train.loop.fit: `train.processes > 1` runs them data-parallel.
TRAINING_STAGES = ("pretrain", "qat", "mimic")


def _setup_logging(log_file: str | None) -> None:
    from quantdet.train import distributed

    handlers = [logging.StreamHandler(sys.stderr)]
    # One log file per job: the torchrun launcher starts it, rank 0 appends, other ranks don't.
    if log_file and distributed.is_main():
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a" if distributed.launched() else "w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(args, argv: list[str] | None = None) -> object:
    """Run the stage; a training stage asked for several processes re-launches ``argv`` (this
    command's arguments) under torchrun instead and returns torchrun's exit status."""
    from quantdet import stages
    from quantdet.config import load_params, training_processes
    from quantdet.train import distributed

    if args.stage == "compose":
        return _compose(args)
    if args.stage == "bench":
        return _bench(args)
    if args.stage == "reproduce":
        from quantdet.report.reproduce import reproduced, write_reproduce
        result = write_reproduce(args.root, args.against, args.into)
        sys.stdout.write(result["markdown"] + "\n")
        return result if reproduced(result) else 1
    if args.stage == "methods":      # the registries need no params file: these run in any folder
        return _list_methods()
    if args.stage == "detectors":
        return _list_detectors()
    if args.stage == "suites":
        return _list_suites()
    if args.stage == "measured":
        from quantdet.report.measured import write_measured
        into = None if args.into == "-" else (args.into or RESULTS_PAGE)
        block = write_measured(args.root, into, args.block, args.stages)
        if into is None:
            sys.stdout.write(block + "\n")
        else:
            print(f"{into}: measured block {args.block or '(default)'} rewritten")
        return block
    params = load_params(args.params, check_backbones=args.stage == "validate")
    processes = training_processes(params, args.stage)
    if args.stage == "pretrain":
        from quantdet import study

        if study.model_params(params, args.role).get("checkpoint"):
            processes = 1  # a trained checkpoint is imported, not trained: no data-parallel launch
    if args.stage in TRAINING_STAGES and processes > 1 and not distributed.launched():
        logging.getLogger("quantdet").info("%s: %d data-parallel processes under torchrun",
                                           args.stage, processes)
        return distributed.relaunch(processes, sys.argv[1:] if argv is None else argv)
    if args.stage == "validate":
        import yaml
        print(yaml.safe_dump(params, sort_keys=False))
        return params
    if args.stage == "dvc-yaml":
        from quantdet.dvc_yaml import write_dvc_yaml
        return write_dvc_yaml(params, args.out, check=args.check)
    if args.stage == "study-table":
        from quantdet import study
        table = study.study_table(params)
        if args.out == "-":
            sys.stdout.write(table)
        else:
            Path(args.out).write_text(table)
        return table
    if args.stage == "track-study":
        from quantdet import tracking
        run_id = tracking.study_run(params)
        print(run_id or "tracking disabled")
        return run_id
    if args.stage == "track-flush":
        from quantdet import tracking
        run_ids = tracking.flush(params)
        print(f"{len(run_ids)} queued job runs logged")
        return run_ids
    if args.stage == "prepare":
        return stages.prepare(params, args.out)
    if args.stage == "corrupt":
        return stages.corrupt(params, args.corruption, args.severity, args.out)
    if args.stage == "pretrain":
        return stages.pretrain(params, args.role, args.out, seed=args.seed)
    if args.stage == "zeroshot-data":
        return stages.zeroshot_data(params, args.generator, args.out)
    if args.stage == "mimic":
        return stages.mimic(params, args.model, args.out)
    if args.stage == "peer":
        return stages.peer(params, args.model, args.out)
    if args.stage == "ptq":
        return stages.ptq(params, args.model, args.out)
    if args.stage == "qat":
        return stages.qat(params, args.model, args.out)
    if args.stage == "export":
        return stages.export(params, args.model, args.out)
    if args.stage == "evaluate":
        return stages.evaluate(params, args.model, args.out)
    if args.stage == "precision":
        return stages.precision(params, args.model, args.out)
    if args.stage == "intervals":
        return stages.intervals(params, args.out)
    if args.stage == "ablation":
        return stages.ablation(params, args.out)
    if args.stage == "report":
        return stages.report(params, args.out)
    raise AssertionError(args.stage)


def _compose(args) -> dict:
    import yaml

    from quantdet.config import END_DECLARATION, END_MARKER, compose, read_yaml, validate_params
    from quantdet.io_utils import atomic_path

    params = compose(*(read_yaml(p) for p in args.overlays))
    validate_params(params, source=" + ".join(args.overlays))
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(f"{END_DECLARATION} (a file cut short is refused)\n"
                             f"# composed by `quantdet compose {' '.join(args.overlays)}` from the base "
                             "params.yaml\n" + yaml.safe_dump(params, sort_keys=False, width=100) + f"{END_MARKER}\n")
    return params


def _bench(args) -> dict:
    from quantdet.export.latency import benchmark, format_table
    from quantdet.io_utils import write_json

    report = benchmark(args.models, args.runtime, baseline=args.baseline, batch=args.batch,
                       threads=args.threads, runs=args.runs, warmup=args.warmup,
                       max_reps=args.max_reps)
    print(format_table(report))
    if args.out:
        write_json(args.out, report)
    return report


def _list_methods() -> list:
    from quantdet.methods import FAMILIES, method_reads, methods

    for family in FAMILIES:
        print(f"{family}:")
        for m in methods(family):
            print(f"  {m.name:12s} {m.description}")
            print(f"  {'':12s} reads: {', '.join(method_reads(family, m.name))}")
    return methods()


def _list_detectors() -> list:
    from quantdet import detectors

    for family in detectors.families():
        print(f"{family.name}: {family.description}")
        archs = family.architectures()
        print(f"  arch: {', '.join(archs[:40])}" + (f", ... ({len(archs)} in all)" if len(archs) > 40 else ""))
        for method, reason in family.unsupported.items():
            print(f"  not with {method}: {reason}")
    return detectors.families()


def _list_suites() -> list:
    from quantdet.corruptions import suites

    for suite in suites.suites():
        print(f"{suite.name}: {suite.description}")
        print(f"  writes: {', '.join(f'{c} ({min(suite.severities(c))}-{max(suite.severities(c))})' for c in suite.known())}")
        print(f"  from: {suite.reference}")
    return suites.suites()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log)
    log = logging.getLogger("quantdet")
    log.info("quantdet %s", " ".join(argv if argv is not None else sys.argv[1:]))
    try:
        result = run(args, argv)
    except QuantdetError as e:
        log.error("%s", e)
        print(f"quantdet {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk or quota: every output is written to a temporary name first, so none of
        # this job's outputs was kept (its temporary file was removed on the way out)
        where = f" writing {e.filename}" if e.filename else ""
        message = (f"no space left on the device{where} ({os.strerror(e.errno)}): free space "
                   "there and run the same command again; this job kept none of its outputs")
        log.error("%s", message)
        print(f"quantdet {args.stage}: error: {message}", file=sys.stderr)
        return 28
    if args.stage in TRAINING_STAGES and isinstance(result, int):  # torchrun's exit status
        return result
    if args.stage == "reproduce" and result == 1:  # the two studies differ
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
