"""Ultralytics' own quantization-aware training (`yolo train model=best.pt quantize=8`), the QAT a
YOLO user gets from the tool they already have: Ultralytics' trainer (its loss, augmentation,
optimizer choice, warm-up, EMA and schedule, at its defaults) with ModelOpt's INT8 fake
quantization (`ultralytics.utils.torch_utils.prepare_qat`: `mtq.INT8_DEFAULT_CFG`, per-channel
int8 weights and per-tensor int8 activations whose ranges are calibrated once on 8 training
batches and then held fixed; the head's bare output convolutions and its DFL kept in float).

This peer runs that trainer, from the Ultralytics version installed, on:
- the FP32 model of the study (the same weights every method starts from), handed to Ultralytics
  as the checkpoint `yolo train` reads (a pickled DetectionModel), as a user's `best.pt` would be;
- the data budget of quantdet's own QAT recipes (DA-QAT's): `quant.qat.epochs` epochs over the
  seeded subset of `quant.qat.images` training images that our QAT draws with the same seed, at
  `quant.qat.batch_size` and the study's input size, written as an Ultralytics dataset (the
  prepared training images, linked, and YOLO label files) in a temporary folder;
- no validation during training (`val=False`: the study evaluates the result), `plots=False`,
  on the GPU where there is one, else the CPU, Ultralytics' seed from `study.seed`, deterministic.

Its `last.pt` (a QAT checkpoint: the EMA network plus ModelOpt's state) is loaded by
Ultralytics' own loader, which re-applies the quantizers; its BatchNorms are folded by
Ultralytics' `fuse()`, which rescales the weight ranges with them, as its exporter does; and the
network up to the head's raw outputs (quantdet's, decode outside) is exported with
`torch.onnx.export(dynamo=False)`, the call of Ultralytics' ONNX exporter, which writes
ModelOpt's quantizers as QuantizeLinear/DequantizeLinear pairs; each weight's QuantizeLinear is
then replaced by the integers it makes (the same values), as every peer's weights are stored. What differs from `yolo export`:
the decode (outside the graph here, inside and float there). The YOLO family only."""
from quantdet.methods import register_method
from quantdet.methods.base import PeerMethod


def write_yolo_subset(split_dir, out_dir, images: int | None, seed: int) -> dict:
    """An Ultralytics dataset in `out_dir` of a prepared split (`annotations.json`, `images/`):
    the seeded subset of `images` images that quantdet's QAT draws (`SeededSubset`, the same
    seed), each image linked and its objects written as a YOLO label file; the class index is
    the dataset's (categories by id). Returns {"data_yaml", "images", "objects", "names"}."""
    import os
    from pathlib import Path

    import yaml

    from quantdet.data.dataset import DetectionDataset, SeededSubset

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    dataset = DetectionDataset(split_dir, 32)   # annotations only: no image is read
    indices = range(len(dataset.images))
    if images is not None and images < len(dataset.images):
        indices = SeededSubset(dataset, images, seed).indices   # our QAT's own draw
    image_dir, label_dir = out_dir / "images" / "train", out_dir / "labels" / "train"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    objects = 0
    for i in indices:
        info = dataset.images[i]
        source = (split_dir / "images" / info["file_name"]).resolve()
        name = f"{i:06d}{source.suffix}"
        os.symlink(source, image_dir / name)
        width, height = float(info["width"]), float(info["height"])
        boxes, labels = dataset.targets[i]
        lines = [f"{int(c)} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                 f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
                 for (x0, y0, x1, y1), c in zip(boxes.tolist(), labels.tolist())]
        (label_dir / f"{i:06d}.txt").write_text("".join(line + "\n" for line in lines))
        objects += len(lines)
    data_yaml = out_dir / "data.yaml"
    names = dict(enumerate(dataset.class_names))
    data_yaml.write_text(yaml.safe_dump({"path": str(out_dir), "train": "images/train",
                                         "val": "images/train", "names": names}, sort_keys=False))
    return {"data_yaml": data_yaml, "images": len(indices), "objects": objects, "names": names}


def qat_network(checkpoint, detector_config: dict):
    """quantdet's YoloNetwork of a QAT checkpoint written by Ultralytics' trainer: loaded by
    Ultralytics (its quantizers re-applied), BatchNorm folded by its `fuse()` (weight ranges
    rescaled), in eval mode, carrying `detector_config`."""
    from ultralytics.nn.tasks import load_checkpoint

    from quantdet.detectors.yolo import _wrap

    detection, _ = load_checkpoint(str(checkpoint), device="cpu", fuse=False)
    detection = detection.float().eval()
    # Ultralytics' fuse() drops one of an end-to-end head's two branches, the one its `end2end`
    # flag does not select; a loaded checkpoint's flag is off (its validator's default, nms=None),
    # so it would keep the one-to-many branch, which quantdet decodes without NMS: duplicates.
    # Keep the branch the study's detector reads (its FP32 model and every other method).
    end2end = bool(detector_config.get("end2end"))
    head = detection.model[-1]
    if hasattr(head, "end2end"):
        head.end2end = end2end
    detection.fuse(verbose=False)
    network = _wrap(detection).eval()
    if bool(network.end2end) != end2end:
        raise ValueError(f"the QAT checkpoint {checkpoint} reads the "
                         f"{'one-to-one' if network.end2end else 'one-to-many'} branch after fuse(); "
                         f"the study's detector reads the {'one-to-one' if end2end else 'one-to-many'}")
    network.detector_config = dict(detector_config)
    return network


