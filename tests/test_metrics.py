"""COCO box AP and the Michaelis et al. robustness metrics on hand-made numbers."""
import math

import pytest

from quantdet.evaluation.coco_metrics import coco_box_metrics
from quantdet.evaluation.robustness import (mean_performance_under_corruption,
                                            relative_performance_under_corruption, robustness_summary)

AP_TABLE = {("fog", 1): 0.30, ("fog", 2): 0.20, ("snow", 1): 0.25, ("snow", 2): 0.05}


def test_mean_performance_under_corruption_is_the_grid_mean():
    assert mean_performance_under_corruption(AP_TABLE, ["fog", "snow"], [1, 2]) == pytest.approx(0.2)
    assert mean_performance_under_corruption(AP_TABLE, ["fog"], [1, 2]) == pytest.approx(0.25)


def test_missing_corruption_severity_is_named():
    table = {k: v for k, v in AP_TABLE.items() if k != ("snow", 2)}
    with pytest.raises(ValueError, match=r"\('snow', 2\)"):
        mean_performance_under_corruption(table, ["fog", "snow"], [1, 2])


def test_robustness_summary():
    summary = robustness_summary(0.4, AP_TABLE, ["fog", "snow"], [1, 2])
    assert summary == pytest.approx({"P": 0.4, "mPC": 0.2, "rPC": 0.5})


def test_rpc_of_zero_clean_ap_is_nan():
    assert math.isnan(relative_performance_under_corruption(0.1, 0.0))
    assert relative_performance_under_corruption(0.1, 0.4) == pytest.approx(0.25)


def _ground_truth():
    # one medium box (40x40) in image 1, one large box (100x100) of another class in image 2
    return {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 100, 100], "area": 10000, "iscrowd": 0},
        ],
    }


def test_perfect_detections_score_one():
    gt = _ground_truth()
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                  for a in gt["annotations"]]
    metrics = coco_box_metrics(gt, detections)
    for key in ("AP", "AP50", "AP75", "AP_medium", "AP_large"):
        assert metrics[key] == pytest.approx(1.0)
    assert metrics["AP_small"] is None       # no small ground truth
    assert "id" not in detections[0]         # the caller's detections are left alone


def test_no_detections_score_zero():
    metrics = coco_box_metrics(_ground_truth(), [])
    assert metrics == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP_small": None, "AP_medium": 0.0, "AP_large": 0.0}


def test_shifted_box_matches_only_at_low_iou_thresholds():
    gt = _ground_truth()
    gt["annotations"] = gt["annotations"][:1]
    del gt["annotations"][0]["area"]          # COCO files may omit it; it is derived from the box
    # shifted by 8 px: IoU = 32*40 / (2*1600 - 32*40) = 2/3, a match at IoU .50, .55, .60, .65 only
    detections = [{"image_id": 1, "category_id": 1, "bbox": [18, 10, 40, 40], "score": 0.8}]
    metrics = coco_box_metrics(gt, detections)
    assert metrics["AP"] == pytest.approx(0.4)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP_medium"] == pytest.approx(0.4)
    assert metrics["AP_large"] is None


def test_detections_on_unknown_images_are_rejected():
    with pytest.raises(ValueError, match="99"):
        coco_box_metrics(_ground_truth(), [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])


def _pycocotools_stats(gt: dict, detections: list[dict]) -> list[float]:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes([dict(d) for d in detections]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats[:6])


def test_metrics_equal_pycocotools_on_noisy_detections():
    """Our scorer (faster-coco-eval) against the reference pycocotools on a scene with many
    objects, jittered and false detections, duplicates, and several classes and sizes."""
    import random

    rng = random.Random(0)
    images = [{"id": i, "width": 256, "height": 256} for i in range(1, 31)]
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]
    annotations, detections = [], []
    for img in images:
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(6, 120), rng.uniform(6, 120)
            box = [rng.uniform(0, 256 - w), rng.uniform(0, 256 - h), w, h]
            cat = rng.choice(categories)["id"]
            annotations.append({"id": len(annotations) + 1, "image_id": img["id"], "category_id": cat,
                                "bbox": box, "area": w * h, "iscrowd": 0})
            for _ in range(rng.randint(0, 2)):        # jittered (some duplicate) detections
                jitter = [v + rng.gauss(0, 0.1 * min(w, h)) for v in box[:2]] + \
                         [max(1.0, v * rng.uniform(0.8, 1.2)) for v in box[2:]]
                detections.append({"image_id": img["id"], "category_id": cat, "bbox": jitter,
                                   "score": rng.random()})
        for _ in range(rng.randint(0, 10)):           # false positives
            detections.append({"image_id": img["id"], "category_id": rng.choice(categories)["id"],
                               "bbox": [rng.uniform(0, 200), rng.uniform(0, 200),
                                        rng.uniform(4, 56), rng.uniform(4, 56)],
                               "score": rng.random() * 0.5})
    gt = {"images": images, "categories": categories, "annotations": annotations}
    ours = coco_box_metrics(gt, detections)
    reference = _pycocotools_stats(gt, detections)
    for key, value in zip(("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"), reference):
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 0.1 < ours["AP50"] < 0.95                   # a scene that actually tests matching
