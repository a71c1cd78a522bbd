"""yolo: Ultralytics YOLO detectors (YOLOv3-tiny/v3, v5, v6, v8, v9, v10, YOLO11, YOLO12, YOLO26),
built from any detection yaml Ultralytics ships, or read from a checkpoint of `yolo train`.

Ultralytics is AGPL-3.0: it is imported only inside this module's functions, through
`ultralytics_imported`, so listing the detector families does not load it (nor torch).

The network (`YoloNetwork`) is Ultralytics' own layer list (``DetectionModel.model``, so its
state dict has Ultralytics' keys: ``model.0.conv.weight`` ...) run by a forward of ours that
stops at the raw convolution outputs of the Detect head:

* eval mode: per detection level, finest first, the box-distribution logits ``B×4·reg_max×H×W``
  and the class logits ``B×C×H×W``: ``(p3_box, p3_cls, p4_box, p4_cls, p5_box, p5_cls)`` for a
  P3-P5 model (`output_names`). End-to-end heads (YOLO26, YOLOv10: a one-to-one branch trained
  to need no NMS) give their one-to-one branch, decoded by top-k without NMS: Ultralytics'
  ``nms=False``. (Ultralytics 8.4's predict and val default, ``nms=None``, run such a head's
  one-to-many branch with NMS instead; the one-to-one branch is the one these heads are made
  for, and the one to quantize.) YOLO26 has ``reg_max = 1``: its box output is ``B×4×H×W``,
  the ltrb distances themselves (no DFL).
* train mode: the same outputs; end-to-end heads append the one-to-many branch's outputs in
  the same order (``2·levels`` more), which the loss needs. As Ultralytics does, the one-to-one
  branch then reads detached features (its gradient does not reach the backbone).

Box and class outputs are never concatenated or decoded inside the network: `decode` does it in
float, the same for PyTorch and onnxruntime outputs (DFL softmax expectation, cell-centre
anchors, strides, sigmoid scores, then NMS, or top-k for end-to-end heads).

Ultralytics' side effects: on import it writes a settings file under ``~/.config/Ultralytics``
(``YOLO_CONFIG_DIR`` moves it), may probe the network (``YOLO_OFFLINE``), pip-installs missing
packages (``YOLO_AUTOINSTALL``), and its trainer logs to MLflow, DVC and others when their
settings say so. `ultralytics_imported` points the settings at ``results/.ultralytics`` of the
working directory (the study), sets offline and no auto-install, and turns the integrations off
in that study-local settings file; quantdet never runs Ultralytics' trainer itself.
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import re
import sys
from pathlib import Path

from quantdet.detectors import register_detector
from quantdet.data.letterbox import Letterbox
from quantdet.detectors.base import DetectorFamily
from quantdet.io_utils import sha256_of
from quantdet.errors import ParamsError, QuantdetError

# Ultralytics' settings folder, relative to the working directory (the study's root).
CONFIG_DIR = Path("results") / ".ultralytics"
# The integrations Ultralytics' trainer would log to, off in the study-local settings.
INTEGRATIONS = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
# Ultralytics' default loss gains (cfg/default.yaml: box, cls, dfl).
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
# End-to-end heads: Ultralytics' E2ELoss weighs the one-to-many branch 0.8 → 0.1 over the epochs
# (its trainer calls update() each epoch); quantdet's loop has no epoch hook, so both branches
# get the schedule's mean, about 0.5 each.
ONE2MANY_GAIN = 0.5
ONE2ONE_GAIN = 0.5
# Candidates kept for NMS per image at most (Ultralytics' non_max_suppression max_nms).
MAX_NMS = 30000
# The heads this family runs, and the task of every other head Ultralytics' yamls end with.
DETECT_HEADS = ("Detect", "v10Detect")
OTHER_HEADS = {"Segment": "segment", "Segment26": "segment", "Pose": "pose", "Pose26": "pose",
               "OBB": "obb", "OBB26": "obb", "Classify": "classify", "SemanticSegment": "semantic",
               "Depth": "depth", "YOLOESegment": "segment", "YOLOESegment26": "segment"}
UNSUPPORTED_DETECT_HEADS = {"RTDETRDecoder": "RT-DETR (a transformer decoder head)",
                            "WorldDetect": "YOLO-World (open-vocabulary, text-embedding head)",
                            "YOLOEDetect": "YOLOE (open-vocabulary, text-embedding head)"}


# ---- Ultralytics itself -------------------------------------------------------------------

def ultralytics_imported():
    """The `ultralytics` module, imported so that it writes nothing outside the study.

    Before the first import: ``YOLO_CONFIG_DIR`` defaults to ``results/.ultralytics`` under the
    working directory (the settings file goes there, not to ``~/.config``), ``YOLO_OFFLINE`` to
    1 (no DNS probe at import) and ``YOLO_AUTOINSTALL`` to false (no pip installs). Values the
    user set stay. Where the settings file is the study-local one, the trainer's integrations
    (MLflow, DVC, ..., and Ultralytics' analytics ``sync``) are turned off in it. What its
    import changes for the whole process (numpy/torch print options, OpenCV threads,
    torch.save) is put back.
    """
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.cwd() / CONFIG_DIR))
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        _import_keeping_globals()
    import ultralytics
    from ultralytics.utils import SETTINGS

    _unpatch()

    study_local = Path.cwd() / CONFIG_DIR
    try:
        local = Path(SETTINGS.file).resolve().is_relative_to(study_local.resolve())
    except OSError:
        local = False
    if local and any(SETTINGS.get(key) for key in INTEGRATIONS):
        SETTINGS.update({key: False for key in INTEGRATIONS})
    return ultralytics


def _unpatch() -> None:
    """PIL's Image.open and torch.save as they were, whoever imported ultralytics first (its
    `utils.patches` keeps the originals)."""
    import torch
    from PIL import Image
    from ultralytics.utils import patches

    if Image.open is patches.image_open:
        Image.open = patches._image_open
    if torch.save is patches.torch_save:
        torch.save = patches._torch_save


def _import_keeping_globals() -> None:
    """Import ultralytics (the modules this family uses), then undo what that changes for the
    whole process besides its own settings: numpy's and torch's print options, OpenCV's thread
    count (it sets 0), torch.save (it wraps it in retries), PIL's Image.open (it retries an
    unreadable image by pip-installing a HEIF plugin: quantdet's own error for a truncated
    image would become an install attempt) and OpenCV's imread/imwrite/imshow."""
    import numpy as np
    import torch
    from PIL import Image

    numpy_print = np.get_printoptions()
    torch_print = dict(vars(torch._tensor_str.PRINT_OPTS))
    save, image_open = torch.save, Image.open
    try:
        import cv2

        cv2_threads = cv2.getNumThreads()
        cv2_io = (cv2.imread, cv2.imwrite, cv2.imshow)
    except ImportError:
        cv2 = None
    import ultralytics.utils  # noqa: F401
    import ultralytics.utils.patches  # noqa: F401
    import ultralytics.nn.tasks  # noqa: F401

    np.set_printoptions(**numpy_print)
    for key, value in torch_print.items():
        setattr(torch._tensor_str.PRINT_OPTS, key, value)
    torch.save = save
    Image.open = image_open
    if cv2 is not None:
        cv2.setNumThreads(cv2_threads)
        cv2.imread, cv2.imwrite, cv2.imshow = cv2_io


