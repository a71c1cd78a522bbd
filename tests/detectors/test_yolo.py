"""The yolo detector family (quantdet.detectors.yolo): Ultralytics networks built from yaml,
traced whole by FX, trained with Ultralytics' loss by quantdet's loop, decoded outside the
network as Ultralytics' validator and predictor do, read from checkpoints of `yolo train`.

Nothing here downloads: networks come from the yamls Ultralytics ships, the checkpoints from
Ultralytics' own trainer run offline on a few images drawn here.
"""
import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("ultralytics") is None:   # not importorskip: importing it here, at
    pytest.skip("ultralytics is not installed",       # collection, would patch PIL and torch for every
                allow_module_level=True)              # test of the process (quantdet imports it unpatched)

import torch.fx as fx  # noqa: E402

from quantdet import detectors  # noqa: E402
from quantdet.errors import ParamsError, QuantdetError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ["yolov8n.yaml", "yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml", "yolov3-tiny.yaml"]
SIZE = 64
NUM_CLASSES = 3
CLASS_NAMES = ["square", "bar"]  # the trained checkpoints' classes


@pytest.fixture(scope="module", autouse=True)
def offline_ultralytics(tmp_path_factory):
    """Ultralytics' settings in a temporary folder (were this module the first to import it,
    they would go to results/.ultralytics of the repository), offline, one thread."""
    saved = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE")}
    if "ultralytics" not in sys.modules:
        os.environ["YOLO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("ultralytics-config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def family():
    return detectors.get("yolo")


@pytest.fixture(scope="module")
def built(family):
    """arch -> (config, network) for 3 classes, built once."""
    out = {}
    for arch in ARCHS:
        config = family.config({"detector": "yolo", "arch": arch, "pretrained": False}, NUM_CLASSES)
        torch.manual_seed(0)
        out[arch] = (config, detectors.build(config))
    return out


def _images(batch=2, seed=0):
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [35.0, 30.0, 60.0, 50.0]]),
             "labels": torch.tensor([1, 2], dtype=torch.int64)},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


