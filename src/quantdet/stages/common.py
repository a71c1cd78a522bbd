"""What every stage driver shares: logging its MLflow run with the params it read, inputs,
threads, the calibration images and decode settings."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from quantdet import study, tracking
from quantdet.config import params_hash, select
from quantdet.errors import QuantdetError

log = logging.getLogger("quantdet")


def log_job(params, stage, model=None, role="student", generator=None, **kwargs):
    """The job's MLflow run, with the params leaves the job reads (study.job_reads)."""
    read = select(params, study.job_reads(stage, role, model=model, generator=generator, params=params))
    return tracking.log_job(params, stage=stage, model=model, params_read=read,
                            params_hash=params_hash(read),
                            job=":".join(x for x in (stage, model, generator) if x), **kwargs)


def set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def require(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise QuantdetError(f"{path}: missing input (run the stage that makes it first)")
    if path.is_file():   # a model or ONNX file with a recorded checksum: checked before use
        from quantdet.integrity import verify_file

        verify_file(path)
    return path


def split_fingerprint(split: str | Path) -> str:
    """Hash of a split's annotations and image bytes: the identity of a calibration set."""
    split = Path(split)
    h = hashlib.sha256((split / "annotations.json").read_bytes())
    for image in sorted((split / "images").iterdir()):
        h.update(image.name.encode())
        h.update(image.read_bytes())
    return h.hexdigest()[:16]


def image_batches(split: str | Path, input_size: int, batch_size: int, letterbox=None):
    """Batches of a split's letterboxed images (``letterbox``: the detector family's)."""
    from torch.utils.data import DataLoader

    from quantdet.data.dataset import DetectionDataset, collate_detections

    dataset = DetectionDataset(require(split), input_size, augment=False, letterbox=letterbox)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detections)
    return (images for images, _, _ in loader)


class CalibrationSet:
    """The calibration images a quantizer sees, and their identity.

    Clean: the calib split as is. Degradation-aware (QRID): each image is degraded, with
    probability p, by one transform of `quant.degradations` at a random severity, seeded per
    image. The fingerprint hashes the exact input tensors consumed (so it changes with the
    images, the preprocessing, the degradation plan and the number of batches), and is
    recorded in the model file, its MLflow run and the exported ONNX metadata.
    """

    def __init__(self, params: dict, degraded: bool = False, seed: int | None = None,
                 split: str | None = None, letterbox=None):
        from torch.utils.data import DataLoader

        from quantdet.data.dataset import DetectionDataset, collate_detections
        from quantdet.data.degraded import DegradedDataset

        self.split = split or f"{study.PREPARED}/calib"  # zero-shot: a generated split
        self.batch_size = params["quant"]["ptq"]["calib_batch_size"]
        size = params["models"]["input_size"]
        dataset = DetectionDataset(require(self.split), size, augment=False, letterbox=letterbox)
        self.drawn_with = None
        if (self.split == f"{study.PREPARED}/calib" and seed is not None
                and seed != params["study"]["seed"]):
            # a repeat seed: as many real images, drawn from train with the seed (the calib
            # split is the study seed's draw), so the repeat measures calibration sampling too
            from quantdet.data.dataset import SeededSubset

            self.split, self.drawn_with = f"{study.PREPARED}/train", seed
            dataset = SeededSubset(DetectionDataset(require(self.split), size, augment=False,
                                                    letterbox=letterbox),
                                   len(dataset), seed)
        self.degradations = None
        if degraded:
            d = params["quant"]["degradations"]
            seed = params["study"]["seed"] if seed is None else seed
            dataset = DegradedDataset(dataset, d["names"], d["p"], d["severities"], seed)
            self.degradations = dataset.identity()
        self.loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                 collate_fn=collate_detections)
        self._hash = hashlib.sha256()
        self.batches = self.degraded_images = 0

    def __iter__(self):
        for images, _, metas in self.loader:
            self._hash.update(images.numpy().tobytes())
            self.batches += 1
            self.degraded_images += sum(m.get("degradation") is not None for m in metas)
            yield images

    def info(self) -> dict:
        if not self.batches:
            raise QuantdetError(f"{self.split}: no calibration batch was read")
        return {"split": self.split, "drawn_with_seed": self.drawn_with,
                "fingerprint": self._hash.hexdigest()[:16],
                "split_fingerprint": split_fingerprint(self.split), "batches": self.batches,
                "batch_size": self.batch_size, "degradations": self.degradations,
                "degraded_images": self.degraded_images}


def decode_params(params: dict) -> dict:
    e = params["evaluate"]
    return {"score_threshold": e["score_threshold"], "max_detections": e["max_detections"],
            "nms_iou": e["nms_iou"]}