def ultralytics_version() -> str:
    """The installed Ultralytics version, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ultralytics")
    except PackageNotFoundError:
        return "none"


def _package_dir() -> Path:
    """Ultralytics' package folder, found without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise QuantdetError("detector yolo needs the ultralytics package (requirements.txt): not installed")
    return Path(spec.origin).parent


def _shipped_yamls() -> dict[str, Path]:
    """Every model yaml Ultralytics ships, by file name."""
    return {p.name: p for p in sorted((_package_dir() / "cfg" / "models").rglob("*.yaml"))}


def _load_yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8", errors="ignore") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or "backbone" not in data or "head" not in data:
        raise ValueError(f"{path}: not an Ultralytics model yaml (needs backbone: and head:)")
    return data


def _head_name(model_yaml: dict) -> str:
    return str(model_yaml["head"][-1][2]).split(".")[-1]


def _guess_scale(name: str) -> str:
    """The scale letter in an architecture name (Ultralytics' guess_model_scale)."""
    match = re.search(r"yolo(e-)?[v]?\d+([nslmx])", Path(name).stem)
    return match.group(2) if match else ""


def _scaled_name(file_name: str, scale: str) -> str:
    """yolo11.yaml, n -> yolo11n.yaml; yolov8-p2.yaml, s -> yolov8s-p2.yaml."""
    return re.sub(r"^(yolo(?:e-)?v?\d+)", rf"\g<1>{scale}", file_name, count=1)


def resolve_arch(arch: str) -> tuple[dict, Path]:
    """The model yaml dict an architecture name describes (with ``scale`` set), and its file.

    Names as Ultralytics takes them: a shipped yaml with the scale letter after the version
    (``yolo11n.yaml`` reads ``yolo11.yaml`` at scale n; ``yolov8s-p2.yaml``, ``yolov10m.yaml``,
    ``yolov3-tiny.yaml``, whose `u` spelling ``yolov3-tinyu.yaml`` is accepted too), or the
    path of a yaml of one's own. Raises ValueError (unknown name, not a yaml) or FileNotFoundError.
    """
    arch = str(arch).strip()
    if "://" in arch:
        raise ValueError(f"{arch!r}: a URL; yolo builds from local yamls only (no downloads)")
    if not arch.lower().endswith((".yaml", ".yml")):
        raise ValueError(f"{arch!r}: not a yaml name (e.g. yolo11n.yaml)")
    path = Path(arch).expanduser()
    if path.is_file():
        model_yaml, file = _load_yaml(path), path
        name = path.name
    else:
        name = path.name
        if re.search(r"yolov[35]", name) and "u.yaml" in name:
            name = name.replace("u.yaml", ".yaml")  # yolov3-tinyu.yaml, yolov5nu.yaml (Ultralytics' u models)
        if re.fullmatch(r"yolov[58][nsmlx]6\.yaml", name):  # yolov5n6.yaml -> yolov5n-p6.yaml
            name = re.sub(r"(\d+)([nslmx])6\.yaml$", r"\1\2-p6.yaml", name)
        shipped = _shipped_yamls()
        unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)  # yolov8x.yaml -> yolov8.yaml
        file = shipped.get(name) or shipped.get(unified)
        if file is None or len(path.parts) > 1:
            raise FileNotFoundError(arch)
        model_yaml = _load_yaml(file)
    scale = _guess_scale(name)
    scales = model_yaml.get("scales")
    if scales:
        if not scale:
            scale = next(iter(scales))  # Ultralytics assumes the first scale (with a warning)
        if scale not in scales:
            raise ValueError(f"{arch!r}: {file.name} has no scale {scale!r} (has {', '.join(scales)})")
        model_yaml["scale"] = scale
    else:
        model_yaml.pop("scale", None)
    model_yaml["yaml_file"] = str(arch)
    return model_yaml, file


