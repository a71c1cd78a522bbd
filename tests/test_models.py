import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from quantdet.detectors.centernet.decode import decode_detections
from quantdet.detectors.centernet.loss import detection_loss
from quantdet.detectors.centernet.network import build_detector
from quantdet.detectors.centernet.loss import box_gaussians

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return build_detector("resnet10t", NUM_CLASSES, fpn_channels=16, head_channels=16).eval()


def _targets():
    return [
        {"boxes": torch.tensor([[4.0, 8.0, 28.0, 40.0], [30.0, 30.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an image without objects
    ]


@pytest.mark.parametrize("backbone", ["resnet10t", "resnet18"])
def test_outputs_are_stride_4_heatmap_and_nonnegative_boxes(backbone):
    model = build_detector(backbone, NUM_CLASSES, fpn_channels=16, head_channels=16).eval()
    with torch.no_grad():
        heatmap, boxes = model(torch.rand(2, 3, 64, 64))
    assert model.stride == 4 and model.num_classes == NUM_CLASSES
    assert heatmap.shape == (2, NUM_CLASSES, 16, 16) and boxes.shape == (2, 4, 16, 16)
    assert (boxes >= 0).all()
    # CenterNet prior: every centre starts at probability ~0.1.
    assert torch.sigmoid(heatmap).mean().item() == pytest.approx(0.1, abs=0.02)


def test_neck_and_head_use_relu_and_batchnorm_only(detector):
    kinds = {type(m).__name__ for part in (detector.fpn, detector.head) for m in part.modules()}
    assert kinds <= {"FeaturePyramid", "CenterHead", "ModuleList", "Sequential", "Conv2d", "BatchNorm2d", "ReLU"}


def test_fx_trace_matches_eager(detector):
    traced = torch.fx.symbolic_trace(detector)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for eager, fx in zip(detector(images), traced(images)):
            torch.testing.assert_close(fx, eager)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as export/ uses
def test_onnx_export_matches_eager(detector, tmp_path):
    images = torch.rand(1, 3, 64, 64)
    path = tmp_path / "detector.onnx"
    torch.onnx.export(detector, (images,), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["heatmap", "box_ltrb"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        for eager, exported in zip(detector(images), onnx_outputs):
            np.testing.assert_allclose(exported, eager.numpy(), atol=1e-4)


def test_gaussian_peaks_at_box_centre_and_padding_is_empty():
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 24.0], [0.0, 0.0, 0.0, 0.0]]])
    gaussians = box_gaussians(boxes, torch.tensor([[True, False]]), 16, 16, stride=4)
    assert gaussians[0, 0, 4, 6] == 1  # centre (24, 16) px -> cell (x 6, y 4)
    assert gaussians[0, 0].gt(0).sum() > 1 and gaussians[0, 1].sum() == 0
    # Elliptical: the wide box spreads further along x than along y.
    assert gaussians[0, 0, 4].gt(0).sum() > gaussians[0, 0, :, 6].gt(0).sum()


def test_loss_is_finite_and_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = build_detector("resnet10t", NUM_CLASSES, fpn_channels=16, head_channels=16)
    images, targets = torch.rand(2, 3, 64, 64), _targets()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss, parts = detection_loss(model(images), targets, stride=4)
        assert math.isfinite(loss.item()) and set(parts) == {"heatmap", "box"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_perfect_prediction_has_near_zero_box_loss():
    # ltrb distances that reproduce the target box exactly from every cell inside it.
    box = torch.tensor([8.0, 8.0, 40.0, 40.0])
    centres = (torch.arange(16, dtype=torch.float32) + 0.5) * 4
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    ltrb = torch.stack([xs - box[0], ys - box[1], box[2] - xs, box[3] - ys]).clamp(min=0)[None]
    heatmap = torch.full((1, NUM_CLASSES, 16, 16), -5.0)
    targets = [{"boxes": box[None], "labels": torch.tensor([1])}]
    _, parts = detection_loss((heatmap, ltrb), targets, stride=4)
    assert parts["box"] < 1e-4


def _hand_made_outputs():
    """Two peaks of class 1 at cells (y 2, x 3) and (y 2, x 4) that describe the same box, one of class 0."""
    heatmap = torch.full((1, 2, 8, 8), -10.0)
    ltrb = torch.zeros(1, 4, 8, 8)
    heatmap[0, 1, 2, 3], ltrb[0, :, 2, 3] = 3.0, torch.tensor([6.0, 4.0, 2.0, 4.0])  # centre (14, 10)
    heatmap[0, 1, 2, 5], ltrb[0, :, 2, 5] = 2.0, torch.tensor([14.0, 4.0, -6.0, 4.0])  # same box, from x 22
    heatmap[0, 0, 6, 6], ltrb[0, :, 6, 6] = 1.0, torch.tensor([2.0, 2.0, 2.0, 2.0])  # centre (26, 26)
    return heatmap, ltrb


def test_decode_returns_boxes_at_peaks_and_nms_removes_the_duplicate():
    detections = decode_detections(_hand_made_outputs(), stride=4, score_threshold=0.1)
    assert len(detections) == 1
    found = detections[0]
    torch.testing.assert_close(found["boxes"], torch.tensor([[8.0, 6.0, 16.0, 14.0], [24.0, 24.0, 28.0, 28.0]]))
    torch.testing.assert_close(found["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    assert found["labels"].tolist() == [1, 0] and found["labels"].dtype == torch.int64


def test_decode_keeps_duplicates_without_nms_and_applies_threshold_and_limit():
    outputs = _hand_made_outputs()
    assert len(decode_detections(outputs, stride=4, score_threshold=0.1, nms_iou=1.0)[0]["boxes"]) == 3
    assert len(decode_detections(outputs, stride=4, score_threshold=0.8)[0]["boxes"]) == 1
    assert len(decode_detections(outputs, stride=4, score_threshold=0.1, max_detections=1)[0]["boxes"]) == 1


def test_decode_accepts_onnxruntime_numpy_outputs():
    heatmap, ltrb = (torch.from_numpy(t.numpy().copy()) for t in _hand_made_outputs())
    assert len(decode_detections((heatmap, ltrb), stride=4, score_threshold=0.1)[0]["boxes"]) == 2
