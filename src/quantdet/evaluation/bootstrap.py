"""Image-bootstrap intervals for box AP and everything built from it (P, mPC, rPC, paired
differences between models).

The sampling unit is the validation image. One resample is a *count vector* over the images
(how often each image is drawn), and the same count vector is applied to every model and to
every corrupted copy of an image (corrupted splits keep the clean image ids), so differences
between models and between conditions are resampled consistently (paired).

Cost: COCOeval's per-image matching (`match_images`) runs once per (model, condition,
severity); a resample only re-accumulates. `ResampledAP` turns the matching into runs of
consecutive true and false positives per (IoU threshold, category) and evaluates the
101-point interpolated AP of many count vectors at once with a matrix product and cumulative
sums: no re-sorting, no Python loop over resamples.

Arrays of replicates follow one convention throughout: element 0 is the statistic on the
full image set (the point estimate), elements 1.. are the bootstrap replicates.

Intervals are *basic* (reverse-percentile) bootstrap intervals, see `basic_interval`; repeat
seeds widen a comparison's interval as `seed_pooled_interval` describes.
"""
from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from quantdet.evaluation.coco_metrics import _check_image_ids, _complete_ground_truth

# COCOeval's defaults for box AP@[.5:.95]: these exact arrays, so that threshold
# comparisons agree with it bit for bit.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETECTIONS = 100


# ---------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class ImageMatches:
    """COCOeval's per-image matching of one detections file, area "all", 100 detections.

    Detections are stored in the order COCOeval.accumulate ranks them within a category
    (score descending; ties by image id, then by rank within the image), category after
    category, so that any resample can be re-accumulated without sorting.
    """
    image_ids: np.ndarray   # [N] sorted image ids: the bootstrap's image order
    category_ids: np.ndarray  # [K] sorted category ids of the ground truth
    num_gt: np.ndarray      # [K, N] non-ignored ground-truth boxes per category and image
    category: np.ndarray    # [D] category index of each detection
    image: np.ndarray       # [D] image index of each detection
    score: np.ndarray       # [D]
    matched: np.ndarray     # [T, D] matched to a ground-truth box at IoU threshold t
    ignored: np.ndarray     # [T, D] matched to an ignored (crowd) box: neither TP nor FP

    def subset(self, images: np.ndarray) -> ImageMatches:
        """The matching restricted to some images (given as indices, in the new order).
        Matching is per image, so this equals matching the subset itself."""
        images = np.asarray(images)
        position = np.full(len(self.image_ids), -1)
        position[images] = np.arange(len(images))
        keep = position[self.image] >= 0
        new_image = position[self.image[keep]]
        category, score = self.category[keep], self.score[keep]
        # re-rank within category: score descending, ties in the new image order
        order = np.lexsort((new_image, -score, category))
        keep_idx = np.flatnonzero(keep)[order]
        return ImageMatches(self.image_ids[images], self.category_ids, self.num_gt[:, images],
                            self.category[keep_idx], new_image[order], self.score[keep_idx],
                            self.matched[:, keep_idx], self.ignored[:, keep_idx])