def _task_problem(model_yaml: dict, what: str) -> str | None:
    """Why a yaml (or a checkpoint's yaml) is no detector this family runs, or None."""
    head = _head_name(model_yaml)
    if head in DETECT_HEADS:
        return None
    if head in UNSUPPORTED_DETECT_HEADS:
        return (f"{what} is a {UNSUPPORTED_DETECT_HEADS[head]} model ({head} head), which the yolo "
                f"family does not run: give a YOLO detection yaml, e.g. yolo11n.yaml")
    task = OTHER_HEADS.get(head) or _guess_task(head)
    return (f"{what} is a {task} model ({head} head), not a detection one: give a detection "
            f"yaml such as yolo11n.yaml or yolov8s.yaml")


def _guess_task(head: str) -> str:
    head = head.lower()
    for key, task in (("classif", "classify"), ("semantic", "semantic"), ("segment", "segment"),
                      ("pose", "pose"), ("obb", "obb"), ("depth", "depth")):
        if key in head:
            return task
    return f"non-detection ({head})"


def _detection_yamls() -> list[str]:
    """The architecture names of the shipped detection yamls, expanded over their scales."""
    names = []
    for file_name, path in _shipped_yamls().items():
        try:
            model_yaml = _load_yaml(path)
        except ValueError:
            continue
        if _head_name(model_yaml) not in DETECT_HEADS:
            continue
        scales = model_yaml.get("scales") or {}
        stem = Path(file_name).stem
        named = _guess_scale(file_name) or any(re.search(rf"\d{re.escape(str(s))}(-|$)", stem) for s in scales)
        if scales and not named:  # yolo11.yaml -> yolo11n.yaml ...; yolov10b.yaml names its scale
            names.extend(_scaled_name(file_name, s) for s in scales)
        else:
            names.append(file_name)
    return names


# ---- the network ----------------------------------------------------------------------------

_NETWORK_CLASS = None


def _network_class():
    """YoloNetwork, defined on first use (it subclasses torch.nn.Module: torch is imported then)."""
    global _NETWORK_CLASS
    if _NETWORK_CLASS is not None:
        return _NETWORK_CLASS
    import torch.nn as nn

    class YoloNetwork(nn.Module):
        """Ultralytics' layers (``self.model``, a DetectionModel's nn.Sequential, the Detect
        head last) run up to the head's raw convolution outputs.

        ``forward(images)`` (``B×3×S×S`` in [0, 1]) returns a tuple: per level, finest first,
        box logits ``B×4·reg_max×H×W`` and class logits ``B×C×H×W``; for end-to-end heads the
        one-to-one branch, plus the one-to-many branch's outputs appended in train mode (see
        the module docstring). Attributes: ``num_classes``, ``reg_max``, ``strides`` (per
        level), ``stride`` (the finest), ``levels``, ``end2end``.
        """

        def __init__(self, layers: nn.Sequential, save, strides, end2end: bool):
            super().__init__()
            self.model = layers
            head = layers[-1]
            self.save = frozenset(int(i) for i in save)
            self.head_from = [int(j) for j in head.f]
            self.num_classes = int(head.nc)
            self.reg_max = int(head.reg_max)
            self.strides = tuple(int(s) for s in strides)
            self.stride = self.strides[0]
            self.levels = len(self.strides)
            self.end2end = bool(end2end)

        def features(self, images):
            """The feature maps the head reads (the neck's outputs), finest first."""
            x, y = images, []
            head = self.model[-1]
            for m in self.model:
                if m is head:
                    break
                if m.f != -1:
                    x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
                x = m(x)
                y.append(x if m.i in self.save else None)
            return [x if j == -1 else y[j] for j in self.head_from]

        def forward(self, images):
            head = self.model[-1]
            feats = self.features(images)
            outputs = []
            if self.end2end:
                # Ultralytics keeps the one-to-one branch's gradient out of the backbone in training
                inputs = [f.detach() for f in feats] if self.training else feats
                for i in range(self.levels):
                    outputs += [head.one2one_cv2[i](inputs[i]), head.one2one_cv3[i](inputs[i])]
                if not self.training:
                    return tuple(outputs)
            for i in range(self.levels):
                outputs += [head.cv2[i](feats[i]), head.cv3[i](feats[i])]
            return tuple(outputs)

    YoloNetwork.__module__ = __name__
    YoloNetwork.__qualname__ = "YoloNetwork"
    _NETWORK_CLASS = YoloNetwork
    return YoloNetwork


def __getattr__(name):  # PEP 562: `quantdet.detectors.yolo.YoloNetwork` (pickle finds it too)
    if name == "YoloNetwork":
        return _network_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _unshare_activations(layers) -> int:
    """Give every Conv its own activation module. Ultralytics' Conv layers share one
    ``Conv.default_act`` (nn.SiLU) instance: FX would name every call of it ``model.0.act``,
    and a forward hook on it would fire for every convolution. Parameter-free modules only."""
    seen: set[int] = set()
    replaced = 0
    for module in list(layers.modules()):
        act = module.__dict__.get("_modules", {}).get("act")
        if act is None:
            continue
        if id(act) in seen and not any(True for _ in act.parameters()):
            module.act = copy.deepcopy(act)
            replaced += 1
        seen.add(id(module.act))
    return replaced