# ---- networks from yaml --------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes(family, built, arch):
    config, net = built[arch]
    levels = len(config["strides"])
    assert net.num_classes == NUM_CLASSES and config["num_classes"] == NUM_CLASSES
    assert list(net.strides) == config["strides"]
    assert family.stride(config) == (16 if arch == "yolov3-tiny.yaml" else 8)
    assert config["end2end"] == (arch == "yolo26n.yaml")
    assert config["reg_max"] == (1 if arch == "yolo26n.yaml" else 16)
    net.eval()
    with torch.no_grad():
        outputs = net(_images())
    assert isinstance(outputs, tuple) and len(outputs) == 2 * levels == len(family.output_names(config))
    for i, stride in enumerate(config["strides"]):
        box, cls = outputs[2 * i], outputs[2 * i + 1]
        assert box.shape == (2, 4 * config["reg_max"], SIZE // stride, SIZE // stride)
        assert cls.shape == (2, NUM_CLASSES, SIZE // stride, SIZE // stride)
        assert box.dtype == cls.dtype == torch.float32
    net.train()
    train_outputs = net(_images())
    assert len(train_outputs) == (4 if config["end2end"] else 2) * levels
    assert [tuple(o.shape) for o in train_outputs[:2 * levels]] == [tuple(o.shape) for o in outputs]
    names = family.output_names(config)
    assert names[:2] == (["p4_box", "p4_cls"] if arch == "yolov3-tiny.yaml" else ["p3_box", "p3_cls"])
    cells = sum((SIZE // s) ** 2 for s in config["strides"])
    assert family.class_logits(outputs).shape == family.class_logits(train_outputs).shape == (2, NUM_CLASSES, cells)


@pytest.mark.parametrize("arch", ARCHS)
def test_traced_graph_equals_eager(family, built, arch):
    """FX captures the whole network (every convolution of backbone, neck and the inference
    branch of the head, each still a Conv2d, BatchNorm behind it) and computes what it computes."""
    config, net = built[arch]
    net.eval()
    gm = fx.symbolic_trace(family.traceable(net))
    x = _images(seed=1)
    with torch.no_grad():
        eager, traced = net(x), gm(x)
    assert len(eager) == len(traced)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)
    head = f"model.{config['head_index']}."
    unused = (f"{head}cv2.", f"{head}cv3.") if config["end2end"] else ()
    expected = {n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)
                and ".dfl." not in n and not n.startswith(unused)}
    called = {str(node.target) for node in gm.graph.nodes
              if node.op == "call_module" and isinstance(gm.get_submodule(node.target), torch.nn.Conv2d)}
    assert called == expected
    # the network itself is left as it was (the copy got the traceable forwards)
    assert not any("forward" in vars(m) for m in net.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_graph(family, built, arch):
    """quantdet's quantization passes on the traced graph: every BatchNorm folds, the outputs
    and the feature taps survive."""
    from quantdet.quant.graph import quant_layers, quantize_model

    config, net = built[arch]
    net.eval()
    q = quantize_model(net, 8, 8, "minmax")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in q.modules())
    with torch.no_grad():
        outputs = q(_images())
    assert len(outputs) == 2 * len(config["strides"])
    groups = {family.layer_group(name) for name in quant_layers(q)}
    head = config["head_index"]
    branch = "one2one_cv" if config["end2end"] else "cv"
    assert {f"model.{head}.{branch}2.0", f"model.{head}.{branch}3.0", "model.0"} <= groups
    assert all(g.startswith("model.") for g in groups)
    taps = family.feature_taps(net)
    assert family.feature_taps(q) == taps
    for name in taps:
        q.get_submodule(name)


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_and_gradients(family, built, arch):
    config, net = built[arch]
    loss_fn = family.loss_fn(net)
    net.train()
    net.zero_grad()
    outputs = net(_images())
    loss, parts = loss_fn(outputs, _targets(), 8)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"box", "cls"} <= set(parts) and all(isinstance(v, float) for v in parts.values())
    assert ("one2many" in parts) == config["end2end"]
    loss.backward()
    head = net.model[-1]
    first = net.model[0].conv.weight.grad
    assert first is not None and first.abs().sum() > 0
    branches = [head.cv2, head.cv3] + ([head.one2one_cv2, head.one2one_cv3] if config["end2end"] else [])
    for branch in branches:
        assert branch[0][-1].weight.grad is not None and branch[0][-1].weight.grad.abs().sum() > 0
    # eval-mode outputs (a graph traced for QAT): the inference branch's loss alone
    net.zero_grad()
    net.eval()
    outputs = net(_images())
    loss, parts = loss_fn(outputs, _targets(), 8)
    assert torch.isfinite(loss) and "one2many" not in parts
    loss.backward()
    assert net.model[0].conv.weight.grad.abs().sum() > 0
    # a batch without objects
    loss, _ = loss_fn(outputs, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2, 8)
    assert torch.isfinite(loss)
    net.zero_grad()


@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolo26n.yaml"])
def test_loss_is_ultralytics_loss_per_batch(family, built, arch):
    """Our loss is Ultralytics' own (DetectionModel.loss on the same weights and targets)
    divided by the batch size; end-to-end: its one-to-one loss from eval outputs, and
    ONE2ONE_GAIN/ONE2MANY_GAIN of both branches from train outputs."""
    import copy

    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from quantdet.detectors.yolo import ONE2MANY_GAIN, ONE2ONE_GAIN

    config, net = built[arch]
    reference = DetectionModel(copy.deepcopy(config["yaml"]), nc=NUM_CLASSES, verbose=False)
    reference.load_state_dict(net.state_dict())
    reference.args = get_cfg()
    x, targets = _images(), _targets()
    boxes = torch.cat([t["boxes"] for t in targets]) / SIZE
    index = torch.cat([torch.full((len(t["labels"]),), float(i)) for i, t in enumerate(targets)])
    batch = {"img": x, "batch_idx": index,
             "cls": torch.cat([t["labels"] for t in targets]).float().view(-1, 1),
             "bboxes": torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                                    boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 1)}
    criterion = reference.init_criterion()
    loss_fn = family.loss_fn(net)
    with torch.no_grad():
        for mode in ("eval", "train"):
            net.train(mode == "train"), reference.train(mode == "train")
            ours, parts = loss_fn(net(x), targets, 8)
            predictions = reference(x)
            predictions = predictions[1] if isinstance(predictions, tuple) else predictions
            if not config["end2end"]:
                theirs = criterion(predictions, batch)[0].sum() / len(x)
            else:
                one2one = criterion.one2one.loss(predictions["one2one"], batch)[0].sum() / len(x)
                one2many = criterion.one2many.loss(predictions["one2many"], batch)[0].sum() / len(x)
                theirs = one2one if mode == "eval" else ONE2ONE_GAIN * one2one + ONE2MANY_GAIN * one2many
            assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6), mode
    net.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_well_formed(family, built, arch):
    config, net = built[arch]
    net.eval()
    with torch.no_grad():
        outputs = net(_images())
    dets = family.decode(outputs, config, SIZE, score_threshold=0.0, max_detections=50, nms_iou=0.7)
    assert len(dets) == 2
    for d in dets:
        n = len(d["boxes"])
        assert 0 < n <= 50 and d["boxes"].shape == (n, 4) and d["scores"].shape == (n,)
        assert d["labels"].dtype == torch.int64 and d["labels"].min() >= 0 and d["labels"].max() < NUM_CLASSES
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= SIZE).all()
        assert (d["boxes"][:, 2:] >= d["boxes"][:, :2]).all()
        assert ((d["scores"] > 0) & (d["scores"] <= 1)).all()
    # numpy outputs (onnxruntime) through quantdet's Decoder: the same detections
    decoder = detectors.Decoder(config, SIZE, score_threshold=0.0, max_detections=50, nms_iou=0.7)
    again = decoder(tuple(o.numpy() for o in outputs))
    for a, b in zip(dets, again):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def _one_level_config(end2end=False, reg_max=16):
    return {"family": "yolo", "strides": [8], "reg_max": reg_max, "end2end": end2end, "num_classes": 2}