def match_images(coco_gt: dict, detections: list[dict]) -> ImageMatches:
    """Run pycocotools' COCOeval.evaluate() (bbox, area "all", 100 detections) once and keep
    what accumulate() needs, per image and category, as numpy arrays.

    pycocotools rather than faster-coco-eval: the C++ evaluator does not expose its per-image
    results. Both give the same AP (tests check it against `coco_box_metrics`)."""
    gt = _complete_ground_truth(coco_gt)
    _check_image_ids(gt, detections)
    with contextlib.redirect_stdout(io.StringIO()):   # COCO prints progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        results = _load_results(coco, detections)
        evaluator = COCOeval(coco, results, iouType="bbox")
        evaluator.params.areaRng = [[0 ** 2, 1e5 ** 2]]   # "all" only: the AP the study reports
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [MAX_DETECTIONS]
        evaluator.evaluate()
    p = evaluator.params
    image_ids, category_ids = np.asarray(p.imgIds), np.asarray(p.catIds)
    num_images, thresholds = len(image_ids), len(p.iouThrs)
    num_gt = np.zeros((len(category_ids), num_images), dtype=np.int64)
    parts = []   # (category, image, score, matched, ignored) per (category, image)
    for k in range(len(category_ids)):
        rows = []
        for i in range(num_images):
            e = evaluator.evalImgs[k * num_images + i]
            if e is None:
                continue
            num_gt[k, i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            scores = np.asarray(e["dtScores"], dtype=float)
            if len(scores):
                rows.append((np.full(len(scores), i), scores, np.asarray(e["dtMatches"]) != 0,
                             np.asarray(e["dtIgnore"]).astype(bool)))
        if rows:
            image = np.concatenate([r[0] for r in rows])
            score = np.concatenate([r[1] for r in rows])
            order = np.argsort(-score, kind="mergesort")   # as accumulate: stable, image order first
            parts.append((np.full(len(score), k), image[order], score[order],
                          np.concatenate([r[2] for r in rows], axis=1)[:, order],
                          np.concatenate([r[3] for r in rows], axis=1)[:, order]))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        flags = np.zeros((thresholds, 0), dtype=bool)
        return ImageMatches(image_ids, category_ids, num_gt, empty, empty, np.zeros(0), flags, flags)
    return ImageMatches(image_ids, category_ids, num_gt,
                        *(np.concatenate([part[j] for part in parts], axis=-1) for j in range(5)))


def _load_results(coco: COCO, detections: list[dict]) -> COCO:
    if detections:
        return coco.loadRes([dict(d) for d in detections])   # loadRes edits the dicts
    results = COCO()   # loadRes fails on an empty list; an empty result set scores 0
    results.dataset = {"images": list(coco.dataset["images"]),
                       "categories": list(coco.dataset["categories"]), "annotations": []}
    results.createIndex()
    return results


# ---------------------------------------------------------------------------- re-accumulation
class ResampledAP:
    """AP@[.5:.95] (area "all", 100 detections) of any multiset of images, as
    COCOeval.accumulate + summarize would compute it on that multiset.

    accumulate() ranks a category's detections by score, takes cumulative TP and FP counts,
    makes precision monotone (the envelope: a suffix maximum) and reads it at 101 recall
    thresholds. A resample only changes how often each image counts, so with the ranking
    fixed the cumulative counts are cumulative sums of *weighted* flags (weight = the image's
    multiplicity). Only the ends of runs of consecutive TPs need evaluating, which keeps the
    arrays small and is exact for every resample:

    * inside a run of TPs precision rises, so the envelope anywhere in it equals the
      envelope at its end, and the recall thresholds the run reaches read that value;
    * inside a run of FPs recall stays and precision falls below the point before it, so
      no threshold is read there and the envelope is never taken there; the FPs only add
      to the FP count of the next TP run, and those after the last TP are dropped;
    * zero weights (images not drawn) keep runs runs.

    A repeated image counts as consecutive copies of each of its detections; this only
    differs from renaming the copies when two detections of one category tie exactly in
    score, and never on the full image set.
    """

    def __init__(self, matches: ImageMatches):
        from scipy import sparse

        self.num_images = len(matches.image_ids)
        self.num_gt = matches.num_gt.astype(float)              # [K, N]
        self.thresholds = matches.matched.shape[0]
        num_categories = len(matches.category_ids)
        segments = []   # per (category, IoU threshold): (image, TP-run index, is TP) per detection
        for k in range(num_categories):
            in_k = np.flatnonzero(matches.category == k)
            for t in range(self.thresholds):
                counted = in_k[~matches.ignored[t, in_k]]
                tp = matches.matched[t, counted]
                hits = np.flatnonzero(tp)
                last = hits[-1] + 1 if len(hits) else 0     # FPs after the last TP never count
                tp = tp[:last]
                # run j: a stretch of FPs, then the TPs up to the next FP; the first TP
                # and every TP after an FP opens a run
                opens = tp & ~np.r_[False, tp[:-1]]
                segments.append((matches.image[counted[:last]], np.cumsum(opens) - tp, tp))
        self.length = max([int(run.max()) + 1 for _, run, _ in segments if len(run)], default=1)
        # rows (kind, run j, segment s), kind 0: TPs of run j, kind 1: the FPs before it;
        # layout [run, segment, resample] so that the cumulative sums and the envelope run
        # along the first axis over contiguous rows
        rows, cols = [], []
        for s, (image, run, tp) in enumerate(segments):
            rows.append(((~tp) * self.length + run) * len(segments) + s)
            cols.append(image)
        shape = (2 * self.length * len(segments), self.num_images)
        self.incidence = sparse.csr_matrix(
            (np.ones(sum(map(len, rows))), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
        self.segment_category = np.repeat(np.arange(num_categories), self.thresholds)   # [S]

    def __call__(self, counts: np.ndarray, chunk: int = 250) -> np.ndarray:
        """AP for each row of ``counts`` ([B, N] image multiplicities); NaN where the
        resample holds no ground truth at all (COCOeval reports -1 there)."""
        counts = np.atleast_2d(np.asarray(counts, dtype=float))
        if counts.shape[1] != self.num_images:
            raise ValueError(f"counts has {counts.shape[1]} images, the matching {self.num_images}")
        return np.concatenate([self._ap(counts[i:i + chunk]) for i in range(0, len(counts), chunk)])

    def _ap(self, counts: np.ndarray) -> np.ndarray:
        resamples, segments = len(counts), len(self.segment_category)
        weight = (self.incidence @ counts.T).reshape(2, self.length, segments, resamples)
        tp = np.cumsum(weight[0], axis=0)
        fp = np.cumsum(weight[1], axis=0)
        num_gt = (counts @ self.num_gt.T).T                               # [K, B]
        gt = num_gt[self.segment_category]                                # [S, B]
        precision = tp / (fp + tp + np.spacing(1))                        # as accumulate()
        envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        # accumulate() reads, for each recall threshold r, the envelope at the first point
        # whose recall >= r; run j thus serves the thresholds in (recall[j-1], recall[j]]
        table, stride = _thresholds_reached(int(gt.max(initial=0)))
        reached = table[(gt * stride + tp).astype(np.intp)]
        served = np.diff(reached, axis=0, prepend=0)
        ap = (envelope * served).sum(axis=0) / len(RECALL_THRESHOLDS)   # [S, B]
        present = num_gt > 0                                              # [K, B]
        total = (ap.reshape(-1, self.thresholds, resamples) * present[:, None]).sum(axis=(0, 1))
        averaged = present.sum(axis=0) * self.thresholds
        return np.divide(total, averaged, out=np.full(resamples, np.nan), where=averaged > 0)


@functools.lru_cache(maxsize=8)
def _thresholds_reached_table(size: int) -> np.ndarray:
    gt, tp = np.arange(size + 1.0)[:, None], np.arange(size + 1.0)[None, :]
    recall = np.divide(tp, gt, out=np.zeros((size + 1, size + 1)), where=gt > 0)
    table = np.searchsorted(RECALL_THRESHOLDS, recall, side="right").astype(np.int16).ravel()
    table.flags.writeable = False
    return table


def _thresholds_reached(max_gt: int) -> tuple[np.ndarray, int]:
    """(table, stride): table[gt * stride + tp] is how many recall thresholds tp / gt
    reaches, by the very float division and comparison accumulate() makes (0.35 = 7 / 20
    does not reach the threshold linspace puts at 0.35000000000000003). A lookup is several
    times faster than searchsorted on every point."""
    size = 1 << max(int(max_gt), 1).bit_length()    # few distinct sizes, each built once
    return _thresholds_reached_table(size), size + 1


# ---------------------------------------------------------------------------- synthetic data
def synthetic_detections(rng: np.random.Generator, num_images: int, num_categories: int = 7,
                         recall: float = 0.8, false_positives: float = 6.0, jitter: float = 0.12,
                         crowd: float = 0.0, score_decimals: int = 5) -> tuple[dict, list[dict]]:
    """A COCO ground truth and the results of a plausible detector on it, image by image
    from one fixed distribution (for tests and the benchmark): 1-8 boxes per image; each
    found with probability ``recall`` by a box jittered in position and size (so IoU varies
    across the thresholds), with a high score and sometimes the wrong class; and a Poisson
    number of false positives with low scores. ``crowd``: the share of crowd (ignored) boxes."""
    images, annotations, detections = [], [], []
    size = 128
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": size, "height": size})
        for _ in range(1 + rng.binomial(7, 0.4)):
            w, h = rng.uniform(8, 64, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            category = int(rng.integers(1, num_categories + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < crowd)})
            if rng.random() < recall:
                dx, dy = rng.normal(0, jitter, 2) * (w, h)
                sw, sh = np.exp(rng.normal(0, jitter, 2))
                wrong = rng.random() < 0.1
                detections.append({
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, num_categories + 1)) if wrong else category,
                    "bbox": [x + dx, y + dy, w * sw, h * sh],
                    "score": round(float(1 / (1 + np.exp(-rng.normal(1.5, 1.2)))), score_decimals)})
        for _ in range(rng.poisson(false_positives)):
            w, h = rng.uniform(8, 64, 2)
            detections.append({"image_id": image_id, "category_id": int(rng.integers(1, num_categories + 1)),
                               "bbox": [rng.uniform(0, size - w), rng.uniform(0, size - h), w, h],
                               "score": round(float(1 / (1 + np.exp(-rng.normal(-1.0, 1.2)))), score_decimals)})
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections
