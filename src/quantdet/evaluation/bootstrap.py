"""Image-bootstrap intervals for box AP and everything built from it (P, mPC, rPC, paired
differences between models).

The sampling unit is the validation image. One resample is a *count vector* over the images
(how often each image is drawn), and the same count vector is applied to every model and to
every corrupted copy of an image (corrupted splits keep the clean image ids), so differences
between models and between conditions are resampled consistently (paired).

Cost: COCOeval's per-image matching (`match_images`) runs once per (model, condition,
severity); a resample only re-accumulates. `ResampledAP` turns the matching into runs of
consecutive true positives per (category, IoU threshold) and evaluates the 101-point
interpolated AP of many count vectors at once with a sparse matrix product and cumulative
sums: no re-sorting, no Python loop over resamples. `python -m quantdet.evaluation.bootstrap
--bench` times it.

Arrays of replicates follow one convention throughout: element 0 is the statistic on the
full image set (the point estimate), elements 1.. are the bootstrap replicates.

Intervals are *basic* (reverse-percentile) bootstrap intervals, see `basic_interval`; repeat
seeds widen a comparison's interval as `seed_pooled_interval` describes.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from quantdet.evaluation.coco_metrics import _check_image_ids, _complete_ground_truth

# COCOeval's recall thresholds, this exact array, so that comparisons agree bit for bit.
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETECTIONS = 100
_CHUNK_ELEMENTS = 4_000_000   # resamples per pass: arrays of about 32 MB


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
        """The matching restricted to some images (indices, ascending to keep COCO's order
        of image ids). Matching is per image, so this equals matching the subset itself."""
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


# COCO's object sizes (area in pixels of the image as annotated), as COCOeval's areaRng.
AREA_RANGES = {"all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
               "large": (96 ** 2, 1e5 ** 2)}


def match_images(coco_gt: dict, detections: list[dict]) -> ImageMatches:
    """Run pycocotools' COCOeval.evaluate() (bbox, area "all", 100 detections) once and keep
    what accumulate() needs, per image and category, as numpy arrays.

    pycocotools rather than faster-coco-eval: the C++ evaluator does not expose its per-image
    results. Both give the same AP (tests check it against `coco_box_metrics`)."""
    return match_images_by_area(coco_gt, detections, ("all",))["all"]


def match_images_by_area(coco_gt: dict, detections: list[dict],
                         areas=("all", "small", "medium", "large")) -> dict[str, ImageMatches]:
    """`match_images` for each of COCO's object sizes (``AREA_RANGES``) from one evaluate():
    in each, ground truth outside the size range is ignored, and so are unmatched detections
    outside it, as COCOeval does for AP_small/medium/large."""
    gt = _complete_ground_truth(coco_gt)
    _check_image_ids(gt, detections)
    with contextlib.redirect_stdout(io.StringIO()):   # COCO prints progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        results = _load_results(coco, detections)
        evaluator = COCOeval(coco, results, iouType="bbox")
        evaluator.params.areaRng = [list(AREA_RANGES[a]) for a in areas]
        evaluator.params.areaRngLbl = list(areas)
        evaluator.params.maxDets = [MAX_DETECTIONS]
        evaluator.evaluate()
    p = evaluator.params
    image_ids, category_ids = np.asarray(p.imgIds), np.asarray(p.catIds)
    num_images, num_areas = len(image_ids), len(areas)
    # evalImgs is laid out [category][area][image]
    return {area: _matches(evaluator.evalImgs, a, num_areas, image_ids, category_ids, len(p.iouThrs))
            for a, area in enumerate(areas)}


def _matches(eval_images: list, area: int, num_areas: int, image_ids: np.ndarray,
             category_ids: np.ndarray, thresholds: int) -> ImageMatches:
    num_images = len(image_ids)
    num_gt = np.zeros((len(category_ids), num_images), dtype=np.int64)
    parts = []   # (category, image, score, matched, ignored) of each category's detections
    for k in range(len(category_ids)):
        first = (k * num_areas + area) * num_images
        found = [(i, e) for i, e in enumerate(eval_images[first:first + num_images]) if e is not None]
        for i, e in found:
            num_gt[k, i] = len(e["gtIgnore"]) - np.count_nonzero(e["gtIgnore"])
        found = [(i, e) for i, e in found if e["dtScores"]]
        if not found:
            continue
        score = np.concatenate([e["dtScores"] for _, e in found])
        image = np.repeat([i for i, _ in found], [len(e["dtScores"]) for _, e in found])
        order = np.argsort(-score, kind="mergesort")   # as accumulate: stable, image order first
        parts.append((np.full(len(score), k), image[order], score[order],
                      np.concatenate([e["dtMatches"] for _, e in found], axis=1)[:, order] != 0,
                      np.concatenate([e["dtIgnore"] for _, e in found], axis=1)[:, order].astype(bool)))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        flags = np.zeros((thresholds, 0), dtype=bool)
        return ImageMatches(image_ids, category_ids, num_gt, empty, empty, np.zeros(0), flags, flags)
    return ImageMatches(image_ids, category_ids, num_gt,
                        *(np.concatenate([part[j] for part in parts], axis=-1) for j in range(5)))


def resampled_recall(matches: ImageMatches, counts: np.ndarray, score_threshold: float) -> np.ndarray:
    """Recall per category ([B, K]) at IoU 0.5 of the detections scoring at least
    ``score_threshold``, for each row of ``counts`` (image multiplicities): the share of a
    category's ground-truth boxes that such a detection found. NaN where a resample holds no
    box of the category. Exact for every resample: COCOeval matches greedily in score order,
    so a detection above the threshold is matched whatever scores below it."""
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    found = (matches.score >= score_threshold) & matches.matched[0] & ~matches.ignored[0]
    hits = np.zeros_like(matches.num_gt, dtype=float)
    np.add.at(hits, (matches.category[found], matches.image[found]), 1.0)
    boxes = counts @ matches.num_gt.T.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(boxes > 0, (counts @ hits.T) / boxes, np.nan)


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
        self.segment_category = np.repeat(np.arange(num_categories), self.thresholds)   # [S]
        # Segments are padded to a common number of runs; grouping them by length, within
        # a factor 2, keeps the padding small. A segment without TPs adds 0 and is left out.
        lengths = np.array([int(run.max()) + 1 if len(run) else 0 for _, run, _ in segments])
        order = np.argsort(-lengths, kind="stable")
        order = order[lengths[order] > 0]
        self.buckets = []   # (segment indices, runs, incidence)
        while len(order):
            longest = int(lengths[order[0]])
            size = np.count_nonzero(2 * lengths[order] > longest)
            ids, order = order[:size], order[size:]
            self.buckets.append((ids, longest, _incidence([segments[s] for s in ids], longest, self.num_images)))
        self.elements = sum(len(ids) * length for ids, length, _ in self.buckets)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """AP for each row of ``counts`` ([B, N] image multiplicities); NaN where the
        resample holds no ground truth at all (COCOeval reports -1 there)."""
        counts = np.atleast_2d(np.asarray(counts, dtype=float))
        if counts.shape[1] != self.num_images:
            raise ValueError(f"counts has {counts.shape[1]} images, the matching {self.num_images}")
        chunk = max(1, _CHUNK_ELEMENTS // max(self.elements, 1))
        return np.concatenate([self._ap(counts[i:i + chunk]) for i in range(0, len(counts), chunk)])

    def _ap(self, counts: np.ndarray) -> np.ndarray:
        resamples = len(counts)
        num_gt = (counts @ self.num_gt.T).T                               # [K, B]
        gt = num_gt[self.segment_category]                                # [S, B]
        table, stride = _thresholds_reached(int(gt.max(initial=0)))
        ap = np.zeros((len(self.segment_category), resamples))            # [S, B]
        for ids, length, incidence in self.buckets:
            ap[ids] = _segment_ap(incidence, length, counts, gt[ids], table, stride)
        present = num_gt > 0                                              # [K, B]
        total = (ap.reshape(-1, self.thresholds, resamples) * present[:, None]).sum(axis=(0, 1))
        averaged = present.sum(axis=0) * self.thresholds
        return np.divide(total, averaged, out=np.full(resamples, np.nan), where=averaged > 0)


def _incidence(segments: list[tuple], length: int, num_images: int):
    """Sparse [2 * length * S, N]: row (kind, run j, segment s) counts the detections of each
    image among run j's TPs (kind 0) or the FPs before them (kind 1). Layout [run, segment,
    resample] so that cumulative sums and the envelope go along the first axis, row by row."""
    from scipy import sparse

    rows = [((~tp) * length + run) * len(segments) + s for s, (_, run, tp) in enumerate(segments)]
    cols = [image for image, _, _ in segments]
    return sparse.csr_matrix((np.ones(sum(map(len, rows))), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(2 * length * len(segments), num_images))


def _segment_ap(incidence, length: int, counts: np.ndarray, gt: np.ndarray, table: np.ndarray,
                stride: int) -> np.ndarray:
    """101-point AP per segment and resample ([S, B]) of segments padded to ``length`` runs."""
    resamples, segments = len(counts), len(gt)
    weight = (incidence @ counts.T).reshape(2, length, segments, resamples)
    tp, fp = weight[0], weight[1]
    # cumulative counts and the envelope row by row: each row ([S, B]) is contiguous, which
    # numpy's accumulate along axis 0 of a reversed view is not
    for j in range(1, length):
        tp[j] += tp[j - 1]
        fp[j] += fp[j - 1]
    fp += tp
    fp += np.spacing(1)
    precision = np.divide(tp, fp, out=fp)                  # tp / (fp + tp + eps), as accumulate()
    for j in range(length - 2, -1, -1):                     # the envelope: suffix maximum
        np.maximum(precision[j], precision[j + 1], out=precision[j])
    # accumulate() reads, for each recall threshold r, the envelope at the first point whose
    # recall >= r; run j thus serves the thresholds in (recall[j-1], recall[j]]
    reached = table[(gt * stride + tp).astype(np.intp)]
    served = np.diff(reached, axis=0, prepend=0)
    return np.einsum("jsb,jsb->sb", precision, served) / len(RECALL_THRESHOLDS)


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


# ---------------------------------------------------------------------------- resamples
def resample_counts(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """[1 + resamples, num_images] image multiplicities: row 0 is the full set (every image
    once), each further row a draw of num_images images with replacement. One such matrix
    serves every model and condition of a study: that is what pairs them."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(num_images, size=(resamples, num_images))
    counts = np.bincount((draws + num_images * np.arange(resamples)[:, None]).ravel(),
                         minlength=resamples * num_images).reshape(resamples, num_images)
    return np.vstack([np.ones((1, num_images), dtype=counts.dtype), counts])


