"""The torchvision families (retinanet, fcos, ssdlite): quantdet's network and float decoding
give torchvision's own model's detections, a torchvision state dict (FrozenBatchNorm2d, as its
builders make them) loads into quantdet's network, and bad params or files are refused by name."""
import pytest
import torch

from quantdet import detectors
from quantdet.errors import ParamsError, QuantdetError

SIZE = 256


def _torchvision_model(family: str, config: dict):
    """torchvision's own builder of the same architecture (its FrozenBatchNorm2d, its transform
    fixed at SIZE so it does not resize)."""
    from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn, ssdlite320_mobilenet_v3_large

    classes = config["num_classes"]
    if family == "retinanet":
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=classes)
    elif family == "fcos":
        model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=classes)
    else:
        model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes + 1)
    model.transform.min_size, model.transform.max_size = (SIZE,), SIZE
    if family == "ssdlite":
        model.transform.fixed_size = (SIZE, SIZE)
    return model.eval()


@pytest.mark.parametrize("family,arch", [("retinanet", "resnet50"), ("fcos", "resnet50"),
                                         ("ssdlite", "mobilenet_v3_large")])
def test_a_torchvision_state_dict_loads_and_decodes_as_torchvision_does(family, arch, tmp_path):
    from quantdet.stages.train import load_trained

    torch.manual_seed(0)
    params = {"detector": family, "arch": arch, "fpn_channels": 256}
    names = ["a", "b", "c"]
    config = detectors.get(family).config(params, len(names))
    reference = _torchvision_model(family, config)
    with torch.no_grad():  # a trained head, not its prior: some scores above the threshold
        for name, p in reference.named_parameters():
            if "cls_logits" in name and name.endswith("bias"):
                p.fill_(0.0)
    path = tmp_path / "model.pth"
    torch.save({"model": reference.state_dict(), "optimizer": {}, "epoch": 3}, path)  # references' format
    model, loaded_config = load_trained(params, path, names, "models.student")
    assert loaded_config["family"] == family
    model.eval()

    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference(list(images))
        outputs = model(images)
    decoded = detectors.Decoder(loaded_config, SIZE, score_threshold=reference.score_thresh,
                                max_detections=reference.detections_per_img, nms_iou=reference.nms_thresh)(outputs)
    for got, want in zip(decoded, expected):
        want_labels = want["labels"] - (1 if family == "ssdlite" else 0)
        assert len(got["boxes"]) == len(want["boxes"]) > 0
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(got["scores"], want["scores"], atol=1e-5, rtol=1e-4)
        assert torch.equal(got["labels"], want_labels)


def test_another_family_or_class_count_is_refused_naming_the_file(tmp_path):
    from quantdet.stages.train import load_trained

    config = detectors.get("retinanet").config({"detector": "retinanet", "arch": "resnet18", "fpn_channels": 32}, 3)
    path = tmp_path / "retina.pt"
    torch.save(detectors.build(config).state_dict(), path)
    with pytest.raises(QuantdetError, match=r"retina\.pt: a state dict that does not fit .*other shapes"):
        load_trained({"detector": "retinanet", "arch": "resnet18", "fpn_channels": 32}, path, ["a", "b"],
                     "models.student")
    with pytest.raises(QuantdetError, match=r"retina\.pt: a state dict that does not fit torchvision FCOS"):
        load_trained({"detector": "fcos", "arch": "resnet18", "fpn_channels": 64}, path, ["a", "b", "c"],
                     "models.student")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(QuantdetError, match=r"junk\.pt: the retinanet family reads a PyTorch state dict"):
        load_trained({"detector": "retinanet", "arch": "resnet18"}, junk, ["a"], "models.student")


@pytest.mark.parametrize("params,message", [
    ({"detector": "retinanet", "arch": "resnet19"}, r"models.student.arch: retinanet has no backbone 'resnet19' \(close: resnet18"),
    ({"detector": "ssdlite", "arch": "resnet18"}, r"ssdlite has no backbone 'resnet18'.*mobilenet_v3_large"),
    ({"detector": "fcos", "arch": "resnet18", "fpn_channels": 20}, r"fpn_channels: fcos's head .*GroupNorm"),
    ({"detector": "fcos"}, r"models.student.arch: the fcos family needs a backbone"),
    ({"detector": "retinanet", "arch": "resnet18", "checkpoint": "/nope.pt"}, r"checkpoint: /nope.pt does not exist"),
    ({"detector": "fcos", "arch": "resnet18", "anchor_scale": 0.5}, r"anchor_scale: only retinanet's anchors"),
])
def test_bad_params_are_refused_naming_the_key(params, message):
    with pytest.raises(ParamsError, match=message):
        detectors.of_params(params).check(params, "models.student")


def test_pretrained_backbone_weights_need_the_internet_and_say_so(monkeypatch):
    import torchvision.models._api as api

    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(api.Weights, "get_state_dict", offline, raising=False)
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    config = detectors.get("retinanet").config({"detector": "retinanet", "arch": "resnet18", "fpn_channels": 32,
                                                "pretrained": True}, 2)
    with pytest.raises(QuantdetError, match="download.pytorch.org.*set pretrained: false"):
        detectors.build(config, pretrained=True)


def test_retinanet_anchors_follow_anchor_scale_and_default_to_torchvision():
    """anchor_scale multiplies every anchor size (torchvision's 32-512 px at 1, with no config
    key, so existing models keep their config); the matching and decoding use the same anchors."""
    from torchvision.models.detection.retinanet import _default_anchorgen

    from quantdet.models import torchvision_detection as tvd

    base = {"detector": "retinanet", "arch": "resnet18", "fpn_channels": 32}
    config = detectors.get("retinanet").config(base, 3)
    assert "anchor_scale" not in config
    assert detectors.get("retinanet").config({**base, "anchor_scale": 1.0}, 3) == config
    default = _default_anchorgen()
    assert tvd.retinanet_anchors(1.0).sizes == default.sizes
    small = detectors.get("retinanet").config({**base, "anchor_scale": 0.25}, 3)
    assert small["anchor_scale"] == 0.25 and "anchors ×0.25" in detectors.get("retinanet").describe(small)
    model = detectors.build(small).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 128, 128))
    _, maps = tvd.head_outputs(outputs, small)
    for config, smallest in ((small, 8), (config, 32)):   # the template decoding and the loss use:
        anchors = tvd.anchors_for(tvd._template(config), maps, 128)[0]
        areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        # the finest level's anchors cover about smallest² (torchvision rounds their corners)
        assert abs(float(areas.min()) ** 0.5 / smallest - 1) < 0.05
    loss = detectors.get("retinanet").loss_fn(model)(
        model.train()(torch.rand(2, 3, 128, 128)),
        [{"boxes": torch.tensor([[10.0, 10.0, 22.0, 24.0]]), "labels": torch.tensor([1])}] * 2)
    total, parts = loss
    assert torch.isfinite(total) and set(parts) == {"classification", "bbox_regression"}