def quantizer_counts(network) -> dict:
    """ModelOpt's quantizers in a network: how many quantize and how many are disabled."""
    quantizers = [m for m in network.modules() if type(m).__name__ == "TensorQuantizer"]
    enabled = sum(bool(getattr(m, "is_enabled", True)) for m in quantizers)
    return {"quantizers": len(quantizers), "enabled": enabled, "disabled": len(quantizers) - enabled}


def openvino_executed(path, threads: int = 1) -> dict:
    """The convolutions of OpenVINO's compiled CPU model (f32 inference precision: our peers'
    setting) by the precision they run at: OpenVINO turns a QuantizeLinear/DequantizeLinear pair
    on a convolution's input and weight into an int8 convolution, with or without a quantizer on
    its output (onnxruntime needs one to form QLinearConv)."""
    import openvino as ov

    from quantdet.export.precision import ov_executed

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": threads})
    return ov_executed(compiled)


@register_method
class UltralyticsQAT(PeerMethod):
    name = "ultralytics_qat"
    detectors = ("yolo",)
    source = "torch"     # it trains the FP32 PyTorch model
    calibration = ("Ultralytics' prepare_qat calibrates its ranges on 8 batches of its own training loader "
                   "(the QAT images), not on the study's calibration set")
    reads = ("study.seed", "quant.qat.epochs", "quant.qat.images", "quant.qat.batch_size",
             "train.workers", "export.opset")
    description = ("peer: Ultralytics' quantization-aware training (yolo train quantize=8: ModelOpt INT8 "
                   "fake quantization, Ultralytics' trainer at its defaults) from the FP32 model, with "
                   "quantdet's QAT data budget")

    def unavailable(self) -> str | None:
        import importlib.util

        for module, package in (("ultralytics", "ultralytics"), ("modelopt", "nvidia-modelopt"),
                                ("huggingface_hub", "huggingface-hub")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed (Ultralytics' QAT needs it; requirements.lock has it)"
        return None

    def quantize_onnx(self, fp32_onnx, out, calibration, params, fp32_model=None):
        import tempfile
        import warnings
        from pathlib import Path

        import onnx
        import torch

        from quantdet import study
        from quantdet.detectors.yolo import _detection_model, ultralytics_imported, ultralytics_version
        from quantdet.export.onnx_export import constants_to_initializers, integerize_weights, output_names
        from quantdet.export.precision import ort_executed
        from quantdet.models.io import load_model
        from quantdet.train.device import loader_workers, training_device

        if fp32_model is None:
            raise ValueError("ultralytics_qat trains the FP32 PyTorch model: pass fp32_model")
        network, payload = load_model(fp32_model)
        config = network.detector_config
        size = int(payload["input_size"])
        qat_cfg, seed = params["quant"]["qat"], int(params["study"]["seed"])
        ultralytics_imported()
        from ultralytics import YOLO
        from ultralytics.utils import LOGGER

        with tempfile.TemporaryDirectory(prefix="ultralytics-qat-") as tmp:
            tmp = Path(tmp)
            data = write_yolo_subset(Path(study.PREPARED) / "train", tmp / "data", qat_cfg.get("images"), seed)
            detection = _detection_model(config["yaml"]).float()
            detection.load_state_dict(network.state_dict(), strict=True)
            detection.names = data["names"]
            start = tmp / "fp32.pt"
            torch.save({"model": detection, "train_args": {"task": "detect", "imgsz": size}}, start)
            device = training_device()
            arguments = {"data": str(data["data_yaml"]), "quantize": 8, "epochs": int(qat_cfg["epochs"]),
                         "batch": int(qat_cfg["batch_size"]), "imgsz": size, "seed": seed,
                         "deterministic": True, "val": False, "plots": False,
                         "device": "cpu" if device.type == "cpu" else device.index,
                         "workers": loader_workers(params["train"]["workers"]),
                         "project": str(tmp / "runs"), "name": "qat", "exist_ok": True, "verbose": False}
            level = LOGGER.level
            try:
                YOLO(str(start)).train(**arguments)
            finally:
                LOGGER.setLevel(level)
            last = tmp / "runs" / "qat" / "weights" / "last.pt"
            qat = qat_network(last, config)
            counts = quantizer_counts(qat)
            names = output_names(qat)
            opset = int(params["export"]["opset"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(qat, (torch.zeros(1, 3, size, size),), str(out), dynamo=False,
                                  opset_version=opset, input_names=["images"], output_names=names,
                                  dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}})
        # the weights as the integers their QuantizeLinear makes (ONNX's rounding and saturation:
        # the same values), so that the study stores them as every peer's (export.weight_type)
        proto = onnx.load(str(out))
        constants_to_initializers(proto)
        integer_weights = integerize_weights(proto)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(out))
        ops = [n.op_type for n in proto.graph.node]
        executed = {"onnxruntime": ort_executed(out, threads=int(params["export"]["threads"]))}
        executed["openvino"] = openvino_executed(out, threads=int(params["export"]["threads"]))
        return {"tool": "ultralytics", "version": ultralytics_version(),
                "function": "ultralytics YOLO.train(quantize=8)",
                "quantizer": "ultralytics.utils.torch_utils.prepare_qat (ModelOpt mtq.INT8_DEFAULT_CFG)",
                "train_arguments": {k: v for k, v in arguments.items() if k not in ("data", "project")},
                "train_images": data["images"], "train_objects": data["objects"],
                "onnx_export": f"torch.onnx.export(dynamo=False, opset_version={opset})",
                **counts, "integer_weights": integer_weights, "quantize_linear": ops.count("QuantizeLinear"),
                "dequantize_linear": ops.count("DequantizeLinear"), "quant_format": "QDQ",
                "executed": executed}