def robustness_replicates(ap: dict[tuple[str, int], np.ndarray], corruptions: list[str],
                          severities: list[int], groups: dict[str, list[str]] | None = None,
                          suites: dict[str, list[tuple[str, int]]] | None = None) -> dict:
    """From AP replicates per (condition, severity), clean being ("clean", 0): P, mPC and rPC
    (Michaelis et al.: mPC over ``corruptions`` x ``severities``, rPC = mPC / P), mPC over
    each named group of corruptions (``mPC_<group>``, e.g. held-out), and two nested dicts:
    "corruptions", AP per evaluated corruption (mean over severities), and "severities",
    the mean over ``corruptions`` per severity. ``suites``: other degradation suites, each
    its (corruption, severity) cells: ``mPC_<suite>`` their mean and ``rPC_<suite>`` that mean
    over P; "relative" holds each of their conditions' AP (mean over its severities) over P.
    Every array keeps the replicate layout (element 0: the full image set), so any
    figure derived from them is resampled alike."""
    def mean(cells):
        return np.mean([ap[cell] for cell in cells], axis=0)

    p = ap[("clean", 0)]
    mpc = mean([(c, s) for c in corruptions for s in severities])
    with np.errstate(divide="ignore", invalid="ignore"):
        figures = {"P": p, "mPC": mpc, "rPC": np.where(p != 0, mpc / p, np.nan)}
    for group, names in (groups or {}).items():
        if names:
            figures[f"mPC_{group}"] = mean([(c, s) for c in names for s in severities])
    for suite, cells in (suites or {}).items():
        figures[f"mPC_{suite}"] = mean(cells)
        with np.errstate(divide="ignore", invalid="ignore"):
            figures[f"rPC_{suite}"] = np.where(p != 0, figures[f"mPC_{suite}"] / p, np.nan)
    evaluated = dict.fromkeys(c for c, _ in ap if c != "clean")   # each at the severities it has
    figures["corruptions"] = {c: mean([cell for cell in ap if cell[0] == c]) for c in evaluated}
    figures["severities"] = {s: mean([(c, s) for c in corruptions]) for s in severities}
    if suites:   # each other suite's condition relative to P (QRID's relative drop is 1 - this)
        with np.errstate(divide="ignore", invalid="ignore"):
            figures["relative"] = {c: np.where(p != 0, figures["corruptions"][c] / p, np.nan)
                                   for cells in suites.values() for c in dict.fromkeys(c for c, _ in cells)}
    return figures


