"""The image bootstrap of AP: exact re-accumulation, coverage on a known population, the
bias correction, pairing, and repeat seeds."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from quantdet.evaluation.bootstrap import (ResampledAP, basic_interval, match_images, paired_differences,
                                           percentile_interval, resample_counts, robustness_replicates,
                                           seed_pooled_interval, summary, synthetic_detections)
from quantdet.evaluation.coco_metrics import coco_box_metrics


def _full_set_ap(gt, detections):
    matches = match_images(gt, detections)
    return ResampledAP(matches)(np.ones((1, len(matches.image_ids))))[0]


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("seed", range(4))
def test_full_set_equals_the_projects_coco_ap(seed):
    # two-decimal scores: many exact ties, whose order accumulate() fixes; crowd boxes: ignored
    gt, detections = synthetic_detections(np.random.default_rng(seed), 24, num_categories=4, crowd=0.15,
                                          score_decimals=2, jitter=0.08 * (seed + 1))
    assert _full_set_ap(gt, detections) == pytest.approx(coco_box_metrics(gt, detections)["AP"], abs=1e-12)


def test_full_set_edge_cases_equal_the_projects_coco_ap():
    gt, detections = synthetic_detections(np.random.default_rng(7), 10, num_categories=3)
    gt["images"].append({"id": 99, "width": 128, "height": 128})          # an image without boxes...
    detections.append({"image_id": 99, "category_id": 1, "bbox": [1, 1, 20, 20], "score": 0.99})  # ...with an FP
    gt["categories"].append({"id": 4, "name": "never_present"})          # a class absent from the ground truth
    detections.append({"image_id": 1, "category_id": 4, "bbox": [1, 1, 20, 20], "score": 0.5})
    detections = [d for d in detections if d["category_id"] != 3]        # a class never detected
    detections += [{"image_id": 2, "category_id": 1, "bbox": [i % 100, 5, 30, 30], "score": 0.3 + i / 1000}
                   for i in range(120)]                                  # beyond 100 per image and class
    detections.append({"image_id": 3, "category_id": 2, "bbox": [50, 50, -10, 20], "score": 0.9})  # area < 0
    assert _full_set_ap(gt, detections) == pytest.approx(coco_box_metrics(gt, detections)["AP"], abs=1e-12)
    assert _full_set_ap(gt, []) == coco_box_metrics(gt, [])["AP"] == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_full_set_ap_per_object_size_equals_the_projects_coco_ap(seed):
    from quantdet.evaluation.bootstrap import match_images_by_area

    gt, detections = synthetic_detections(np.random.default_rng(seed), 30, num_categories=4, crowd=0.1,
                                          score_decimals=3)
    for a in gt["annotations"][::3]:       # some large boxes, so that each size is present
        a["bbox"][2:] = [110.0, 100.0]
        a["area"] = 11000.0
    expected = coco_box_metrics(gt, detections)
    by_area = match_images_by_area(gt, detections)
    assert ResampledAP(by_area["all"])(np.ones((1, 30)))[0] == pytest.approx(expected["AP"], abs=1e-12)
    for size in ("small", "medium", "large"):
        got = ResampledAP(by_area[size])(np.ones((1, 30)))[0]
        assert got == pytest.approx(expected[f"AP_{size}"], abs=1e-12), size


def test_recall_at_a_score_threshold_equals_cocoeval_on_the_detections_above_it():
    """Per-class recall at IoU 0.5 of the detections scoring >= 0.4, against COCOeval's own
    recall when only those detections are handed to it; and a resample against the same
    on the data set holding each image that many times."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from quantdet.evaluation.bootstrap import resampled_recall

    def cocoeval_recall(gt, results):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            evaluator = COCOeval(coco, coco.loadRes([dict(d) for d in results]), iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
        return evaluator.eval["recall"][0, :, 0, -1]   # IoU 0.5, each class, area all, 100 detections

    gt, detections = synthetic_detections(np.random.default_rng(5), 25, num_categories=3, score_decimals=12)
    matches = match_images(gt, detections)
    above = [d for d in detections if d["score"] >= 0.4]
    assert 0 < len(above) < len(detections)
    got = resampled_recall(matches, np.ones((1, 25)), 0.4)[0]
    assert got == pytest.approx(cocoeval_recall(gt, above), abs=1e-12)
    counts = resample_counts(25, 1, seed=2)[1]
    resampled, results = _resampled_set(gt, above, counts)
    assert resampled_recall(matches, counts[None], 0.4)[0] == pytest.approx(cocoeval_recall(resampled, results),
                                                                            abs=1e-12)


def _resampled_set(gt: dict, detections: list, counts) -> tuple[dict, list]:
    """The data set (and detections) holding image i counts[i] times, each copy a new image id."""
    images, annotations, results = [], [], []
    for image_index, copies in enumerate(counts):
        for copy in range(copies):
            new_id = 1000 * (copy + 1) + image_index + 1
            images.append({"id": new_id, "width": 128, "height": 128})
            annotations += [{**a, "id": len(annotations) + i + 1, "image_id": new_id}
                            for i, a in enumerate(a for a in gt["annotations"] if a["image_id"] == image_index + 1)]
            results += [{**d, "image_id": new_id} for d in detections if d["image_id"] == image_index + 1]
    return {"images": images, "annotations": annotations, "categories": gt["categories"]}, results


def test_a_resample_equals_coco_on_the_resampled_image_set():
    """A count vector re-accumulates to COCOeval's AP on the data set that holds each image
    that many times (scores without ties, so the copies' order cannot matter)."""
    gt, detections = synthetic_detections(np.random.default_rng(3), 20, num_categories=3, crowd=0.1,
                                          score_decimals=12)
    resampler = ResampledAP(match_images(gt, detections))
    for counts in resample_counts(20, 3, seed=5)[1:]:
        resampled, results = _resampled_set(gt, detections, counts)
        assert resampler(counts[None])[0] == pytest.approx(coco_box_metrics(resampled, results)["AP"], abs=1e-12)


def test_a_subset_of_the_matching_equals_matching_the_subset():
    gt, detections = synthetic_detections(np.random.default_rng(4), 30, num_categories=3, score_decimals=2)
    chosen = np.array([17, 3, 25, 8, 11, 0, 29])
    ids = {int(i) + 1 for i in chosen}
    sub_gt = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    sub = match_images(gt, detections).subset(np.sort(chosen))
    assert ResampledAP(sub)(np.ones((1, len(chosen))))[0] == pytest.approx(
        coco_box_metrics(sub_gt, [d for d in detections if d["image_id"] in ids])["AP"], abs=1e-12)


def test_resample_counts_draw_every_image_set_of_the_same_size():
    counts = resample_counts(48, 200, seed=1)
    assert counts.shape == (201, 48) and (counts[0] == 1).all()
    assert (counts.sum(axis=1) == 48).all()
    assert 0.55 < (counts[1:] > 0).mean() < 0.72     # 1 - 1/e of the images appear in a resample
    assert (resample_counts(48, 200, seed=1) == counts).all()


# ---------------------------------------------------------------------------- coverage and bias
def test_basic_interval_covers_the_population_ap_about_95_percent_of_the_time():
    """A population of 2000 images from one detector; its AP is the truth. 200 draws of 48
    images, each with a 95% interval from 400 resamples: the basic interval covers the
    truth about 95% of the time. The bootstrap distribution sits above the estimate (the
    bias the basic interval reflects away), so the plain percentile interval covers less."""
    rng = np.random.default_rng(0)
    gt, detections = synthetic_detections(rng, 2000, num_categories=3, jitter=0.07)
    population = match_images(gt, detections)
    truth = ResampledAP(population)(np.ones((1, 2000)))[0]
    counts = resample_counts(48, 400, seed=1)
    covered, covered_percentile, biases = 0, 0, []
    for _ in range(200):
        draw = np.sort(rng.choice(2000, size=48, replace=False))
        values = ResampledAP(population.subset(draw))(counts)
        low, high = basic_interval(values)
        p_low, p_high = percentile_interval(values)
        covered += low <= truth <= high
        covered_percentile += p_low <= truth <= p_high
        biases.append(summary(values)["bootstrap_bias"])
    assert 0.88 <= covered / 200 <= 0.99
    assert np.mean(biases) > 0.002                     # upward, and not a rounding error
    assert covered_percentile < covered


def test_basic_interval_is_the_percentile_interval_reflected_about_the_estimate():
    values = np.r_[0.40, np.random.default_rng(0).gamma(4.0, 0.02, size=999) + 0.35]
    p_low, p_high = percentile_interval(values)
    low, high = basic_interval(values)
    assert (low, high) == pytest.approx((2 * 0.40 - p_high, 2 * 0.40 - p_low))
    assert high - 0.40 == pytest.approx(0.40 - p_low)
    assert summary(values)["bootstrap_bias"] == pytest.approx(values[1:].mean() - 0.40)


def test_intervals_of_a_bounded_figure_stop_at_its_bound():
    values = np.r_[0.01, np.random.default_rng(0).gamma(1.0, 0.02, size=999)]
    assert basic_interval(values)[0] < 0
    cut = summary(values, bounds=(0.0, 1.0))
    assert cut["low"] == 0.0 and cut["high"] == pytest.approx(basic_interval(values)[1])


def test_intervals_leave_out_resamples_without_ground_truth():
    values = np.array([0.5, 0.4, np.nan, 0.6, 0.5])
    assert basic_interval(values, level=0.5) == pytest.approx((2 * 0.5 - 0.55, 2 * 0.5 - 0.45))


# ---------------------------------------------------------------------------- pairing
def _noisy_copy(detections, rng, score_noise=0.08, box_noise=0.04):
    """Another model that finds mostly the same boxes: scores and boxes perturbed."""
    out = []
    for d in detections:
        x, y, w, h = d["bbox"]
        out.append({**d, "score": float(np.clip(d["score"] + rng.normal(0, score_noise), 0.01, 1)),
                    "bbox": [x + rng.normal(0, box_noise) * w, y + rng.normal(0, box_noise) * h, w, h]})
    return out


def test_identical_models_differ_by_exactly_zero():
    gt, detections = synthetic_detections(np.random.default_rng(1), 48)
    counts = resample_counts(48, 300, seed=2)
    a = ResampledAP(match_images(gt, detections))(counts)
    b = ResampledAP(match_images(gt, [dict(d) for d in detections]))(counts)
    difference = paired_differences([{"P": a}], [{"P": b}], ["P"])["P"]
    assert (difference["estimate"], difference["low"], difference["high"]) == (0, 0, 0)


def test_paired_difference_is_narrower_than_unpaired():
    rng = np.random.default_rng(2)
    gt, detections = synthetic_detections(rng, 48)
    other = _noisy_copy(detections, rng)
    a, b = ResampledAP(match_images(gt, detections)), ResampledAP(match_images(gt, other))
    counts, independent = resample_counts(48, 500, seed=3), resample_counts(48, 500, seed=4)
    paired_low, paired_high = basic_interval(a(counts) - b(counts))
    unpaired_low, unpaired_high = basic_interval(a(counts) - b(independent))
    assert paired_high - paired_low < 0.6 * (unpaired_high - unpaired_low)


# ---------------------------------------------------------------------------- repeat seeds
def test_agreeing_seeds_keep_the_image_interval():
    base = np.r_[0.02, np.random.default_rng(0).normal(0.02, 0.01, size=500)]
    pooled = seed_pooled_interval(np.vstack([base, base, base]))
    assert (pooled["low"], pooled["high"]) == pytest.approx(basic_interval(base))
    assert pooled["seed_sd"] == 0


def test_seeds_without_image_noise_give_the_t_interval_of_the_seed_differences():
    per_seed = np.repeat(np.array([[0.010], [0.030], [0.026]]), 201, axis=1)   # replicates = estimates
    pooled = seed_pooled_interval(per_seed)
    half = stats.t.ppf(0.975, 2) * np.std([0.010, 0.030, 0.026], ddof=1) / math.sqrt(3)
    assert (pooled["low"], pooled["high"]) == pytest.approx((0.022 - half, 0.022 + half))


def test_disagreeing_seeds_widen_the_interval_beyond_image_sampling():
    """Three seeds of a treatment and a baseline on the same images; the treatment's effect
    differs by seed (a training effect), so the pooled interval must be wider than the
    image-only interval of the seed mean, by about the t interval of the seed spread."""
    rng = np.random.default_rng(5)
    gt, detections = synthetic_detections(rng, 48)
    counts = resample_counts(48, 400, seed=6)
    treatments, baselines = [], []
    for recall in (0.9, 0.7, 0.8):     # the seeds' treatments find more or fewer objects
        seed_rng = np.random.default_rng(int(recall * 10))
        baseline = _noisy_copy(detections, seed_rng)
        treatment = [d for d in _noisy_copy(detections, seed_rng) if seed_rng.random() < recall + 0.1]
        baselines.append({"P": ResampledAP(match_images(gt, baseline))(counts)})
        treatments.append({"P": ResampledAP(match_images(gt, treatment))(counts)})
    pooled = paired_differences(treatments, baselines, ["P"])["P"]
    images_width = pooled["images_high"] - pooled["images_low"]
    assert pooled["seed_sd"] > 0
    assert pooled["high"] - pooled["low"] > 1.5 * images_width
    assert pooled["low"] < pooled["images_low"] and pooled["high"] > pooled["images_high"]
    assert pooled["estimate"] == pytest.approx(np.mean(pooled["per_seed"]))


# ---------------------------------------------------------------------------- figures
def test_robustness_figures_follow_each_replicate():
    ap = {("clean", 0): np.array([0.5, 0.4, 0.6]),
          ("fog", 1): np.array([0.3, 0.2, 0.3]), ("fog", 2): np.array([0.1, 0.1, 0.2]),
          ("snow", 1): np.array([0.2, 0.2, 0.2]), ("snow", 2): np.array([0.2, 0.1, 0.1]),
          ("spatter", 1): np.array([0.4, 0.3, 0.3]), ("spatter", 2): np.array([0.2, 0.2, 0.2])}
    figures = robustness_replicates(ap, ["fog", "snow"], [1, 2], {"heldout": ["spatter"], "seen": []})
    assert figures["mPC"] == pytest.approx([0.2, 0.15, 0.2])
    assert figures["rPC"] == pytest.approx([0.4, 0.375, 0.2 / 0.6])
    assert figures["mPC_heldout"] == pytest.approx([0.3, 0.25, 0.25])
    assert "mPC_seen" not in figures
    assert figures["corruptions"]["spatter"] == pytest.approx([0.3, 0.25, 0.25])
    assert figures["severities"][2] == pytest.approx([0.15, 0.1, 0.15])


# ---------------------------------------------------------------------------- a study folder
STUDY_MODELS = ["teacher-fp32", "student-fp32", "student-ptq-minmax-w8a8", "student-ptq-dacal-w8a8",
                "student-ptq-dacal-w8a8-ort", "student-fp32-s1", "student-ptq-dacal-w8a8-s1"]


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    """What the evaluate stage leaves for a few models of the smoke study: a ground truth
    per split (the same images everywhere), and per model and condition a metrics.json
    naming each severity's detections file and split, paths relative to the study root."""
    from quantdet import study
    from quantdet.config import load_params
    from quantdet.io_utils import write_json

    root = tmp_path_factory.mktemp("study")
    params = load_params(Path(__file__).parent / "smoke" / "params.yaml")
    rng = np.random.default_rng(11)
    gt, detections = synthetic_detections(rng, 16, num_categories=3, jitter=0.05)
    for condition in study.conditions(params):
        for severity in study.severities_of(condition, params):
            write_json(root / study.split_dir(condition, severity) / "annotations.json", gt)
    for m, model in enumerate(STUDY_MODELS):
        for condition in study.conditions(params):
            results = []
            for severity in study.severities_of(condition, params):
                keep = 1 - 0.08 * severity - 0.02 * m     # corruptions and models lose objects
                found = [d for d in _noisy_copy(detections, rng, box_noise=0.01 * (severity + 1))
                         if rng.random() < keep]
                out = f"{study.eval_dir(model)}/{condition}/detections-s{severity}.json"
                write_json(root / out, found, compact=True)
                results.append({"severity": severity, "metrics": coco_box_metrics(gt, found), "detections": out,
                                "split": study.split_dir(condition, severity), "num_images": 16})
            write_json(root / study.eval_metrics_file(model, condition),
                       {"model": model, "condition": condition, "results": results})
    return root, params


def test_study_intervals_cover_every_model_and_comparison(fake_study):
    from quantdet.evaluation.intervals import study_intervals, write_study_intervals

    root, params = fake_study
    path = write_study_intervals(params, root, resamples=200, models=STUDY_MODELS, processes=2)
    assert path == root / "results/metrics/intervals.json"
    intervals = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert intervals["num_images"] == 16 and intervals["resamples"] == 200
    clean = json.loads((root / "results/eval/student-fp32/clean/metrics.json").read_text())
    figures = intervals["models"]["student-fp32"]
    assert figures["P"]["estimate"] == pytest.approx(clean["results"][0]["metrics"]["AP"], abs=1e-12)
    for name in ("P", "mPC", "rPC", "mPC_heldout", "mPC_seen", "mPC_unseen"):
        assert figures[name]["low"] < figures[name]["high"], name
    serial = study_intervals(params, root, resamples=200, models=["student-fp32"])   # one process
    assert serial["models"]["student-fp32"]["mPC"] == pytest.approx(figures["mPC"], abs=1e-15)
    # imagecorruptions' three, then the smoke study's other suites (qrid's two sets, moiré)
    assert list(figures["corruptions"]) == ["gaussian_noise", "defocus_blur", "speckle_noise", "noisy_low",
                                            "mixed_50pct", "moire"]
    for name in ("mPC_qrid", "rPC_qrid", "mPC_moire", "rPC_moire"):
        assert figures[name]["low"] <= figures[name]["estimate"] <= figures[name]["high"], name
    assert set(figures["severities"]) == {"1", "3"}

    by_label = {(c["group"], c["comparison"], c["bits"]): c for c in intervals["comparisons"]}
    dacal = by_label[("fp32", "ptq dacal vs FP32", "W8A8")]
    assert dacal["seeds"] == [0, 1]
    assert dacal["treatment"] == ["student-ptq-dacal-w8a8", "student-ptq-dacal-w8a8-s1"]
    assert dacal["baseline"] == ["student-fp32", "student-fp32-s1"]
    assert [s["differences"]["P"]["estimate"] for s in dacal["per_seed"]] == pytest.approx(
        dacal["differences"]["P"]["per_seed"])
    assert dacal["differences"]["P"]["low"] <= dacal["differences"]["P"]["images_low"]
    assert by_label[("fp32", "ptq minmax vs FP32", "W8A8")]["seeds"] == [0]
    assert ("deployed", "ptq dacal deployed (onnxruntime) vs simulated (PyTorch)", "W8A8") in by_label
    assert ("teacher", "teacher vs student (FP32)", "fp32") in by_label

    # object sizes and per-class recall, each against the FP32 model (synthetic boxes: 8-64 px)
    assert intervals["recall_score"] == 0.25
    assert intervals["objects"]["sizes"]["large"] == 0 and intervals["objects"]["sizes"]["small"] > 0
    assert figures["AP_small"]["low"] <= figures["AP_small"]["estimate"] <= figures["AP_small"]["high"]
    assert "AP_large" not in figures                         # no large object: no figure, not 0
    assert set(figures["recall"]) == {"class_1", "class_2", "class_3"}
    minmax = by_label[("fp32", "ptq minmax vs FP32", "W8A8")]
    assert set(minmax["recall_differences"]) == {"class_1", "class_2", "class_3"}
    assert "AP_small" in minmax["differences"] and "AP_large" not in minmax["differences"]
    treatment = intervals["models"][minmax["treatment"][0]]["recall"]["class_1"]["estimate"]
    assert minmax["recall_differences"]["class_1"]["estimate"] == pytest.approx(
        treatment - figures["recall"]["class_1"]["estimate"], abs=1e-12)
    assert "recall_differences" not in by_label[("deployed", "ptq dacal deployed (onnxruntime) vs simulated "
                                                 "(PyTorch)", "W8A8")]


def test_study_intervals_refuse_stale_detections(fake_study, tmp_path):
    import shutil

    from quantdet.errors import QuantdetError
    from quantdet.evaluation.intervals import study_intervals

    root, params = fake_study
    copy = tmp_path / "study"
    shutil.copytree(root, copy)
    path = copy / "results/eval/student-fp32/defocus_blur/metrics.json"
    payload = json.loads(path.read_text())
    payload["results"][1]["metrics"]["AP"] += 0.01
    path.write_text(json.dumps(payload))
    with pytest.raises(QuantdetError, match="defocus_blur/metrics.json severity 3.*stale"):
        study_intervals(params, copy, resamples=10, models=["student-fp32"])
    annotations = copy / "data/corrupted/gaussian_noise/1/annotations.json"
    gt = json.loads(annotations.read_text())
    gt["images"].append({"id": 99, "width": 128, "height": 128})
    annotations.write_text(json.dumps(gt))
    with pytest.raises(QuantdetError, match="gaussian_noise/1 holds images the clean split has not"):
        study_intervals(params, copy, resamples=10, models=["student-ptq-minmax-w8a8"])


def test_peers_are_compared_with_their_fp32_source_and_ours_with_the_best_peer():
    from quantdet.evaluation.intervals import peer_pairs

    models = ["student-fp32", "student-ptq-minmax-w8a8-ort", "student-peer-nncf-w8a8-ort",
              "student-peer-ort_minmax-w8a8-ort"]
    figures = {m: {"P": np.array([p])} for m, p in zip(models, (0.55, 0.55, 0.54, 0.56))}
    records = peer_pairs(models, figures)
    fp32 = {r["treatment"][0]: r for r in records if r["group"] == "fp32"}
    assert set(fp32) == {"student-peer-nncf-w8a8-ort", "student-peer-ort_minmax-w8a8-ort"}
    assert fp32["student-peer-nncf-w8a8-ort"]["baseline"] == ["student-fp32"]
    assert fp32["student-peer-nncf-w8a8-ort"]["comparison"] == "peer nncf deployed vs FP32"
    (ours,) = [r for r in records if r["group"] == "peer"]
    assert ours["treatment"] == ["student-ptq-minmax-w8a8-ort"]
    assert ours["baseline"] == ["student-peer-ort_minmax-w8a8-ort"]   # the best peer by P


def test_the_report_shows_object_size_and_class_losses_and_names_a_collapsed_model(fake_study):
    """The section of size and class losses holds every model against its FP32 model (seeds
    pooled) once; the long table has each class; a deployed model below half of its FP32 P
    heads the report with the layers its export found departing most."""
    import copy

    from quantdet.evaluation.intervals import study_intervals
    from quantdet.report.losses import collapse_section, collapsed, loss_rows, losses_section

    root, params = fake_study
    intervals = study_intervals(params, root, resamples=100, models=STUDY_MODELS)
    section = losses_section(intervals)
    assert section.startswith("## What quantization loses: object sizes and classes")
    assert "`student-ptq-dacal-w8a8` (+1 seeds)" in section and "`student-ptq-minmax-w8a8`" in section
    # once per model: pooled with its seeds, not again alone
    assert section.count("| `student-ptq-dacal-w8a8` ") == 1 and section.count("| `student-ptq-minmax-w8a8` ") == 1
    assert "`teacher-fp32`" not in section and "ground-truth boxes: small" in section
    rows = loss_rows(intervals)
    assert set(rows["figure"]) >= {"AP_small", "AP_medium", "recall:class_1", "recall:class_3"}
    assert set(rows["verdict"]) <= {"higher", "lower", "no measurable difference"}
    assert collapsed(intervals) == [] and collapse_section(intervals, {}) == ""
    spoiled = copy.deepcopy(intervals)
    spoiled["models"]["student-ptq-dacal-w8a8-ort"]["P"]["estimate"] = 0.4 * intervals["models"]["student-fp32"]["P"]["estimate"]
    assert [c["model"] for c in collapsed(spoiled)] == ["student-ptq-dacal-w8a8-ort"]
    divergence = {"matched": True, "convolutions": 6, "median_relative_error": 0.05,
                  "largest": [{"index": 5, "layer": "/head/cls/Conv", "relative_error": 3.2}]}
    text = collapse_section(spoiled, {"student-ptq-dacal-w8a8": {"layer_divergence": divergence}})
    assert text.startswith("## Collapsed models") and "`student-ptq-dacal-w8a8-ort`: P" in text
    assert "`/head/cls/Conv` 3.20" in text
