"""Does quantdet score a `yolo train` checkpoint as Ultralytics does? The checkpoint's FP32 COCO
AP on a prepared val split, twice: quantdet's evaluator (the yolo family's network, decode and
letterbox) and Ultralytics' own validator (its letterbox, conf and NMS), whose
predictions (`save_json`) are scored with the same COCO evaluation on the same annotations.

    python scripts/ultralytics_agreement.py --checkpoint runs/detect/train/weights/best.pt \
        --data data.yaml --val studies/mine/data/prepared/val --imgsz 640 [--conf 0.001 --iou 0.7]

`--val` is the val split `quantdet prepare` made from the same data.yaml (`data.source: yolo`).
Ultralytics runs square letterboxing (`rect=False`), as quantdet's evaluator does, and the yolo
family letterboxes as Ultralytics' validator (long side to imgsz by OpenCV, sides rounded up,
centred on grey 114: tests/test_letterbox.py compares the pixels). Prints both APs and their
difference as JSON.

An end-to-end head (YOLO26, YOLOv10) is read through its one-to-one branch by both (top-k, no
NMS): quantdet always reads it so, and Ultralytics' validator does with `nms=False` (its default,
`nms=None`, reads the one-to-many branch and runs NMS).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def quantdet_ap(checkpoint: Path, val: Path, imgsz: int, conf: float, iou: float, max_det: int,
                batch: int) -> dict:
    from quantdet import detectors
    from quantdet.data.dataset import DetectionDataset
    from quantdet.evaluation.evaluate import evaluate_split

    names = DetectionDataset(val, imgsz).class_names
    family = detectors.get("yolo")
    network, config = family.load_checkpoint(checkpoint, list(names), len(names))
    network.detector_config = dict(config)
    decode = detectors.Decoder(config, imgsz, score_threshold=conf, max_detections=max_det, nms_iou=iou)
    metrics, _, timing = evaluate_split(network.eval(), val, input_size=imgsz, decode=decode, batch_size=batch,
                                        letterbox=family.letterbox)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "end2end": bool(config.get("end2end")), **timing}


def ultralytics_ap(checkpoint: Path, data: Path, val: Path, imgsz: int, conf: float, iou: float,
                   max_det: int, batch: int, end2end: bool = False) -> dict:
    from quantdet.detectors.yolo import ultralytics_imported
    from quantdet.evaluation.coco_metrics import coco_box_metrics

    ultralytics_imported()
    from ultralytics import YOLO

    gt = json.loads((val / "annotations.json").read_text())
    # Ultralytics names an image by its file's stem, as an int where the stem is numeric
    by_stem = {Path(i["file_name"]).stem: i["id"] for i in gt["images"]}
    by_stem.update({str(int(stem)): i for stem, i in list(by_stem.items()) if stem.isnumeric()})
    category_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    with tempfile.TemporaryDirectory() as tmp:
        YOLO(str(checkpoint)).val(data=str(data), imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                                  batch=batch, rect=False, save_json=True, plots=False, device="cpu",
                                  workers=0, project=tmp, name="val", exist_ok=True, verbose=False,
                                  **({"nms": False} if end2end else {}))   # the one-to-one branch, as quantdet
        predictions = json.loads(next(Path(tmp).rglob("predictions.json")).read_text())
    # its JSON numbers a non-COCO dataset's classes from 1 (class_map = 1..nc)
    detections = [{"image_id": by_stem[str(p["image_id"])], "category_id": category_ids[int(p["category_id"]) - 1],
                   "bbox": p["bbox"], "score": p["score"]} for p in predictions if str(p["image_id"]) in by_stem]
    metrics = coco_box_metrics(gt, detections)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "detections": len(detections),
            "branch": "one-to-one (nms=False)" if end2end else "NMS"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the data.yaml Ultralytics validates on")
    parser.add_argument("--val", type=Path, required=True, help="quantdet's prepared val split of that data.yaml")
    parser.add_argument("--imgsz", type=int, required=True)
    parser.add_argument("--conf", type=float, default=0.001)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument("--max-det", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "quantdet-ultralytics"))
    ours = quantdet_ap(args.checkpoint, args.val, args.imgsz, args.conf, args.iou, args.max_det, args.batch)
    theirs = ultralytics_ap(args.checkpoint, args.data, args.val, args.imgsz, args.conf, args.iou,
                            args.max_det, args.batch, end2end=ours["end2end"])
    result = {"checkpoint": str(args.checkpoint), "imgsz": args.imgsz, "conf": args.conf, "iou": args.iou,
              "max_det": args.max_det, "quantdet": ours, "ultralytics": theirs,
              "AP_points_difference": round(100 * (ours["AP"] - theirs["AP"]), 2)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
