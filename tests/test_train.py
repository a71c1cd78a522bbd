import pytest
import torch

from quantdet.detectors.centernet.network import build_detector
from quantdet.train.checkpoint import load_checkpoint
from quantdet.train.loop import fit, warmup_cosine

SIZE = 64
SETTINGS = {"epochs": 3, "batch_size": 4, "lr": 2e-3, "weight_decay": 1e-4, "warmup_iters": 2, "threads": 1}


class TinyDetectionSet(torch.utils.data.Dataset):
    """Eight random images with one or two random boxes each, items shaped like DetectionDataset's."""

    def __init__(self):
        generator = torch.Generator().manual_seed(1)
        self.images = torch.rand(8, 3, SIZE, SIZE, generator=generator)
        self.targets = []
        for i in range(8):
            corners = torch.rand(1 + i % 2, 2, generator=generator) * 40
            sides = 8 + torch.rand(1 + i % 2, 2, generator=generator) * 16
            self.targets.append({"boxes": torch.cat([corners, corners + sides], 1),
                                 "labels": torch.randint(0, 2, (1 + i % 2,), generator=generator)})

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.targets[index], {"image_id": index, "scale": 1.0}


def _model(seed=0):
    torch.manual_seed(seed)
    return build_detector("resnet10t", 2, fpn_channels=8, head_channels=8)


def _train(checkpoint, seed=0, model=None, **overrides):
    model = model or _model()
    history = fit(model, TinyDetectionSet(), seed=seed, checkpoint_path=checkpoint, **(SETTINGS | overrides))
    return model, history


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class StopAfterEpoch(Exception):
    pass


def test_checkpoint_is_written_at_every_epoch(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    seen = []

    def log(epoch, metrics):
        seen.append((epoch, load_checkpoint(checkpoint)["epoch"], metrics))

    _, history = _train(checkpoint, log_fn=log)
    assert [(epoch, saved) for epoch, saved, _ in seen] == [(1, 1), (2, 2), (3, 3)]
    assert {"loss", "heatmap", "box", "lr", "images_per_s"} <= set(seen[0][2])
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert not list(tmp_path.glob(".*partial*"))  # the temporary file was renamed into place


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    uninterrupted, history = _train(tmp_path / "a.ckpt")

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise StopAfterEpoch

    with pytest.raises(StopAfterEpoch):
        _train(tmp_path / "b.ckpt", log_fn=stop_after_first)
    assert load_checkpoint(tmp_path / "b.ckpt")["epoch"] == 1
    logged = []
    resumed, resumed_history = _train(tmp_path / "b.ckpt", model=_model(seed=123),
                                      log_fn=lambda epoch, _: logged.append(epoch))
    assert logged == [2, 3]  # epoch 1 came from the checkpoint, not from training again
    assert _same_weights(resumed, uninterrupted)
    assert [e["loss"] for e in resumed_history["epochs"]] == [e["loss"] for e in history["epochs"]]


def test_finished_run_is_not_trained_again(tmp_path):
    trained, _ = _train(tmp_path / "model.ckpt")
    calls = []
    rerun, history = _train(tmp_path / "model.ckpt", model=_model(seed=5), log_fn=lambda *a: calls.append(a))
    assert calls == [] and len(history["epochs"]) == 3
    assert _same_weights(rerun, trained)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first, _ = _train(tmp_path / "a.ckpt")
    second, _ = _train(tmp_path / "b.ckpt")
    other, _ = _train(tmp_path / "c.ckpt", seed=1)
    assert _same_weights(first, second)
    assert not _same_weights(first, other)


def test_changed_settings_or_architecture_start_afresh(tmp_path):
    _train(tmp_path / "model.ckpt", epochs=1)
    logged = []
    _train(tmp_path / "model.ckpt", epochs=2, log_fn=lambda epoch, _: logged.append(epoch))
    wider = build_detector("resnet10t", 2, fpn_channels=16, head_channels=16)
    _train(tmp_path / "model.ckpt", epochs=2, model=wider, log_fn=lambda epoch, _: logged.append(epoch))
    assert logged == [1, 2, 1, 2]


def test_extra_loss_is_added_and_logged(tmp_path):
    calls = []

    def weight_penalty(model, images, targets, outputs):
        calls.append(images.shape[0])
        penalty = sum(p.pow(2).sum() for p in model.head.parameters())
        return 1e-3 * penalty, {"penalty": penalty.item()}

    _, history = _train(tmp_path / "model.ckpt", epochs=1, extra_loss=weight_penalty)
    assert calls == [4, 4]
    epoch = history["epochs"][0]
    assert epoch["penalty"] > 0 and epoch["loss"] > epoch["heatmap"]


def test_mixed_precision_trains_fp32_weights_in_the_default_layout(tmp_path):
    model, history = _train(tmp_path / "model.ckpt", epochs=1, mixed_precision=True)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert torch.isfinite(torch.tensor(history["epochs"][0]["loss"]))


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_iters=4, total_iters=14)
    assert [factor(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.5) and factor(14) == pytest.approx(0.0)
    assert all(factor(i) >= factor(i + 1) for i in range(4, 14))


@pytest.mark.slow
def test_short_training_on_the_embedded_dataset_learns(tmp_path):
    from quantdet.data.dataset import DetectionDataset
    from quantdet.data.embedded import generate_embedded

    generate_embedded(tmp_path / "data", num_train=96, num_val=8, image_size=128, seed=0)
    dataset = DetectionDataset(tmp_path / "data" / "train", 128, augment=True, seed=0)
    torch.manual_seed(0)
    model = build_detector("resnet10t", len(dataset.category_ids), fpn_channels=32, head_channels=32)
    history = fit(model, dataset, epochs=4, batch_size=16, lr=2e-3, weight_decay=1e-4, warmup_iters=6,
                  seed=0, checkpoint_path=tmp_path / "model.ckpt", threads=2)
    losses = [e["loss"] for e in history["epochs"]]
    assert losses[-1] < 0.85 * losses[0]  # 24 steps: 6.5 -> 5.1 measured