def _detection_model(model_yaml: dict):
    """Ultralytics' DetectionModel for a resolved yaml dict (weights initialised as Ultralytics does)."""
    ultralytics_imported()
    from ultralytics.nn.tasks import DetectionModel

    model_yaml = copy.deepcopy(model_yaml)
    return DetectionModel(model_yaml, ch=int(model_yaml.get("channels", 3)), nc=int(model_yaml["nc"]),
                          verbose=False)


def _wrap(detection_model):
    head = detection_model.model[-1]
    end2end = getattr(head, "one2one_cv2", None) is not None
    layers = detection_model.model
    _unshare_activations(layers)
    strides = [float(s) for s in head.stride]
    return _network_class()(layers, detection_model.save, strides, end2end)


def _same_architecture(a: dict, b: dict) -> bool:
    """Whether two model yamls build the same layers (nc aside)."""
    def layers(d):
        scales = d.get("scales") or {}
        return (d.get("backbone"), d.get("head"), scales.get(d.get("scale")) if scales else None,
                d.get("reg_max", 16), bool(d.get("end2end")), d.get("depth_multiple", 1.0),
                d.get("width_multiple", 1.0), d.get("activation"))
    return layers(a) == layers(b)


def _facts(network, model_yaml: dict) -> dict:
    """What decode, the loss and the taps need, recorded in the config."""
    head = network.model[-1]
    return {"strides": list(network.strides), "reg_max": network.reg_max, "end2end": network.end2end,
            "head_index": len(network.model) - 1, "head_from": list(network.head_from),
            "tap_channels": [int(seq[0].conv.in_channels) for seq in head.cv2],
            "scale": model_yaml.get("scale", "")}


# ---- decoding -----------------------------------------------------------------------------------

def _levels(config: dict) -> int:
    return len(config["strides"])


def _split(outputs, levels: int):
    """(box, cls) per level of the inference branch: the first 2·levels outputs."""
    outputs = tuple(outputs)
    if len(outputs) < 2 * levels:
        raise ValueError(f"yolo: {len(outputs)} outputs, expected {2 * levels} (box and class per level)")
    return [outputs[2 * i] for i in range(levels)], [outputs[2 * i + 1] for i in range(levels)]


def _levels_from_shapes(outputs) -> int:
    """Levels of the inference branch when no config is at hand: its maps shrink level by level;
    the one-to-many branch of an end-to-end head in train mode starts at the finest again."""
    outputs = tuple(outputs)
    levels = 1
    while 2 * levels < len(outputs) and outputs[2 * levels].shape[-2] < outputs[2 * levels - 2].shape[-2]:
        levels += 1
    return levels


def decode_boxes(boxes, classes, config: dict, input_size: int):
    """Raw outputs of one branch -> (boxes ``B×N×4`` xyxy input pixels, unclamped; class
    probabilities ``B×N×C``), N = every cell of every level, finest level first, row-major."""
    import torch

    decoded, scores = [], []
    strides = config.get("strides")
    for i, (box, cls) in enumerate(zip(boxes, classes)):
        box, cls = box.float(), cls.float()
        b, channels, h, w = box.shape
        # Ultralytics' nominal stride (8, 16, 32); input_size / H where no config names it
        stride = float(strides[i]) if strides else input_size / h
        reg_max = channels // 4
        box = box.reshape(b, 4, reg_max, h * w)
        if reg_max > 1:  # DFL: the expectation of the softmax over reg_max bins
            bins = torch.arange(reg_max, dtype=box.dtype, device=box.device).view(1, 1, reg_max, 1)
            dist = (box.softmax(2) * bins).sum(2)
        else:
            dist = box[:, :, 0]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=box.dtype, device=box.device) + 0.5,
                                torch.arange(w, dtype=box.dtype, device=box.device) + 0.5, indexing="ij")
        anchors = torch.stack((xs.reshape(-1), ys.reshape(-1)))  # 2×HW, cell centres in cells
        xyxy = torch.cat((anchors - dist[:, :2], anchors + dist[:, 2:]), 1) * stride  # B×4×HW
        decoded.append(xyxy.transpose(1, 2))
        scores.append(cls.reshape(b, cls.shape[1], h * w).sigmoid().transpose(1, 2))
    return torch.cat(decoded, 1), torch.cat(scores, 1)


