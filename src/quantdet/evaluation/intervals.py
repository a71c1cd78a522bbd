"""Intervals for a finished study: every model's P, mPC, rPC, mPC per corruption group
(held-out, seen, unseen), AP per corruption and per severity, and the paired difference of
every comparison the report makes, each with its 95% interval (AP as fractions).

Reads what the evaluate stage leaves, relative to the study root: for each model and
condition `results/eval/<model>/<condition>/metrics.json`, whose results name per severity
the detections file and the split folder (its `annotations.json` is the ground truth).
Each (model, condition, severity) is matched once; one matrix of image resamples then
serves every model and condition (see `quantdet.evaluation.bootstrap`).
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from quantdet import study
from quantdet.errors import QuantdetError
from quantdet.evaluation.bootstrap import (ResampledAP, match_images, match_images_by_area, paired_differences,
                                           resample_counts, resampled_recall, robustness_replicates, summary)
from quantdet.io_utils import read_json, write_json

log = logging.getLogger(__name__)

INTERVALS_FILE = "results/metrics/intervals.json"
DIFFERENCE_METRICS = ("P", "mPC", "rPC", "mPC_heldout", "mPC_seen", "mPC_unseen", "AP_small", "AP_medium",
                      "AP_large")
SIZES = ("small", "medium", "large")   # COCO's object sizes: AP_small ... on the clean images
AP_TOLERANCE = 1e-9   # recomputed AP against the evaluate stage's own: same arithmetic


def write_study_intervals(params: dict, root=".", out: str | Path | None = None, **options) -> Path:
    """`study_intervals` written as JSON (default: <root>/results/metrics/intervals.json)."""
    out = Path(root) / INTERVALS_FILE if out is None else Path(out)
    write_json(out, _finite(study_intervals(params, root, **options)))
    return out


def study_intervals(params: dict, root=".", resamples: int = 1000, seed: int = 0,
                    level: float = 0.95, models: list[str] | None = None, processes: int = 1,
                    recall_score: float = 0.25) -> dict:
    """Every model's figures and every comparison's paired difference, with intervals.

    ``models``: the study's evaluated models by default (all must have been evaluated).
    ``processes``: models are matched and resampled in this many processes (the cost is
    per (model, condition): COCO matching, then the resamples). On the clean images each
    model also gets AP per object size (``AP_small``, ``AP_medium``, ``AP_large``, COCO's
    sizes) and, per class, the recall at IoU 0.5 of its detections scoring at least
    ``recall_score`` (``recall``), compared with its FP32 model like every other figure."""
    started = time.perf_counter()
    root = Path(root)
    models = study.evaluated_models(params) if models is None else models
    not_run = {m: reason for m in models if (reason := not_run_reason(root, m, params))}
    models = [m for m in models if m not in not_run]
    image_ids = _image_ids(root / study.split_dir("clean", 0) / "annotations.json")
    counts = resample_counts(len(image_ids), resamples, seed)
    jobs = [(root, model, params, counts, image_ids, recall_score) for model in models]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            replicates = list(pool.map(_model_replicates, *zip(*jobs)))
    else:
        replicates = [_model_replicates(*job) for job in jobs]
    suites = {name: [(c, s) for c, severities in conditions.items() for s in severities]
              for name, conditions in study.other_suites(params).items()}
    figures = {model: robustness_replicates(ap, study.benchmark_corruptions(params),
                                            list(params["corruptions"]["severities"]), corruption_groups(params),
                                            suites)
                      | clean_extra
               for model, (ap, clean_extra) in zip(models, replicates)}
    pairs = (comparison_pairs(models, params) + peer_pairs(models, figures) + detector_pairs(models, params)
             + precision_pairs(models))
    comparisons = [_comparison(record, figures, level) for record in pairs]
    comparisons += [_scale_comparison(record, figures, level) for record in scale_pairs(models, params)]
    log.info("intervals of %d models from %d resamples of %d images in %.0f s", len(models), resamples,
             len(image_ids), time.perf_counter() - started)
    return {
        "level": level, "resamples": resamples, "seed": seed, "num_images": len(image_ids),
        "units": "AP as a fraction; differences are treatment - baseline",
        "method": "image bootstrap, paired across models and conditions; basic (reverse-percentile) "
                  "intervals; comparisons over repeat seeds add the between-seed variance "
                  "(quantdet.evaluation.bootstrap.seed_pooled_interval)",
        "not_run": not_run,
        "recall_score": recall_score,
        "objects": _objects(root / study.split_dir("clean", 0) / "annotations.json"),
        "suites": {name: {"corruptions": {c: list(sev) for c, sev in conditions.items()},
                          "figures": [f"mPC_{name}", f"rPC_{name}"]}
                   for name, conditions in study.other_suites(params).items()},
        "models": {model: _model_summary(f, level) for model, f in figures.items()},
        "comparisons": comparisons,
    }


def corruption_groups(params: dict) -> dict[str, list[str]]:
    """The corruptions behind each partial mPC: held-out (outside mPC), and among the
    benchmark ones those the study's training-time degradations apply (seen) or not (unseen),
    as the report groups them."""
    benchmark = study.benchmark_corruptions(params)
    trained = set(params.get("quant", {}).get("degradations", {}).get("names", []))
    return {"heldout": study.heldout_corruptions(params),
            "seen": [c for c in benchmark if c in trained],
            "unseen": [c for c in benchmark if c not in trained]}


# ---------------------------------------------------------------------------- reading
def not_run_reason(root: Path, model: str, params: dict) -> str | None:
    """Why a deployment precision was not evaluated (this machine's runtime cannot run it:
    its evaluation says so), else None."""
    if not study.parse_model_name(model).precision:
        return None
    path = Path(root) / study.eval_metrics_file(model, "clean")
    return read_json(path).get("not_run") if path.is_file() else None


def _image_ids(annotations: Path) -> np.ndarray:
    if not annotations.is_file():
        raise QuantdetError(f"{annotations}: ground truth of the clean split not found")
    return np.array(sorted(image["id"] for image in read_json(annotations)["images"]))


def _objects(annotations: Path) -> dict:
    """Ground-truth boxes of the clean split per COCO object size and per class: what the
    size and class figures average over."""
    from quantdet.evaluation.bootstrap import AREA_RANGES

    gt = read_json(annotations)
    boxes = [a for a in gt["annotations"] if not a.get("iscrowd", 0)]
    area = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in boxes]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    return {"sizes": {size: sum(AREA_RANGES[size][0] <= x <= AREA_RANGES[size][1] for x in area) for size in SIZES},
            "classes": {names[k]: sum(a["category_id"] == k for a in boxes) for k in sorted(names)}}


def _model_replicates(root: Path, model: str, params: dict, counts: np.ndarray, image_ids: np.ndarray,
                      recall_score: float = 0.25) -> tuple[dict[tuple[str, int], np.ndarray], dict]:
    """AP replicates of one model per (condition, severity), and on the clean images its AP
    replicates per object size and its recall replicates per class (`study_intervals`)."""
    ap, ground_truth, clean_extra = {}, {}, {}
    for condition in study.conditions(params):
        metrics_file = root / study.eval_metrics_file(model, condition)
        if not metrics_file.is_file():
            raise QuantdetError(f"{metrics_file}: evaluation not found (is the study finished?)")
        for result in read_json(metrics_file)["results"]:
            where = f"{metrics_file} severity {result['severity']}"
            split = _resolve(root, result["split"])
            if split not in ground_truth:
                ground_truth[split] = read_json(split / "annotations.json")
            detections = read_json(_resolve(root, result["detections"]))
            try:
                if condition == "clean":
                    by_area = match_images_by_area(ground_truth[split], detections)
                    matches = by_area["all"]
                else:
                    matches = match_images(ground_truth[split], detections)
            except ValueError as err:
                raise QuantdetError(f"{where}: {err}") from err
            # a condition holds the clean split's images or a draw of them (corruptions.images):
            # each resample of the clean split's images counts a condition's own images
            columns = np.searchsorted(image_ids, matches.image_ids)
            if (columns >= len(image_ids)).any() or not np.array_equal(image_ids[columns.clip(0, len(image_ids) - 1)],
                                                                         matches.image_ids):
                raise QuantdetError(f"{where}: split {split} holds images the clean split has not, "
                                    "so its resamples cannot be paired with them")
            replicates = ResampledAP(matches)(counts[:, columns])
            expected = result["metrics"]["AP"]
            if not abs(replicates[0] - expected) <= AP_TOLERANCE:
                raise QuantdetError(f"{where}: AP recomputed from {result['detections']} is {replicates[0]:.6f}, "
                                    f"the evaluation says {expected:.6f} (stale detections?)")
            ap[(condition, int(result["severity"]))] = replicates
            if condition == "clean":
                clean_extra = _clean_extra(by_area, counts[:, columns], ground_truth[split], recall_score)
    return ap, clean_extra


def _clean_extra(by_area: dict, counts: np.ndarray, ground_truth: dict, recall_score: float) -> dict:
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    extra = {f"AP_{size}": ap for size in SIZES   # a size without ground truth has no figure
             if np.isfinite((ap := ResampledAP(by_area[size])(counts))[0])}
    recall = resampled_recall(by_area["all"], counts, recall_score)
    extra["recall"] = {names[int(k)]: recall[:, j] for j, k in enumerate(by_area["all"].category_ids)}
    return extra


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


# ---------------------------------------------------------------------------- comparisons
def comparison_pairs(models: list[str], params: dict) -> list[dict]:
    """Each paired comparison among ``models``, its (treatment, baseline) pairs one per seed:
    each quantized model against its FP32 source (group "fp32"); the method comparisons the
    report makes (QRID, zero-shot, mimic: `quantdet.report.tables.study_comparisons`) at each
    bit width; each deployed (onnxruntime) model against its simulated twin; the teacher
    against the student. Seeds: the study seed and the repeat seeds where both models exist."""
    from quantdet.report.tables import study_comparisons

    names = {m: n for m in models if not (n := study.parse_model_name(m)).precision}   # precision_pairs
    analysed = study.analysed_runtime(params)
    students = {}   # (family, method, bits) -> {seed: model}: FP32 and our quantized students,
    for model, name in names.items():   # in the runtime the study analyses; peers: peer_pairs
        if name.role != "student" or name.stage == "peer":
            continue
        if name.compared_as != (analysed if name.quantized else "torch"):
            continue
        family = name.stage if name.quantized else "fp32"
        key = (family, name.method or "fp32", name.bits_label)
        students.setdefault(key, {})[name.run_seed(params)] = model

    def paired(group, label, bits, treatment, baseline):
        seeds = sorted(set(treatment) & set(baseline))
        if not seeds:
            return []
        return [{"group": group, "comparison": label, "bits": bits, "seeds": seeds,
                 "treatment": [treatment[s] for s in seeds], "baseline": [baseline[s] for s in seeds]}]

    def sources(by_seed):
        """Each model's own FP32 source (the study's student for -r repeats), where evaluated."""
        return {seed: names[m].fp32_source for seed, m in by_seed.items() if names[m].fp32_source in names}

    deployed = " deployed" if analysed == "onnxruntime" else ""
    records = []
    for (family, method, bits), by_seed in students.items():
        if family != "fp32":
            records += paired("fp32", f"{family} {method}{deployed} vs FP32", bits, by_seed, sources(by_seed))
    for group, label, treat, base in study_comparisons(params):
        for bits in dict.fromkeys(key[2] for key in students):
            records += paired(group, label, bits, students.get((*treat, bits), {}),
                              students.get((*base, bits), {}))
    for model, name in names.items():
        if name.runtime not in study.DEPLOYED:
            continue
        seed = name.run_seed(params)
        ort_twin = name.model + study.ORT_SUFFIX   # the same ONNX model in onnxruntime
        if name.runtime == "openvino" and ort_twin in names:
            records += paired("runtime", f"{name.stage} {name.method} in OpenVINO vs onnxruntime", name.bits_label,
                              {seed: model}, {seed: ort_twin})
        if name.stage == "peer":
            continue
        twin = name.model   # the same model in PyTorch
        if twin in names:
            records += paired("deployed", f"{name.stage} {name.method} deployed ({name.runtime}) vs simulated "
                              "(PyTorch)", name.bits_label, {seed: model}, {seed: twin})
        if name.runtime == "onnxruntime" and analysed != "onnxruntime" and name.fp32_source in names:
            records += [{**r, "twin": True} for r in paired(
                "fp32", f"{name.stage} {name.method} deployed vs FP32", name.bits_label,
                {seed: model}, {seed: name.fp32_source})]
    if "teacher-fp32" in names and "student-fp32" in names:
        seed = names["student-fp32"].run_seed(params)
        records += paired("teacher", "teacher vs student (FP32)", "fp32",
                          {seed: "teacher-fp32"}, {seed: "student-fp32"})
    return records


def peer_pairs(models: list[str], figures: dict) -> list[dict]:
    """Group "peer": at each bit width, each of our deployed models against the best peer (other
    tools' quantizers, by P on the full image set), all from the same FP32 ONNX model. Group
    "fp32": each peer against that FP32 model, as our quantized models are."""
    names = {m: n for m in models if (n := study.parse_model_name(m)).role == "student"}  # others: detector_pairs
    records = [{"group": "fp32", "comparison": f"peer {n.method} deployed vs FP32", "bits": n.bits_label,
                "seeds": [0], "treatment": [m], "baseline": [n.fp32_source]}
               for m, n in names.items() if n.stage == "peer" and n.compared_as == "onnxruntime"
               and n.fp32_source in names]
    for bits in dict.fromkeys(n.bits_label for n in names.values() if n.stage == "peer"):
        peers = [m for m, n in names.items() if n.stage == "peer" and n.bits_label == bits
                 and n.compared_as == "onnxruntime"]
        best = max(peers, key=lambda m: figures[m]["P"][0])
        ours = [m for m, n in names.items() if n.runtime == "onnxruntime" and n.stage != "peer"
                and n.bits_label == bits and n.seed is None]
        records += [{"group": "peer", "comparison": f"{names[m].stage} {names[m].method} (deployed) vs the "
                     f"best peer, {names[best].method}", "bits": bits, "seeds": [0], "treatment": [m],
                     "baseline": [best]} for m in ours]
    return records


def precision_pairs(models: list[str]) -> list[dict]:
    """Group "precision", QRID's ladder: each detector at each deployment precision, in each
    runtime (matrix.precisions), against its own FP32 model (PyTorch, float32)."""
    records = []
    for model in models:
        name = study.parse_model_name(model)
        if name.precision and name.fp32_source in models:
            records.append({"group": "precision", "detector": name.role, "precision": name.method,
                            "runtime": name.runtime,
                            "comparison": f"{name.role}: {name.method} ({name.runtime}) vs FP32",
                            "bits": name.bits_label, "seeds": [0], "treatment": [model],
                            "baseline": [name.fp32_source]})
    return records


def detector_pairs(models: list[str], params: dict) -> list[dict]:
    """Group "detector", the detector axis (models.students beside models.student), per
    detector: each of its quantized models (in the runtime the study analyses) and its peers
    (deployed) against its own FP32 model, and each FP32 detector against the student's."""
    names = {m: study.parse_model_name(m) for m in models}
    roles = study.students(params)
    if len(roles) < 2:
        return []
    analysed = study.analysed_runtime(params)
    deployed = " deployed" if analysed == "onnxruntime" else ""
    records = []
    for model, name in names.items():
        if name.role not in roles or not name.quantized or name.seed is not None:
            continue
        if name.compared_as != ("onnxruntime" if name.stage == "peer" else analysed):
            continue
        if name.fp32_source in names:
            what = f"peer {name.method} deployed" if name.stage == "peer" else f"{name.stage} {name.method}{deployed}"
            records.append({"group": "detector", "detector": name.role, "comparison": f"{name.role}: {what} vs FP32",
                            "bits": name.bits_label, "seeds": [name.run_seed(params)], "treatment": [model],
                            "baseline": [name.fp32_source]})
    for role in roles[1:]:
        if f"{role}-fp32" in names and "student-fp32" in names:
            records.append({"group": "detector", "detector": role, "comparison": f"{role} vs student (FP32)",
                            "bits": "fp32", "seeds": [names["student-fp32"].run_seed(params)],
                            "treatment": [f"{role}-fp32"], "baseline": ["student-fp32"]})
    return records


SCALES = "nsmlx"   # Ultralytics' model scales, smallest first (yolo11n ... yolo11x)


def _scale_of(model_params: dict) -> tuple[str, str, str] | None:
    """(detector family, architecture less its scale letter, scale letter) of a `yolo11s.yaml`-like
    architecture, else None."""
    import re

    arch = str(model_params.get("arch") or "")
    found = re.fullmatch(r"(.*\d)([nsmlx])(\.yaml)?", Path(arch).name)
    if not found or model_params.get("checkpoint"):
        return None
    return str(model_params.get("detector")), found.group(1), found.group(2)


def scale_pairs(models: list[str], params: dict) -> list[dict]:
    """Group "scale", QRID's "the smaller model loses more": for two detectors of one
    architecture at two scales (models.students: `yolo11n.yaml` and `yolo11s.yaml`), each
    quantization (method and bits) both have, deployed as the detector group compares it: the
    smaller one's loss against its own FP32 model minus the larger one's. treatment: the two
    quantized models, smaller first; baseline: their FP32 models."""
    names = {m: study.parse_model_name(m) for m in models}
    roles = study.students(params)
    scales = {role: s for role in roles if (s := _scale_of(study.model_params(params, role)))}
    analysed = study.analysed_runtime(params)
    by_role = {}
    for model, name in names.items():
        if name.role in scales and name.quantized and name.seed is None and name.fp32_source in names \
                and name.compared_as == ("onnxruntime" if name.stage == "peer" else analysed):
            by_role.setdefault(name.role, {})[(name.stage, name.method, name.bits_label)] = model
    records = []
    for small in roles:
        for large in roles:
            if small not in scales or large not in scales or scales[small][:2] != scales[large][:2] \
                    or SCALES.index(scales[small][2]) >= SCALES.index(scales[large][2]):
                continue
            for key, model in by_role.get(small, {}).items():
                other = by_role.get(large, {}).get(key)
                if other is None:
                    continue
                stage, method, bits = key
                records.append({"group": "scale", "smaller": small, "larger": large,
                                "archs": [str(study.model_params(params, r).get("arch")) for r in (small, large)],
                                "stage": stage,
                                "method": method, "bits": bits,
                                "comparison": f"{small} vs {large}: loss of {stage} {method} {bits} against FP32",
                                "treatment": [model, other],
                                "baseline": [names[model].fp32_source, names[other].fp32_source]})
    return records


def _scale_comparison(record: dict, figures: dict, level: float) -> dict:
    """Per metric, (smaller FP32 - smaller quantized) - (larger FP32 - larger quantized) over
    the same image resamples: positive where the smaller detector loses more."""
    (small_q, large_q), (small_fp32, large_fp32) = record["treatment"], record["baseline"]
    differences = {}
    for metric in ("P", "mPC", "rPC"):
        if all(metric in figures[m] for m in (small_q, large_q, small_fp32, large_fp32)):
            losses = ((figures[small_fp32][metric] - figures[small_q][metric])
                      - (figures[large_fp32][metric] - figures[large_q][metric]))
            differences[metric] = summary(losses, level)
    return {**record, "differences": differences,
            "units": "AP (rPC) as a fraction: the smaller detector's loss minus the larger's"}


def _comparison(record: dict, figures: dict, level: float) -> dict:
    treatments = [figures[m] for m in record["treatment"]]
    baselines = [figures[m] for m in record["baseline"]]
    metrics = difference_metrics(treatments[0])
    per_seed = [{"seed": seed, "treatment": t, "baseline": b,
                 "differences": {metric: summary(figures[t][metric] - figures[b][metric], level)
                                 for metric in metrics if metric in figures[t] and metric in figures[b]}}
                for seed, t, b in zip(record["seeds"], record["treatment"], record["baseline"])]
    out = {**record, "differences": paired_differences(treatments, baselines, metrics, level),
           "per_seed": per_seed}
    if all(study.parse_model_name(b).fp32 for b in record["baseline"]):   # what a model lost against its FP32
        recalls = [f.get("recall", {}) for f in treatments + baselines]
        classes = [c for c in recalls[0] if all(c in r for r in recalls)] if recalls else []
        out["recall_differences"] = paired_differences(
            [t["recall"] for t in treatments], [b["recall"] for b in baselines], classes, level)
    if all("relative" in f for f in treatments + baselines):   # each other suite's condition over P
        conditions = [c for c in treatments[0]["relative"] if all(c in f["relative"] for f in treatments + baselines)]
        out["relative_differences"] = paired_differences(
            [t["relative"] for t in treatments], [b["relative"] for b in baselines], conditions, level)
    return out


def difference_metrics(figures: dict) -> tuple[str, ...]:
    """The figures every comparison differences: DIFFERENCE_METRICS, then each other
    degradation suite's mean and relative AP (mPC_<suite>, rPC_<suite>) a model has."""
    suites = [name for name in figures if name.startswith(("mPC_", "rPC_")) and name not in DIFFERENCE_METRICS]
    return DIFFERENCE_METRICS + tuple(suites)


def _model_summary(figures: dict, level: float) -> dict:
    """Intervals of a model's figures, cut to where they can lie: AP in [0, 1], rPC >= 0."""
    def bounded(name, values):
        return summary(values, level, (0.0, math.inf) if name.startswith("rPC") or name == "relative" else (0.0, 1.0))

    return {name: ({str(key): bounded(name, v) for key, v in values.items()} if isinstance(values, dict)
                   else bounded(name, values))
            for name, values in figures.items()}


def _finite(value):
    """JSON has no NaN: non-finite numbers become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