# ---------------------------------------------------------------------------- intervals
def basic_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval [2 t - q_hi, 2 t - q_lo], t the
    estimate (``values[0]``), q the quantiles of the replicates (``values[1:]``).

    Why basic and not percentile: AP's bootstrap distribution sits above the estimate (the
    precision envelope takes maxima, and a resample with repeated images has fewer distinct
    ones), by 0.5-1.2 AP points on 48 images. The basic interval assumes that t* - t behaves
    like t - truth, so it reflects that shift to the other side: it corrects the bias to
    first order where the percentile interval doubles it. BCa would also correct it, but
    its acceleration needs a jackknife per statistic and its bias constant comes from the
    share of replicates below t, which the many ties of AP on small sets make coarse; the
    coverage test (tests/test_bootstrap.py) checks the basic interval on a known population.
    Replicates that are NaN (a resample with no ground truth) are left out."""
    estimate, replicates = values[0], values[1:]
    replicates = replicates[np.isfinite(replicates)]
    if not np.isfinite(estimate) or len(replicates) == 0:
        return math.nan, math.nan
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(2 * estimate - high), float(2 * estimate - low)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The plain percentile interval (biased on AP; for comparison only)."""
    replicates = values[1:][np.isfinite(values[1:])]
    if len(replicates) == 0:
        return math.nan, math.nan
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def summary(values: np.ndarray, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Estimate, basic interval, and the bootstrap's bias (replicate mean - estimate).

    ``bounds``: the range the figure lives in (AP: [0, 1]). Reflecting the replicates can
    carry the basic interval past it near 0; the interval is then cut at the bound, which
    cannot lose coverage since the truth lies within it."""
    low, high = basic_interval(values, level)
    if bounds is not None:
        low, high = float(np.clip(low, *bounds)), float(np.clip(high, *bounds))
    replicates = values[1:][np.isfinite(values[1:])]
    bias = float(replicates.mean() - values[0]) if len(replicates) and np.isfinite(values[0]) else math.nan
    return {"estimate": float(values[0]), "low": low, "high": high, "bootstrap_bias": bias}


def seed_pooled_interval(per_seed: np.ndarray, level: float = 0.95) -> dict:
    """Interval of a difference averaged over repeat seeds, carrying both image sampling and
    seed-to-seed (training) variation. ``per_seed``: [n seeds, 1 + B], each row the
    replicates of one seed's paired difference under the shared image resamples.

    Model: difference_k = effect + image term (shared by the seeds, as they see the same
    images) + seed term_k + seed-by-image term_k. The estimate is the seed mean.
    * Image part: the basic interval of the seed mean's replicates (the seeds share each
      resample, so this is the image variance of the mean, the seed-by-image part included).
    * Seed part: the between-seed variance s^2 of the per-seed differences also contains
      the seed-by-image variance, which the image part already counts; it is estimated from
      the bootstrap (the replicate variance of each seed's deviation from the seed mean) and
      subtracted, as for between-laboratory variance in ISO 5725: var_seed =
      max(0, s^2 - v_within), and the mean carries var_seed / n.
    * Both combine per side: each side's image half-width h is read as 1.96 sd_img; the side
      gets t(nu) * sqrt(sd_img^2 + var_seed / n), nu by Welch-Satterthwaite with n - 1
      degrees of freedom for the seed part (an image part with many resamples has ~inf).
      With equal seeds this is the image interval; with no image noise, the t interval of
      the n per-seed differences. Two seeds give t(1) = 12.7 times their spread: two seeds
      cannot estimate training variance, and the interval says so.
    """
    from scipy import stats

    per_seed = np.atleast_2d(per_seed)
    n = len(per_seed)
    pooled = per_seed.mean(axis=0)
    estimate = float(pooled[0])
    images_low, images_high = basic_interval(pooled, level)
    out = {"estimate": estimate, "low": images_low, "high": images_high,
           "images_low": images_low, "images_high": images_high, "seeds": n,
           "per_seed": [float(v) for v in per_seed[:, 0]], "seed_sd": math.nan}
    if n < 2 or not np.isfinite(estimate):
        return out
    between = float(np.var(per_seed[:, 0], ddof=1))
    deviation = per_seed[:, 1:] - pooled[1:]
    within = float(np.nanvar(deviation, axis=1).sum() / (n - 1))
    var_seed = max(0.0, between - within)
    out["seed_sd"] = math.sqrt(var_seed)
    if var_seed == 0:
        return out
    z = stats.norm.ppf((1 + level) / 2)
    for key, half in (("low", estimate - images_low), ("high", images_high - estimate)):
        var_images = (max(half, 0.0) / z) ** 2
        total = var_images + var_seed / n
        dof = total ** 2 / ((var_seed / n) ** 2 / (n - 1))
        width = stats.t.ppf((1 + level) / 2, dof) * math.sqrt(total)
        out[key] = estimate - width if key == "low" else estimate + width
    return out


def paired_differences(treatments: list[dict[str, np.ndarray]], baselines: list[dict[str, np.ndarray]],
                       metrics, level: float = 0.95) -> dict[str, dict]:
    """Treatment - baseline on each metric, one (treatment, baseline) pair per seed, all
    under the same image resamples; pooled over the seeds by `seed_pooled_interval`."""
    out = {}
    for metric in metrics:
        if not all(metric in f for f in treatments + baselines):
            continue
        per_seed = np.array([t[metric] - b[metric] for t, b in zip(treatments, baselines)])
        out[metric] = seed_pooled_interval(per_seed, level)
    return out


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


# ---------------------------------------------------------------------------- benchmark
def benchmark(num_images: int = 48, resamples: int = 1000, false_positives: float = 90.0,
              repeats: int = 5, evaluations: int = 47 * 96) -> dict:
    """CPU seconds per (model, condition, severity) for matching once and for ``resamples``
    re-accumulations, on a synthetic evaluation of the default study's size (48 images,
    7 classes, up to 100 detections per image), and the projection to ``evaluations`` of
    them (the default study: 47 models x 96 conditions)."""
    import time

    rng = np.random.default_rng(0)
    counts = resample_counts(num_images, resamples, seed=1)
    timings = {"match": [], "build": [], "resample": []}
    for _ in range(repeats):
        gt, detections = synthetic_detections(rng, num_images, recall=0.9, jitter=0.03,
                                              false_positives=false_positives)
        # CPU time of this process: on a shared machine wall time measures the neighbours
        start = time.process_time()
        matches = match_images(gt, detections)
        built = time.process_time()
        resampler = ResampledAP(matches)
        ready = time.process_time()
        resampler(counts)
        done = time.process_time()
        for key, seconds in zip(timings, (built - start, ready - built, done - ready)):
            timings[key].append(seconds)
    per = {key: float(np.median(values)) for key, values in timings.items()}
    return {"images": num_images, "resamples": resamples, "detections": len(detections),
            **{f"{key}_seconds": value for key, value in per.items()},
            "study_evaluations": evaluations,
            "study_resample_seconds": evaluations * (per["build"] + per["resample"]),
            "study_total_seconds": evaluations * sum(per.values())}


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m quantdet.evaluation.bootstrap",
                                     description="Time the image bootstrap of AP on a synthetic evaluation.")
    parser.add_argument("--bench", action="store_true", required=True)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--false-positives", type=float, default=90.0, help="per image (Poisson mean)")
    args = parser.parse_args(argv)
    result = benchmark(args.images, args.resamples, args.false_positives)
    print(f"{result['images']} images, {result['detections']} detections: "
          f"matching {1000 * result['match_seconds']:.1f} ms, runs {1000 * result['build_seconds']:.1f} ms, "
          f"{result['resamples']} resamples {1000 * result['resample_seconds']:.1f} ms "
          "per (model, condition, severity), CPU time")
    print(f"a study of {result['study_evaluations']} evaluations: resampling {result['study_resample_seconds']:.0f} s, "
          f"with matching {result['study_total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