def decode_outputs(outputs, config: dict, input_size: int, *, score_threshold: float,
                   max_detections: int, nms_iou: float, multi_label: bool = True) -> list[dict]:
    """`Yolo.decode`, with Ultralytics' two NMS modes: ``multi_label`` (its validator's: every
    (box, class) pair above the threshold is a candidate) or the best class per box (its
    predictor's). End-to-end configs take the top-k without NMS either way."""
    import torch
    import torchvision

    boxes, classes = _split(outputs, _levels(config))
    xyxy, probs = decode_boxes(boxes, classes, config, input_size)
    results = []
    num_classes = probs.shape[2]
    for b in range(xyxy.shape[0]):
        box, prob = xyxy[b], probs[b]
        if config.get("end2end"):
            # Ultralytics' Detect.postprocess: the k best cells by their best class, then the k
            # best (cell, class) pairs among them; then its threshold
            k = min(int(max_detections), prob.shape[0])
            cells = prob.amax(1).topk(k).indices
            top, index = prob[cells].flatten().topk(k)
            cell, label = cells[index // num_classes], index % num_classes
            keep = top > score_threshold
            box, score, label = box[cell][keep], top[keep], label[keep]
        else:
            if multi_label and num_classes > 1:
                cell, label = torch.nonzero(prob > score_threshold, as_tuple=True)
                score = prob[cell, label]
            else:
                score, label = prob.max(1)
                cell = torch.nonzero(score > score_threshold, as_tuple=True)[0]
                score, label = score[cell], label[cell]
            if score.numel() > MAX_NMS:
                order = score.argsort(descending=True)[:MAX_NMS]
                cell, label, score = cell[order], label[order], score[order]
            box = box[cell]
            keep = torchvision.ops.batched_nms(box, score, label, float(nms_iou))[: int(max_detections)]
            box, score, label = box[keep], score[keep], label[keep]
        results.append({"boxes": box.clamp(0, float(input_size)), "scores": score,
                        "labels": label.to(torch.int64)})
    return results


# ---- the loss -----------------------------------------------------------------------------------

class YoloLoss:
    """Ultralytics' detection loss (v8DetectionLoss: task-aligned assignment, BCE classes,
    CIoU + DFL boxes, or L1 where reg_max is 1; its default gains box 7.5, cls 0.5, dfl 1.5) on
    quantdet's targets, divided by the batch size (Ultralytics multiplies by it): a per-batch mean.

    Outputs with both branches of an end-to-end head (train mode): ONE2MANY_GAIN × the
    one-to-many loss (top-10 assignment) + ONE2ONE_GAIN × the one-to-one loss (top-7, then one
    per object: Ultralytics' E2ELoss). The inference branch alone (eval mode, e.g. a graph traced
    for QAT): the one-to-one loss alone for end-to-end heads. Parts: box, cls, dfl (l1 where
    reg_max is 1) of the inference branch, and ``one2many`` (that branch's total) where present.
    """

    def __init__(self, config: dict):
        self.config = config
        self._criteria: dict = {}

    def _criterion(self, device, one2one: bool):
        key = (str(device), one2one)
        if key not in self._criteria:
            import types

            import torch

            ultralytics_imported()
            from ultralytics.utils.loss import v8DetectionLoss

            config = self.config
            head = types.SimpleNamespace(stride=torch.tensor(config["strides"], dtype=torch.float32, device=device),
                                         nc=int(config["num_classes"]), reg_max=int(config["reg_max"]))
            shim = types.SimpleNamespace(args=types.SimpleNamespace(**GAINS, epochs=1), model=[head],
                                         class_weights=None, parameters=lambda: iter([head.stride]))
            topk = dict(tal_topk=7, tal_topk2=1) if one2one else dict(tal_topk=10)
            self._criteria[key] = v8DetectionLoss(shim, **topk)
        return self._criteria[key]

    def _batch(self, targets, input_size, device):
        import torch

        idx, cls, boxes = [], [], []
        for i, target in enumerate(targets):
            b = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4).to(device)
            labels = torch.as_tensor(target["labels"]).reshape(-1).to(device)
            idx.append(torch.full((b.shape[0],), float(i), device=device))
            cls.append(labels.float())
            boxes.append(b)
        b = torch.cat(boxes)
        w, h = float(input_size[1]), float(input_size[0])
        xywh = torch.stack(((b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                            (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h), 1)
        return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls).view(-1, 1), "bboxes": xywh}

    def _branch(self, boxes, classes, batch, one2one: bool):
        import torch

        criterion = self._criterion(boxes[0].device, one2one)
        b = boxes[0].shape[0]
        preds = {"boxes": torch.cat([x.reshape(b, x.shape[1], -1) for x in boxes], 2),
                 "scores": torch.cat([x.reshape(b, x.shape[1], -1) for x in classes], 2),
                 "feats": list(boxes)}
        loss, items = criterion.loss(preds, batch)
        return loss.sum() / b, {name.removesuffix("_loss"): float(v) for name, v in items.items()}

    def __call__(self, outputs, targets, stride=None):
        outputs = tuple(o.float() for o in outputs)
        levels = _levels(self.config)
        end2end = bool(self.config.get("end2end"))
        if len(outputs) not in ((2 * levels, 4 * levels) if end2end else (2 * levels,)):
            raise ValueError(f"yolo loss: {len(outputs)} outputs, expected {2 * levels}"
                             + (f" or {4 * levels} (both branches, train mode)" if end2end else ""))
        first = outputs[0]
        input_size = (first.shape[-2] * self.config["strides"][0], first.shape[-1] * self.config["strides"][0])
        batch = self._batch(targets, input_size, first.device)
        boxes, classes = _split(outputs, levels)
        total, parts = self._branch(boxes, classes, batch, one2one=end2end)
        if len(outputs) == 4 * levels:
            rest = outputs[2 * levels:]
            many, _ = self._branch(rest[0::2], rest[1::2], batch, one2one=False)
            total = ONE2ONE_GAIN * total + ONE2MANY_GAIN * many
            parts = {**parts, "one2many": float(many.detach())}
        return total, parts


# ---- checkpoints ----------------------------------------------------------------------------------

_MODEL_TASKS = {"SegmentationModel": "segment", "PoseModel": "pose", "OBBModel": "obb",
                "ClassificationModel": "classify", "SemanticSegmentationModel": "semantic",
                "DepthModel": "depth", "RTDETRDetectionModel": "RT-DETR detection",
                "WorldModel": "YOLO-World detection", "YOLOEModel": "YOLOE detection",
                "YOLOESegModel": "YOLOE segment"}


