"""A quantized model follows `.to()`: every tensor it holds is a parameter or buffer of a module,
so a model calibrated on the CPU trains on a GPU (the crash a real H200 run found in daqat,
fqn, qat and mimic: observer ranges left on the CPU).

Without a GPU, the `meta` device stands in for "another device": any tensor left behind by
`.to("meta")` is still on the CPU, and an op mixing it with a meta tensor raises, exactly as
CUDA does with a CPU tensor. Where CUDA is present the same steps run on it for real.
"""
import pytest
import torch

from quantdet.distill.mimic import FeatureTap, add_adaptation, mimic_loss, pooled
from quantdet.methods import get_method, names
from quantdet.detectors.centernet.network import build_detector
from quantdet.quant.graph import quantize_model, set_quant_mode
from quantdet.quant.modules import QUANTIZE
from quantdet.quant.outlier import QuantErrorLoss
from quantdet.quant.ptq import calibrate
from quantdet.quant.qat import prepare_qat
from tests.quant_models import tiny_model

QAT = sorted(n for n in names("qat") if not get_method("qat", n).generated)
OUTLIER = {"weight_fraction": 0.01, "channel_fraction": 0.1, "loss_weight": 1.0}
DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", autouse=True)
def meta_fake_quantize():
    """Shapes for the fused fake-quantize kernel on `meta` (torch registers none): what the
    kernel returns, (output like x, mask like x). Other devices use their real kernels."""
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
             lambda x, scale, zp, fake_quant_enabled, qmin, qmax: (
                 torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)), "Meta")
    yield
    del lib


