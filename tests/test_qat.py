import pytest
import torch

from quantdet.quant.graph import activation_quantizers
from quantdet.quant.modules import QuantConv2d
from quantdet.methods import get_method, names
from quantdet.quant.qat import prepare_qat

# every registered real-data QAT recipe (ait trains on generated data: tests/test_zeroshot*.py)
QAT_RECIPES = {n: get_method("qat", n).recipe for n in names("qat") if not get_method("qat", n).generated}
from quantdet.train.loop import fit
from tests.quant_models import tiny_model


class _Boxes(torch.utils.data.Dataset):
    """A few images with one box each: enough for QAT steps to run for real."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 64, 64, generator=g)
        return image, {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([i % 3])}, {}


@pytest.mark.parametrize("recipe", sorted(QAT_RECIPES))
def test_each_recipe_prepares_a_trainable_quantized_model(recipe, tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    calib = [torch.rand(4, 3, 64, 64) for _ in range(2)]
    outlier = {"weight_fraction": 0.01, "channel_fraction": 0.1, "loss_weight": 1.0}
    qmodel, config = prepare_qat(model, QAT_RECIPES[recipe], 4, 4, calib, 2, 0.999, 0.1, outlier)
    assert config["calibration_batches"] == 2
    before = [float(q.scale.detach()) for q in activation_quantizers(qmodel)]
    weights = [m.weight.detach().clone() for m in qmodel.modules() if isinstance(m, QuantConv2d)]
    fit(qmodel, _Boxes(), epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_iters=1, seed=0,
        checkpoint_path=tmp_path / "qat.ckpt", collate_fn=lambda b: (
            torch.stack([x[0] for x in b]), [x[1] for x in b], [x[2] for x in b]))
    after = [float(q.scale.detach()) for q in activation_quantizers(qmodel)]
    if QAT_RECIPES[recipe].tracking_observer or QAT_RECIPES[recipe].learnable_steps:
        assert before != after  # ranges move: tracked by EMA, or learned by LSQ
    else:  # fixed (error-minimizing) ranges: the weights adapt to them
        assert before == after
    assert any(not torch.equal(w, m.weight) for w, m in zip(
        weights, (m for m in qmodel.modules() if isinstance(m, QuantConv2d))))
    if QAT_RECIPES[recipe].learnable_steps:
        assert all(m.learned_scale.requires_grad for m in qmodel.modules() if isinstance(m, QuantConv2d))