def read_checkpoint(path) -> tuple[object, dict]:
    """(Ultralytics' DetectionModel in float32, its checkpoint dict) of a `yolo train` file;
    QuantdetError naming the file for anything else."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise QuantdetError(f"{path}: no such checkpoint file")
    ultralytics_imported()
    import torch
    from ultralytics.nn.tasks import temporary_modules

    version = ultralytics_version()
    try:
        # Ultralytics' own renames of old module paths (its torch_safe_load), without its
        # download and pip-install fallbacks
        with temporary_modules(
                modules={"ultralytics.yolo.utils": "ultralytics.utils",
                         "ultralytics.yolo.v8": "ultralytics.models.yolo",
                         "ultralytics.yolo.data": "ultralytics.data"},
                attributes={"ultralytics.nn.modules.block.Silence": "torch.nn.Identity",
                            "ultralytics.nn.tasks.YOLOv10DetectionModel": "ultralytics.nn.tasks.DetectionModel",
                            "ultralytics.utils.loss.v10DetectLoss": "ultralytics.utils.loss.E2EDetectLoss",
                            "pathlib.WindowsPath": "pathlib.PosixPath"}):
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, ImportError, AttributeError) as e:
        raise QuantdetError(f"{path}: Ultralytics {version} (installed) cannot unpickle this checkpoint, "
                            f"written by another Ultralytics version or by other code: {type(e).__name__}: "
                            f"{e}. Re-export it with ultralytics=={version}, or install the version "
                            f"that wrote it") from e
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as e:
        raise QuantdetError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or another "
                            f"kind of file): {type(e).__name__}: {e}") from e
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "detector" in ckpt and "kind" in ckpt:
        raise QuantdetError(f"{path}: a quantdet model file, not an Ultralytics checkpoint; "
                            "models.<role>.checkpoint reads `yolo train` files (best.pt, last.pt) only: "
                            "copy a quantdet model file to results/models/ instead")
    if isinstance(ckpt, torch.nn.Module):  # torch.save(model) rather than a trainer's dict
        ckpt = {"model": ckpt}
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module):
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise QuantdetError(f"{path}: not an Ultralytics checkpoint (no 'model' or 'ema' network; has {keys})")
    if ckpt.get("modelopt"):
        raise QuantdetError(f"{path}: a quantization-aware-trained (ModelOpt) checkpoint; quantdet needs "
                            "an FP32 `yolo train` checkpoint")
    kind = type(model).__name__
    task = (ckpt.get("train_args") or {}).get("task") or getattr(model, "task", None)
    if kind in _MODEL_TASKS or (task and task != "detect"):
        what = _MODEL_TASKS.get(kind, task)
        raise QuantdetError(f"{path}: a {what} checkpoint ({kind}), not a detection one: the yolo family "
                            "reads checkpoints of `yolo detect train` (task=detect)")
    model_yaml = getattr(model, "yaml", None)
    if kind != "DetectionModel" or not isinstance(model_yaml, dict):
        raise QuantdetError(f"{path}: not an Ultralytics DetectionModel checkpoint ({kind})")
    problem = _task_problem(model_yaml, f"{path}")
    if problem:
        raise QuantdetError(problem)
    return model.float(), ckpt


# ---- the family -------------------------------------------------------------------------------

@register_detector
class Yolo(DetectorFamily):
    name = "yolo"
    description = ("Ultralytics YOLO (v3-tiny, v5, v6, v8, v9, v10, 11, 12, 26) from a detection yaml "
                   "(arch: yolo11n.yaml) or a `yolo train` checkpoint; raw box/class maps per level, "
                   "DFL/NMS decoding outside the network")
    unsupported: dict[str, str] = {}
    # every conv of backbone, neck and head an integer kernel in onnxruntime: the prediction
    # convs' outputs are quantized (8-bit min/max), the DFL decode and NMS stay float outside
    integer_outputs = True
    # Ultralytics' validator: long side to S by OpenCV bilinear, sides rounded up, centred on grey 114
    letterbox = Letterbox(centre=True, pad=114, ceil=True, resample="cv2", clip=True)

    # ---- what it accepts ---------------------------------------------------------------------
    def example(self) -> dict:
        return {"detector": self.name, "arch": "yolov8n.yaml"}

    def architectures(self) -> list[str]:
        """The detection yamls Ultralytics ships, by the names users write (``yolo11n.yaml`` ...
        over the scales n/s/m/l/x where a yaml has scales), or a path to a yaml of one's own."""
        return _detection_yamls()

    def _resolve(self, arch: str, key: str) -> dict:
        try:
            model_yaml, _ = resolve_arch(arch)
        except FileNotFoundError:
            known = self.architectures()
            close = difflib.get_close_matches(str(arch), known, n=5, cutoff=0.5)
            examples = close or [n for n in known if re.match(r"yolo(v8|11|26)[ns]\.yaml$", n)] or known[:5]
            raise ParamsError(f"{key}.arch: no Ultralytics detection yaml {arch!r} (Ultralytics "
                              f"{ultralytics_version()}; e.g. {', '.join(examples)}; or a path to a yaml of "
                              "your own)") from None
        except ValueError as e:
            raise ParamsError(f"{key}.arch: {e}") from None
        problem = _task_problem(model_yaml, f"{key}.arch {arch!r}")
        if problem:
            raise ParamsError(problem)
        return model_yaml

    def check(self, model_params: dict, key: str) -> None:
        if model_params.get("pretrained"):
            raise ParamsError(f"{key}.pretrained: pretrained Ultralytics weights need a download (no internet "
                              f"here); train one with `yolo train` and give its best.pt as {key}.checkpoint, "
                              "or set pretrained: false")
        checkpoint = model_params.get("checkpoint")
        if checkpoint and not Path(checkpoint).expanduser().is_file():
            raise ParamsError(f"{key}.checkpoint: {checkpoint} does not exist (a `yolo train` best.pt)")
        arch = model_params.get("arch")
        if not arch and not checkpoint:
            raise ParamsError(f"{key}.arch: the yolo family needs an Ultralytics detection yaml "
                              "(e.g. yolo11n.yaml) or a checkpoint")
        if arch:
            self._resolve(arch, key)

    # ---- building ----------------------------------------------------------------------------
    def config(self, model_params: dict, num_classes: int) -> dict:
        """``{"family": "yolo", "arch", "num_classes", "yaml": the resolved model yaml (scale and
        nc set: build needs no file), "strides", "reg_max", "end2end", "head_index", "head_from",
        "tap_channels", "scale"}``; with ``models.<role>.checkpoint``, the checkpoint's config
        (`load_checkpoint`'s, plus "checkpoint" and "checkpoint_sha256")."""
        key = "models.<role>"
        self.check(model_params, key)
        if model_params.get("checkpoint"):
            path = Path(model_params["checkpoint"]).expanduser()
            model, _ = read_checkpoint(path)
            if int(model.yaml["nc"]) != int(num_classes):
                raise QuantdetError(f"{path}: {model.yaml['nc']} classes, the dataset has {num_classes}")
            arch = model_params.get("arch")
            if arch and not _same_architecture(self._resolve(arch, key), model.yaml):
                raise ParamsError(f"{key}.arch: {arch} is not the architecture of {key}.checkpoint {path} "
                                  f"({Path(str(model.yaml.get('yaml_file', '?'))).name}); give the checkpoint's "
                                  "or leave arch out")
            return self._checkpoint_config(model, path)
        model_yaml = self._resolve(model_params["arch"], key)
        model_yaml["nc"] = int(num_classes)
        return self._config(str(model_params["arch"]), model_yaml)

    def _config(self, arch: str, model_yaml: dict, network=None) -> dict:
        model_yaml = copy.deepcopy(model_yaml)
        model_yaml.setdefault("channels", 3)
        network = network if network is not None else _wrap(_detection_model(model_yaml))
        return {"family": self.name, "arch": arch, "num_classes": int(model_yaml["nc"]),
                "yaml": model_yaml, **_facts(network, model_yaml)}

    def _checkpoint_config(self, model, path: Path, network=None) -> dict:
        model_yaml = copy.deepcopy(model.yaml)
        arch = Path(str(model_yaml.get("yaml_file") or "checkpoint.yaml")).name
        config = self._config(arch, model_yaml, network)
        return {**config, "checkpoint": str(path), "checkpoint_sha256": sha256_of(path)}

    def build(self, config: dict, pretrained: bool = False):
        if pretrained:
            raise ParamsError("models.<role>.pretrained: pretrained Ultralytics weights need a download; give "
                              "a `yolo train` checkpoint as models.<role>.checkpoint instead")
        network = _wrap(_detection_model(config["yaml"]))
        network.detector_config = dict(config)
        return network

    def load_checkpoint(self, path: Path, class_names: list[str], num_classes: int):
        """(YoloNetwork in float32 with the checkpoint's weights — the EMA ones where the file
        has them, as Ultralytics — and its config) of a `yolo train` checkpoint (best.pt, last.pt);
        Ultralytics checkpoints only (a quantdet model file is refused). QuantdetError naming the
        file: missing, unreadable, written by an Ultralytics version this one cannot unpickle,
        another task's, or other classes than the dataset's."""
        path = Path(path)
        model, ckpt = read_checkpoint(path)
        names = getattr(model, "names", None) or {}
        names = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
        ours = [str(n) for n in class_names]
        if len(names) != int(num_classes) or names != ours:
            raise QuantdetError(f"{path}: its classes differ from the dataset's: checkpoint {len(names)} "
                                f"{names}, dataset {num_classes} {ours}")
        network = _wrap(_detection_model(model.yaml))  # the network build(config) makes
        config = self._checkpoint_config(model, path, network)
        train_args = ckpt.get("train_args") or {}
        if train_args.get("imgsz"):
            config["train_imgsz"] = train_args["imgsz"]
        network.detector_config = dict(config)
        state = model.state_dict()
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise QuantdetError(f"{path}: its weights do not fit the network its yaml describes under Ultralytics "
                                f"{ultralytics_version()} (written by another version?): {e}") from e
        return network.float(), config

    # ---- training and decoding -----------------------------------------------------------------
    def loss_fn(self, model):
        """`YoloLoss` for the network's config (from ``model.detector_config``: works for traced,
        quantized copies too)."""
        from quantdet import detectors

        return YoloLoss(detectors.config_of(model))

    def decode(self, outputs, config, input_size, *, score_threshold, max_detections, nms_iou):
        """Float decoding: DFL expectation (none where reg_max is 1), cell-centre anchors at the
        levels' strides, ltrb → xyxy input pixels, sigmoid class probabilities. Not end-to-end:
        Ultralytics' validator's NMS — every (box, class) pair above `score_threshold` (strictly),
        at most 30000 by score, class-wise NMS at `nms_iou`, the best `max_detections`. End-to-end
        (YOLO26, YOLOv10): its top-k of the one-to-one branch, no NMS, then the threshold. Boxes
        clamped to the input after selection (as Ultralytics clips them after NMS)."""
        return decode_outputs(outputs, config, input_size, score_threshold=score_threshold,
                              max_detections=max_detections, nms_iou=nms_iou)

    def class_logits(self, outputs):
        """B×C×N class logits of the inference branch, levels finest first."""
        import torch

        levels = _levels_from_shapes(outputs)
        _, classes = _split(outputs, levels)
        return torch.cat([c.float().flatten(2) for c in classes], 2)

    def output_names(self, config: dict) -> list[str]:
        names = []
        for stride in config["strides"]:
            level = f"p{int(stride).bit_length() - 1}"
            names += [f"{level}_box", f"{level}_cls"]
        return names

    def stride(self, config: dict) -> int:
        return int(min(config["strides"]))

    # ---- quantization ------------------------------------------------------------------------
    def traceable(self, model):
        """A copy whose blocks FX traces whole: C2f and its subclasses (C3k2, C2fCIB, C2fPSA)
        and RepNCSPELAN4/ELAN1 (YOLOv9) split with ``list(x.chunk(2, 1))``, which FX cannot
        iterate (nor their ``forward_split``); on the copy they run the same computation
        written with tuple unpacking (`_c2f_forward`, `_elan_forward`). Every other block of
        the shipped detection yamls (A2C2f/AAttn, C2PSA/PSA attention, SPPF, SCDown, CIB,
        RepVGGDW, Ghost, CBLinear/CBFuse ...) traces as it is. Graph modules (already traced)
        come back as they are."""
        import types

        import torch.fx

        if isinstance(model, torch.fx.GraphModule):
            return model
        ultralytics_imported()
        from ultralytics.nn.modules.block import C2f, RepNCSPELAN4

        model = copy.deepcopy(model)
        for module in model.modules():
            if isinstance(module, C2f):
                module.forward = types.MethodType(_c2f_forward, module)
            elif isinstance(module, RepNCSPELAN4):
                module.forward = types.MethodType(_elan_forward, module)
        return model

    def feature_taps(self, model) -> list[str]:
        """Per input of the Detect head (the neck's outputs), finest first, the module that
        produces it: the activation ending the block (``model.16.cv2.act``), a name valid in
        the FP32 network and in its FX-traced, BatchNorm-folded quantized graph alike; where a
        block ends with no module (YOLO12-l/x's residual A2C2f), the block (``model.16``: the
        FP32 network only)."""
        import torch.fx

        config = getattr(model, "detector_config", None)
        graph_module = model if isinstance(model, torch.fx.GraphModule) else None
        if graph_module is None:
            cached = model.__dict__.get("_feature_taps")
            if cached is not None:
                return list(cached)
            graph_module = torch.fx.symbolic_trace(self.traceable(model).eval())
        head = config["head_index"] if config else len(model.model) - 1
        head_from = config["head_from"] if config else model.head_from
        taps = []
        for level, block in enumerate(head_from):
            name = _producer(graph_module, head, level)
            if name is None:
                if model is graph_module:
                    raise ValueError(f"yolo: the head's input {level} (block model.{block}) ends with no "
                                     "module in this traced graph: no feature tap there")
                name = f"model.{block}"
            taps.append(name)
        if model is not graph_module:
            model.__dict__["_feature_taps"] = tuple(taps)
        return taps

    def tap_channels(self, config: dict) -> list[int]:
        return [int(c) for c in config["tap_channels"]]

    def layer_group(self, layer_name: str) -> str:
        """Ultralytics' layer index: ``model_6_m_0_cv1_conv_bnfolded_12`` and ``model.6.cv2.act``
        -> ``model.6`` (one yaml row: a block of backbone or neck); in the Detect head, one
        branch of one level: ``model_23_cv2_0_1_conv_bnfolded_40`` -> ``model.23.cv2.0`` (cv2
        boxes, cv3 classes, one2one_cv2/cv3 the end-to-end branch; level 0 the finest)."""
        name = layer_name.split("_bnfolded")[0]
        head = re.match(r"^model[._](\d+)[._]((?:one2one_)?cv[23])[._](\d+)[._]\d+(?:[._]|$)", name)
        if head:
            return f"model.{head.group(1)}.{head.group(2)}.{head.group(3)}"
        block = re.match(r"^model[._](\d+)(?:[._]|$)", name)
        if block:
            return f"model.{block.group(1)}"
        return re.split(r"[._]", layer_name)[0]

    def input_statistics(self, model):
        return None

    def describe(self, config: dict) -> str:
        arch = config.get("arch")
        return f"Ultralytics YOLO `{arch}`" if arch else "Ultralytics YOLO"