def _cell_outputs(cells, reg_max=16, size=4):
    """Box/class logits of a 4x4 level: each cell (row, col, ltrb in cells, class, logit)."""
    box = torch.full((1, 4 * reg_max, size, size), -20.0)
    cls = torch.full((1, 2, size, size), -20.0)
    for row, col, ltrb, label, logit in cells:
        for side, dist in enumerate(ltrb):
            if reg_max > 1:
                box[0, side * reg_max + dist, row, col] = 20.0  # a one-hot distribution at `dist`
            else:
                box[0, side, row, col] = float(dist)
        cls[0, label, row, col] = logit
    if reg_max > 1:
        box[box == -20.0] = -1e4  # softmax of the other bins: 0
    return box, cls


def test_decode_arithmetic(family):
    """Cell centres, strides, DFL expectation, xyxy, clamping, NMS versus top-k."""
    box, cls = _cell_outputs([(1, 2, (2, 1, 1, 1), 1, 3.0),     # centre (2.5, 1.5) cells
                              (1, 1, (1, 1, 4, 1), 1, 2.0),     # overlaps the first one
                              (3, 3, (1, 1, 3, 3), 0, 1.0)])    # runs over the image's edge
    kwargs = dict(score_threshold=0.5, max_detections=10, nms_iou=0.5)
    nms = family.decode((box, cls), _one_level_config(), 32, **kwargs)[0]
    expected_first = torch.tensor([(2.5 - 2) * 8, (1.5 - 1) * 8, (2.5 + 1) * 8, (1.5 + 1) * 8])
    assert torch.allclose(nms["boxes"][0], expected_first)
    assert nms["labels"].tolist() == [1, 0]  # the second box of class 1 is suppressed
    assert nms["scores"][0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert torch.allclose(nms["boxes"][1], torch.tensor([(3.5 - 1) * 8, (3.5 - 1) * 8, 32.0, 32.0]))
    e2e = family.decode((box, cls), _one_level_config(end2end=True), 32, **kwargs)[0]
    assert e2e["labels"].tolist() == [1, 1, 0]  # no NMS: top-k by score
    assert e2e["scores"].tolist() == sorted(e2e["scores"].tolist(), reverse=True)
    box1, cls1 = _cell_outputs([(1, 2, (2, 1, 1, 1), 1, 3.0)], reg_max=1)
    direct = family.decode((box1, cls1), _one_level_config(reg_max=1), 32, **kwargs)[0]
    assert torch.allclose(direct["boxes"][0], expected_first)
    # multi-label: one box scoring above the threshold in both classes is two candidates
    cls[0, 0, 1, 2] = 3.0
    both = family.decode((box, cls), _one_level_config(), 32, **kwargs)[0]
    assert sorted(both["labels"].tolist()) == [0, 0, 1]


def test_layer_group(family):
    group = family.layer_group
    assert group("model_0_conv_bnfolded_0") == "model.0"
    assert group("model_6_m_0_cv1_conv_bnfolded_12") == "model.6"
    assert group("model.16.cv2.act") == "model.16"
    assert group("model_16_cv2_conv_bnfolded_40") == "model.16"
    assert group("model.22.cv2.0.2") == "model.22.cv2.0"
    assert group("model_22_cv3_2_1_1_conv_bnfolded_80") == "model.22.cv3.2"
    assert group("model_23_one2one_cv2_1_0_conv_bnfolded_88") == "model.23.one2one_cv2.1"
    assert group("model.23.one2one_cv3.0.2") == "model.23.one2one_cv3.0"
    assert group("model.10") == "model.10"


@pytest.mark.parametrize("arch", ARCHS)
def test_feature_taps(family, built, arch):
    config, net = built[arch]
    taps = family.feature_taps(net)
    assert len(taps) == len(config["strides"]) == len(family.tap_channels(config))
    seen = {}
    def keep(name):
        def hook(_module, _inputs, output):
            seen[name] = tuple(output.shape)
        return hook

    handles = [net.get_submodule(name).register_forward_hook(keep(name)) for name in taps]
    net.eval()
    with torch.no_grad():
        net(_images(1))
    for h in handles:
        h.remove()
    for name, channels, stride in zip(taps, family.tap_channels(config), config["strides"]):
        assert seen[name] == (1, channels, SIZE // stride, SIZE // stride)


def test_architectures(family):
    from quantdet.detectors.yolo import resolve_arch

    names = family.architectures()
    for arch in ARCHS + ["yolo11s.yaml", "yolo11x.yaml", "yolov8m.yaml", "yolo26l.yaml", "yolov10n.yaml",
                         "yolov10b.yaml", "yolov8n-p2.yaml", "yolov9t.yaml"]:
        assert arch in names
    assert not any(("-seg" in n or "-pose" in n or "-cls" in n or "rtdetr" in n or "world" in n) for n in names)
    for name in names:
        model_yaml, _ = resolve_arch(name)
        assert model_yaml["head"][-1][2] in ("Detect", "v10Detect")
    assert resolve_arch("yolo11s.yaml")[0]["scale"] == "s"
    assert resolve_arch("yolov3-tinyu.yaml")[1].name == "yolov3-tiny.yaml"


def test_check_refuses(family, tmp_path):
    def check(**params):
        family.check({"detector": "yolo", **params}, "models.student")

    check(arch="yolo11n.yaml")
    with pytest.raises(ParamsError, match=r"models\.student\.arch.*yolo99n\.yaml.*e\.g\. .*\.yaml"):
        check(arch="yolo99n.yaml")
    for arch, task in [("yolo11n-seg.yaml", "segment"), ("yolov8n-pose.yaml", "pose"),
                       ("yolo11n-cls.yaml", "classify"), ("yolo26n-obb.yaml", "obb"),
                       ("yolo26n-sem.yaml", "semantic")]:
        with pytest.raises(ParamsError, match=rf"models\.student\.arch.*{task}"):
            check(arch=arch)
    with pytest.raises(ParamsError, match="RT-DETR"):
        check(arch="rtdetr-l.yaml")
    with pytest.raises(ParamsError, match=r"models\.student\.pretrained.*checkpoint"):
        check(arch="yolo11n.yaml", pretrained=True)
    with pytest.raises(ParamsError, match=r"models\.student\.checkpoint.*does not exist"):
        check(checkpoint=str(tmp_path / "best.pt"))
    with pytest.raises(ParamsError, match=r"models\.student\.arch"):
        check()
    own = tmp_path / "mine.yaml"
    own.write_text((Path(__import__("ultralytics").__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    check(arch=str(own))


def test_config_rebuilds_offline(family, built, monkeypatch):
    """The config is a plain, picklable dict from which build() makes the same network without
    the yaml file."""
    from quantdet.detectors import yolo

    config, net = built["yolo11n.yaml"]
    assert config["yaml"]["nc"] == NUM_CLASSES and config["yaml"]["scale"] == "n"
    assert set(config) >= {"family", "arch", "num_classes", "yaml"} and config["family"] == "yolo"
    clone = pickle.loads(pickle.dumps(config))
    json.dumps(clone)
    monkeypatch.setattr(yolo, "_shipped_yamls", lambda: {})
    rebuilt = detectors.build(clone)
    ours, theirs = net.state_dict(), rebuilt.state_dict()
    assert list(ours) == list(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    assert rebuilt.detector_config == clone


def test_network_pickles(built):
    _, net = built["yolov8n.yaml"]
    clone = pickle.loads(pickle.dumps(net))
    assert type(clone).__name__ == "YoloNetwork"
    x = _images(1)
    net.eval(), clone.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), clone(x)))


# ---- Ultralytics stays out of the way --------------------------------------------------------------

def test_listing_families_does_not_import_ultralytics():
    code = ("import sys, quantdet.detectors as d; names = d.names(); assert 'yolo' in names, names; "
            "print('ultralytics' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_import_writes_nothing_in_home(tmp_path):
    """Ultralytics' settings go to results/.ultralytics of the working directory (the study),
    with its trainer's integrations (MLflow, DVC, ...) off; nothing is written in HOME, and the
    process-wide settings its import changes are put back."""
    home, study = tmp_path / "home", tmp_path / "study"
    home.mkdir(), study.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "XDG_", "MPLCONFIGDIR", "ULTRALYTICS"))}
    env["HOME"] = str(home)
    code = textwrap.dedent("""
        import torch
        from quantdet import detectors
        import cv2, numpy as np
        from quantdet.detectors.yolo import ultralytics_imported
        before = (np.get_printoptions(), dict(vars(torch._tensor_str.PRINT_OPTS)), torch.save, cv2.getNumThreads())
        ultralytics_imported()
        after = (np.get_printoptions(), dict(vars(torch._tensor_str.PRINT_OPTS)), torch.save, cv2.getNumThreads())
        assert before == after, (before, after)
        family = detectors.get("yolo")
        config = family.config({"detector": "yolo", "arch": "yolov8n.yaml"}, 2)
        net = detectors.build(config)
        outputs = net(torch.rand(2, 3, 64, 64))
        target = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
        family.loss_fn(net)(outputs, [target, target], 8)[0].backward()
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=study, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [str(p) for p in home.rglob("*")] == []
    settings = json.loads((study / "results" / ".ultralytics" / "Ultralytics" / "settings.json").read_text())
    assert settings["mlflow"] is False and settings["sync"] is False and settings["dvc"] is False


# ---- checkpoints of Ultralytics' own trainer ---------------------------------------------------------

TRAIN_SCRIPT = r'''
import json, os, socket, sys
from pathlib import Path

attempts = []  # any network access is recorded, and fails
def blocked(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network access disabled in this test")
socket.getaddrinfo = blocked
socket.create_connection = blocked
socket.socket.connect = lambda self, *a, **k: blocked(*a)

root, arch = Path(sys.argv[1]), sys.argv[2]
import numpy as np
from PIL import Image, ImageDraw
(root / "images" / "train").mkdir(parents=True, exist_ok=True)
(root / "labels" / "train").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(6):
    img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 80, 3)))
    draw = ImageDraw.Draw(img)
    rows = []
    for k in range(2):
        cls = (i + k) % 2
        w, h = (20, 20) if cls == 0 else (36, 10)
        x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
        draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=(230, 40, 40) if cls == 0 else (40, 230, 40))
        rows.append(f"{cls} {(x0 + w / 2) / 64:.6f} {(y0 + h / 2) / 64:.6f} {w / 64:.6f} {h / 64:.6f}")
    img.save(root / "images" / "train" / f"im{i}.png")
    (root / "labels" / "train" / f"im{i}.txt").write_text("\n".join(rows) + "\n")
data = root / "data.yaml"
data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: square\n  1: bar\n")

import ultralytics.data.utils
ultralytics.data.utils.check_font = lambda *a, **k: None  # would fetch Arial.ttf for the class names
from ultralytics import YOLO
from ultralytics.utils import SETTINGS
SETTINGS.update({k: False for k in ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")})
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
YOLO(arch).train(data=str(data), epochs=3, imgsz=64, batch=2, workers=0, plots=False, val=False, device="cpu",
                 optimizer="AdamW", lr0=0.01, warmup_epochs=0, mosaic=0.0, amp=False, seed=0, verbose=False,
                 project=str(root / "runs"), name="train", exist_ok=True)
print(json.dumps({"attempts": attempts}))
'''


def train_checkpoint(root: Path, arch: str) -> Path:
    """best.pt of `YOLO(arch).train(...)`: Ultralytics' own trainer, offline, 3 epochs on 6 drawn
    64-pixel images of 2 classes (data.yaml beside them in root/work), HOME and YOLO_CONFIG_DIR
    in root; fails if it tried the network or wrote under HOME."""
    (root / "home").mkdir()
    script = root / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_"))}
    env.update(HOME=str(root / "home"), YOLO_CONFIG_DIR=str(root / "config"), YOLO_OFFLINE="1",
               YOLO_AUTOINSTALL="false")
    run = subprocess.run([sys.executable, str(script), str(root / "work"), arch], capture_output=True,
                         text=True, cwd=root, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], f"Ultralytics tried the network: {report['attempts']}"
    assert [str(p) for p in (root / "home").rglob("*")] == []
    best = root / "work" / "runs" / "train" / "weights" / "best.pt"
    assert best.is_file()
    return best


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> best.pt of Ultralytics' own trainer (train_checkpoint)."""
    return {arch: train_checkpoint(tmp_path_factory.mktemp(f"train-{arch.split('.')[0]}"), arch)
            for arch in ("yolov8n.yaml", "yolo26n.yaml")}


def _image(checkpoint: Path, index=0):
    from PIL import Image
    import numpy as np

    img = Image.open(checkpoint.parents[3] / "images" / "train" / f"im{index}.png").convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def _perturbed(checkpoint: Path, out: Path) -> Path:
    """The checkpoint with noise on the head's class convolutions: a few epochs on 6 images
    leave every score near its initial prior (ties); this spreads them."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    model = ckpt.get("ema") or ckpt["model"]
    head = model.model[-1]
    with torch.no_grad():
        for name in ("cv3", "one2one_cv3"):  # the class logits
            for seq in getattr(head, name, None) or ():
                conv = seq[-1]
                conv.weight.add_(torch.randn(conv.weight.shape, generator=generator).to(conv.weight.dtype) * 0.3)
                conv.bias.add_(torch.randn(conv.bias.shape, generator=generator).to(conv.bias.dtype) * 2.0 + 3.0)
        if head.reg_max > 1:  # DFL logits: the boxes stay within reg_max cells of their centres
            for seq in head.cv2:
                conv = seq[-1]
                conv.weight.add_(torch.randn(conv.weight.shape, generator=generator).to(conv.weight.dtype) * 0.5)
    torch.save(ckpt, out)
    return out


def _assert_same_detections(ours: dict, boxes, scores, labels):
    """Ours vs Ultralytics': the same detections up to float noise (its predictor fuses
    Conv+BN) and the order of equal scores."""
    assert abs(len(ours["boxes"]) - len(boxes)) <= max(1, len(boxes) // 20), (len(ours["boxes"]), len(boxes))
    assert len(boxes) > 0
    near = (boxes.float()[:, None] - ours["boxes"].float()[None]).abs().amax(-1) < 0.05  # pixels
    same = (near & (labels.long()[:, None] == ours["labels"][None])
            & ((scores.float()[:, None] - ours["scores"][None]).abs() < 1e-4))
    assert same.any(1).float().mean() >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolo26n.yaml"])
def test_checkpoint_loads_and_decodes_as_ultralytics(family, checkpoints, arch, tmp_path):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint as ultralytics_load
    from ultralytics.utils.nms import non_max_suppression

    from quantdet.detectors.yolo import decode_outputs

    path = checkpoints[arch]
    net, config = family.load_checkpoint(path, CLASS_NAMES, 2)
    assert config["checkpoint"] == str(path)
    assert config["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["num_classes"] == 2 and config["arch"] == arch and config["train_imgsz"] == 64
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net.detector_config == config
    reference, _ = ultralytics_load(path)
    ours = net.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value.float()), key
    # the config alone rebuilds the network (model files keep config + state dict)
    rebuilt = detectors.build(pickle.loads(pickle.dumps(config)))
    rebuilt.load_state_dict(net.state_dict())
    # config() of params naming the checkpoint: the same network
    from_params = family.config({"detector": "yolo", "checkpoint": str(path), "arch": arch}, 2)
    assert {k: v for k, v in from_params.items() if k != "train_imgsz"} == \
        {k: v for k, v in config.items() if k != "train_imgsz"}
    with pytest.raises(ParamsError, match=r"arch.*not the architecture"):
        family.config({"detector": "yolo", "checkpoint": str(path), "arch": "yolo11s.yaml"}, 2)

    for checkpoint, conf in ((path, 0.001), (_perturbed(path, tmp_path / "perturbed.pt"), 0.01)):
        net, config = family.load_checkpoint(checkpoint, CLASS_NAMES, 2)
        net.eval()
        for index in range(2):
            x = _image(path, index)
            with torch.no_grad():
                outputs = net(x)
            if config["end2end"]:
                # Ultralytics' NMS-free inference (nms=False; its default, nms=None, runs the
                # one-to-many branch with NMS)
                result = YOLO(str(checkpoint)).predict(source=x, conf=conf, iou=0.7, imgsz=SIZE, nms=False,
                                                       device="cpu", verbose=False)[0]
                ours = family.decode(outputs, config, SIZE, score_threshold=conf, max_detections=300, nms_iou=0.7)[0]
                _assert_same_detections(ours, result.boxes.xyxy, result.boxes.conf, result.boxes.cls)
                continue
            # its predictor: the best class per box
            result = YOLO(str(checkpoint)).predict(source=x, conf=conf, iou=0.7, imgsz=SIZE, device="cpu",
                                                   verbose=False)[0]
            best = decode_outputs(outputs, config, SIZE, score_threshold=conf, max_detections=300, nms_iou=0.7,
                                  multi_label=False)[0]
            _assert_same_detections(best, result.boxes.xyxy, result.boxes.conf, result.boxes.cls)
            # its validator: every class above the threshold (what quantdet's decode does)
            model, _ = ultralytics_load(checkpoint)
            with torch.no_grad():
                predictions = model.eval()(x)
            reference = non_max_suppression(predictions, conf, 0.7, multi_label=True, max_det=300)[0]
            ours = family.decode(outputs, config, SIZE, score_threshold=conf, max_detections=300, nms_iou=0.7)[0]
            _assert_same_detections(ours, reference[:, :4].clamp(0, SIZE), reference[:, 4], reference[:, 5])


@pytest.mark.slow
def test_checkpoint_errors(family, checkpoints, tmp_path):
    path = checkpoints["yolov8n.yaml"]
    with pytest.raises(QuantdetError, match=r"classes differ.*'square', 'bar'.*'square', 'circle'"):
        family.load_checkpoint(path, ["square", "circle"], 2)
    with pytest.raises(QuantdetError, match=r"checkpoint 2 .*dataset 3"):
        family.load_checkpoint(path, ["square", "bar", "disc"], 3)
    with pytest.raises(QuantdetError, match="no such checkpoint"):
        family.load_checkpoint(tmp_path / "missing.pt", CLASS_NAMES, 2)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(QuantdetError, match=rf"{truncated.name}.*truncated"):
        family.load_checkpoint(truncated, CLASS_NAMES, 2)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(QuantdetError, match=rf"{text.name}.*not a readable PyTorch checkpoint"):
        family.load_checkpoint(text, CLASS_NAMES, 2)


def test_checkpoint_of_other_tasks_and_versions(family, tmp_path):
    from ultralytics.nn.tasks import PoseModel, SegmentationModel

    import ultralytics

    segment = tmp_path / "seg-best.pt"
    model = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)
    torch.save({"model": model.half(), "ema": None, "train_args": {"task": "segment", "imgsz": 64}}, segment)
    with pytest.raises(QuantdetError, match=rf"{segment.name}.*segment"):
        family.load_checkpoint(segment, CLASS_NAMES, 2)
    pose = tmp_path / "pose.pt"
    torch.save({"model": PoseModel("yolov8n-pose.yaml", nc=1, verbose=False)}, pose)
    with pytest.raises(QuantdetError, match="pose"):
        family.load_checkpoint(pose, ["person"], 1)
    # a class this Ultralytics does not have (a newer version's)
    module = types.ModuleType("ultralytics.nn.modules.future_block")

    class FutureBlock(torch.nn.Module):
        pass

    FutureBlock.__module__, FutureBlock.__qualname__ = module.__name__, "FutureBlock"
    module.FutureBlock = FutureBlock
    sys.modules[module.__name__] = module
    try:
        newer = tmp_path / "newer.pt"
        torch.save({"model": FutureBlock(), "train_args": {"task": "detect"}}, newer)
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(QuantdetError, match=rf"{newer.name}.*Ultralytics {ultralytics.__version__} \(installed\)"):
        family.load_checkpoint(newer, CLASS_NAMES, 2)
    quantdet_file = tmp_path / "student-fp32.pt"
    torch.save({"kind": "fp32", "detector": {"family": "yolo"}, "state_dict": {}}, quantdet_file)
    with pytest.raises(QuantdetError, match="quantdet model file"):
        family.load_checkpoint(quantdet_file, CLASS_NAMES, 2)