def _tensors(obj, path, seen, out):
    """Every tensor reachable from obj through attributes, dicts, lists and tuples."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(v, f"{path}[{k!r}]", seen, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(v, f"{path}[{i}]", seen, out)
    elif isinstance(obj, torch.nn.Module) or (hasattr(obj, "__dict__") and not isinstance(obj, type)
                                              and type(obj).__module__.startswith("quantdet")):
        for k, v in vars(obj).items():
            _tensors(v, f"{path}.{k}", seen, out)


def held_tensors(model):
    out = []
    _tensors(model, "model", set(), out)
    return out


def _calibrated(observer, **kwargs):
    qmodel = quantize_model(tiny_model(), 8, 8, observer, kwargs)
    calibrate(qmodel, [torch.rand(4, 3, 64, 64) for _ in range(2)], 2)
    set_quant_mode(qmodel, QUANTIZE)
    return qmodel


def _qat_model(recipe, bits=8):
    torch.manual_seed(0)
    calib = [torch.rand(4, 3, 64, 64) for _ in range(2)]
    qmodel, _ = prepare_qat(tiny_model(), get_method("qat", recipe).recipe, bits, bits, calib, 2,
                            0.999, 0.1, OUTLIER)
    return qmodel.train()


@pytest.mark.parametrize("recipe", QAT)
@pytest.mark.parametrize("target", ["meta", torch.float64])
def test_nothing_stays_behind_when_a_qat_model_moves(recipe, target):
    qmodel = _qat_model(recipe)
    qmodel(torch.rand(4, 3, 64, 64))  # a training step's forward: tracked ranges and caches filled
    qmodel.to(target)
    if target == "meta":
        stayed = [p for p, t in held_tensors(qmodel) if t.device.type != "meta"]
    else:
        stayed = [p for p, t in held_tensors(qmodel) if t.is_floating_point() and t.dtype != target]
    assert not stayed, f"{recipe}: tensors not moved by .to({target}): {stayed[:8]}"


@pytest.mark.parametrize("observer", ["minmax", "ema_minmax", "percentile", "mse", "kl", "aciq"])
def test_nothing_stays_behind_when_a_calibrated_model_moves(observer):
    from quantdet.quant.observers import build_observer
    build_observer("aciq") if observer == "aciq" else None  # a method's own observer, registered on use
    qmodel = _calibrated(observer)
    qmodel.eval()(torch.rand(2, 3, 64, 64))  # inference: cached quantized weights
    qmodel.to("meta")
    stayed = [p for p, t in held_tensors(qmodel) if t.device.type != "meta"]
    assert not stayed, f"{observer}: {stayed[:8]}"


def test_observer_state_is_not_saved():
    """Observations are buffers for `.to()`, not for the model file: its keys are unchanged."""
    keys = set(_calibrated("percentile").state_dict())
    assert not any(".observer." in k for k in keys)
    assert any(k.endswith(".scale") for k in keys)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", QAT)
def test_a_training_step_after_moving_a_cpu_calibrated_model(recipe, device):
    """Calibrated on the CPU, moved, trained: forward (ranges tracked), loss, backward, step."""
    if recipe == "oaqat" and device == "meta":
        pytest.skip("oaqat's FP16 side paths find their outliers with nonzero(), which has no "
                    "meta kernel; its state is checked by the move test, its step on CUDA")
    qmodel = _qat_model(recipe, bits=4 if recipe == "daqat" else 8).to(device)
    with QuantErrorLoss(qmodel, 1.0) as quant_error:
        images = torch.rand(4, 3, 64, 64, device=device)
        heatmap, boxes = qmodel(images)
        loss = heatmap.sigmoid().mean() + boxes.mean()
        if quant_error.terms:  # oaqat's outlier channels
            loss = loss + torch.stack(quant_error.terms).mean()
        loss.backward()
    optimizer = torch.optim.SGD([p for p in qmodel.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    assert all(p.device.type == device for p in qmodel.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant_quantized", [False, True])
def test_a_mimic_step_after_moving(device, variant_quantized):
    torch.manual_seed(0)
    teacher = build_detector("resnet10t", num_classes=3, fpn_channels=24, head_channels=16).eval()
    student = build_detector("resnet10t", num_classes=3, fpn_channels=16, head_channels=16).eval()
    qstudent, _ = prepare_qat(student, get_method("qat", "fqn").recipe, 8, 8,
                              [torch.rand(2, 3, 64, 64)], 1, 0.999, 0.1)
    adaptation = add_adaptation(qstudent, 16, 24)
    qstudent.to(device).train()
    teacher.to(device)
    student_tap, teacher_tap = FeatureTap(qstudent), FeatureTap(teacher)
    images = torch.rand(2, 3, 64, 64, device=device)
    outputs = qstudent(images)
    with torch.no_grad():
        teacher(images)
    rois = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    loss = mimic_loss(pooled(teacher_tap.features, rois, 3, 4), pooled(student_tap.features, rois, 3, 4),
                      adaptation, 0.25 if variant_quantized else None) + outputs[0].mean()
    loss.backward()
    assert adaptation.weight.grad is not None and adaptation.weight.grad.device.type == device
    student_tap.remove()
    teacher_tap.remove()


# ---------------------------------------------------------------- numerics, workers, files
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 flags are set only where CUDA is")
def test_tf32_setting_switches_cuda_matmuls_and_convolutions():
    from quantdet.train.device import set_tf32, tf32_enabled

    before = tf32_enabled()
    try:
        set_tf32(True)
        assert tf32_enabled() == {"matmul": True, "conv": True}
        set_tf32(False)
        assert tf32_enabled() == {"matmul": False, "conv": False}
    finally:
        set_tf32(before["conv"])


def test_fit_records_what_it_computed_with(tmp_path):
    from quantdet.train.device import training_device
    from quantdet.train.loop import fit
    from tests.test_qat import _Boxes

    model = tiny_model().train()
    history = fit(model, _Boxes(), epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0,
                  warmup_iters=1, seed=0, checkpoint_path=tmp_path / "m.ckpt", tf32=False,
                  collate_fn=lambda b: (torch.stack([x[0] for x in b]), [x[1] for x in b]))
    n = history["numerics"]
    assert n["device"] == training_device().type and n["autocast"] is None
    assert n["tf32"] is False and n["ddp"] is False and n["processes"] == 1
    assert n["torch"] == torch.__version__
    assert (n["gpu"] is None) == (n["device"] == "cpu")


@pytest.mark.parametrize("setting, env, cpus, processes, cuda, expected", [
    (3, {}, 16, 1, True, 3),                                   # a number is taken as it is
    ("auto", {}, 16, 1, False, 0),                             # CPU training: in-process loading
    ("auto", {}, 16, 1, True, 15),                             # the machine's CPUs, one kept
    ("auto", {"SLURM_CPUS_PER_TASK": "8"}, 64, 1, True, 7),    # SLURM's share of the node
    ("auto", {"SLURM_CPUS_PER_TASK": "8"}, 64, 2, True, 3),    # shared by two ranks
    ("auto", {}, 1, 1, True, 0),
])
def test_auto_loader_workers(monkeypatch, setting, env, cpus, processes, cuda, expected):
    from quantdet.train import device

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert device.loader_workers(setting, processes, cuda=cuda) == expected


def test_environment_record_creates_no_cuda_context(monkeypatch):
    """A CPU stage on a GPU node: the record asks the driver nothing that initialises CUDA."""
    from quantdet import environment

    def initialises(*_a, **_k):
        raise AssertionError("the environment record initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", initialises)
    monkeypatch.setattr(torch.cuda, "current_device", initialises)
    monkeypatch.setattr(torch.cuda, "init", initialises)
    runtime = environment.environment()["runtime"]["torch"]
    assert runtime["gpu"] is None and runtime["cuda_initialized"] is False
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA Test GPU")
    assert environment.environment()["runtime"]["torch"]["gpu"] == "NVIDIA Test GPU"


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_model_files_hold_cpu_tensors(tmp_path, device):
    """A model trained on a GPU loads with a plain torch.load on a machine without one."""
    from quantdet.models.io import save_model

    qmodel = _calibrated("percentile").to(device)
    save_model(tmp_path / "m.pt", qmodel, kind="quantized", detector={}, classes={})
    payload = torch.load(tmp_path / "m.pt", map_location=None, weights_only=False)
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    assert payload["state_dict"]._metadata == qmodel.state_dict()._metadata  # module versions kept


@pytest.mark.parametrize("device", DEVICES)
def test_ait_draws_its_batches_and_targets_on_the_training_device(device):
    """AIT's generated images and the FP32 model's targets are made where training runs, from
    noise drawn on the CPU (the same batch on any device), not inside the loader."""
    from quantdet.zeroshot.ait import GeneratedBatches
    from quantdet.zeroshot.generator import ConditionalGenerator

    torch.manual_seed(0)
    batches = GeneratedBatches(ConditionalGenerator(3, 64, noise_dim=8, channels=8), tiny_model(), 8, seed=0)
    noise, labels = batches.collate([batches[i] for i in range(4)])
    assert noise.device.type == "cpu" and noise.shape == (4, 8) and labels.shape == (4,)
    images, targets = batches.prepare((noise, labels), torch.device(device))
    assert images.device.type == device and images.shape == (4, 3, 64, 64)
    assert all(t.device.type == device for t in targets)


def test_a_strided_conv_on_a_line_trains_in_fp32_under_cpu_autocast():
    """torch's oneDNN bf16 weight gradient of a 3x3 stride-2 conv on an input with a side of 1
    is NaN or wrong (scripts/bf16_conv_check.py): inside the guard it is FP32's, and other
    convs stay in bf16."""
    from quantdet.train.device import Fp32StridedConvOnLines

    torch.manual_seed(1)
    line, square = torch.nn.Conv2d(32, 32, 3, 2, 1), torch.nn.Conv2d(32, 32, 3, 2, 1)
    model = torch.nn.ModuleDict({"line": line, "square": square})
    x1 = torch.relu(torch.randn(16, 32, 4, 1)).contiguous(memory_format=torch.channels_last)
    x2 = torch.randn(16, 32, 4, 4)
    with Fp32StridedConvOnLines(model, True) as guard, torch.autocast("cpu", dtype=torch.bfloat16):
        y1, y2 = line(x1), square(x2)
    assert y1.dtype == torch.float32 and y2.dtype == torch.bfloat16 and guard.guarded == 1
    assert not line._forward_pre_hooks and not line._forward_hooks  # removed on leaving
    grad = torch.randn(y1.shape)
    y1.backward(grad)
    got = line.weight.grad.clone()
    line.weight.grad = None
    line(x1).backward(grad)
    torch.testing.assert_close(got, line.weight.grad)
    with Fp32StridedConvOnLines(model, True) as guard:   # no autocast: nothing to do
        line(x1)
    assert guard.guarded == 0