def _c2f_forward(self, x):
    """C2f.forward (and its subclasses') in a form FX traces: tuple unpacking, not list()."""
    import torch

    a, b = self.cv1(x).chunk(2, 1)
    y = [a, b]
    for m in self.m:
        y.append(m(y[-1]))
    return self.cv2(torch.cat(y, 1))


def _elan_forward(self, x):
    """RepNCSPELAN4.forward (and ELAN1's) in a form FX traces."""
    import torch

    a, b = self.cv1(x).chunk(2, 1)
    y = [a, b]
    for m in (self.cv2, self.cv3):
        y.append(m(y[-1]))
    return self.cv4(torch.cat(y, 1))


def _producer(graph_module, head: int, level: int) -> str | None:
    """The call_module target producing the head's input at `level` in a traced graph: the input
    of the level's first box convolution (``model.<head>.cv2.<level>.0.conv``, or its
    BatchNorm-folded, quantized replacement), through any activation quantizers."""
    pattern = re.compile(rf"^model[._]{head}[._](?:one2one_)?cv2[._]{level}[._]0[._]conv(?:_bnfolded_\d+)?$")
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and pattern.match(str(node.target)):
            source = node.args[0]
            while getattr(source, "op", None) == "call_module" and str(source.target).startswith("act_quant"):
                source = source.args[0]
            if getattr(source, "op", None) == "call_module":
                return str(source.target)
            return None
    return None
