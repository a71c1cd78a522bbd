"""What a detector family is: one class per family, the only code that knows its architecture.

Stages, methods, export and evaluation call these hooks and nothing else of a family. A model
file's ``payload["detector"]`` is the family's *config*: a plain dict with ``"family"`` and
whatever ``build`` needs (made by ``config`` from params, or by ``load_checkpoint`` from a
user's file), so any job can rebuild the same network from the file alone.

The network a family builds takes images ``B×3×S×S`` in ``[0, 1]`` (normalisation, if any, is
inside it) and returns a tuple of float tensors, its *raw outputs*: what the quantized graph
ends at. Everything after them (box decoding, DFL, anchors, sigmoid, NMS) is ``decode``, always
float and outside the quantized region, so a PyTorch model and an onnxruntime session are
decoded by the same code.
"""
from __future__ import annotations

from pathlib import Path


class DetectorFamily:
    name: str = ""
    description: str = ""
    # Method names (quantdet.methods) or families ("mimic", "generate") this family cannot
    # serve, each with the reason `quantdet validate` prints.
    unsupported: dict[str, str] = {}
    # Whether the raw outputs are quantized too (8-bit, min/max: quant.modules.OutputQuantizer),
    # so that onnxruntime runs the prediction convs as integer kernels as well; False keeps them
    # float-output convs (int8 weights and input, float accumulation out).
    integer_outputs: bool = False
    # How images become square inputs (quantdet.data.dataset.Letterbox); None: quantdet's own
    # (right/bottom black padding). A family trained elsewhere keeps its trainer's.
    letterbox = None
    # The input size of `example()`'s network in the registry's contract test (a family whose
    # coarsest level needs more than 64 px to be more than one cell says so here).
    example_size: int = 64

    # ---- what it accepts -------------------------------------------------------------
    def example(self) -> dict:
        """`models.<role>` params of a small network of this family: what the registry's
        contract test (tests/detectors/test_contract.py) builds, traces, quantizes and exports."""
        raise NotImplementedError

    def architectures(self) -> list[str]:
        """The architecture names `models.<role>.arch` accepts (examples where open-ended)."""
        raise NotImplementedError

    def check(self, model_params: dict, key: str) -> None:
        """Raise ParamsError (naming `key`, e.g. ``models.student``) for an architecture or
        setting this family cannot build; may import the family's package."""

    # ---- building --------------------------------------------------------------------
    def config(self, model_params: dict, num_classes: int) -> dict:
        """The model file's detector config from `models.<role>` params."""
        raise NotImplementedError

    def build(self, config: dict, pretrained: bool = False):
        """An FP32 network (nn.Module) from its config: forward(images) -> tuple of tensors."""
        raise NotImplementedError

    def load_checkpoint(self, path: Path, class_names: list[str], num_classes: int):
        """(network, config) from a user's trained checkpoint in the family's native format;
        raise QuantdetError naming the file when it is not one or its classes differ."""
        raise NotImplementedError

    # ---- training and decoding -------------------------------------------------------
    def loss_fn(self, model):
        """``loss(outputs, targets, stride) -> (total, {part: float})`` for this network,
        targets as the dataset gives them (boxes xyxy in input pixels, labels 0..C-1)."""
        raise NotImplementedError

    def decode(self, outputs, config: dict, input_size: int, *, score_threshold: float,
               max_detections: int, nms_iou: float) -> list[dict]:
        """Raw outputs (torch tensors, batch first) -> per image {boxes xyxy input pixels,
        scores, labels}. Float; the same for PyTorch and ONNX outputs."""
        raise NotImplementedError

    def class_logits(self, outputs):
        """B×C×… class logits at every output position (the class terms of the zero-shot
        methods: GDFQ's generator loss, AIT's KL)."""
        raise NotImplementedError

    def output_names(self, config: dict) -> list[str]:
        """ONNX output names of the raw outputs, in order."""
        raise NotImplementedError

    def stride(self, config: dict) -> int:
        """The finest output stride (what mimic's regions and the report quote)."""
        raise NotImplementedError

    # ---- quantization ----------------------------------------------------------------
    def traceable(self, model):
        """The network in a form torch.fx.symbolic_trace captures whole (the quantized region
        is the traced graph: every conv and linear in it). Default: the network itself."""
        return model

    def float_layers(self, model) -> list[str]:
        """Modules (qualified names of the FP32 network) that stay float when quantized."""
        return []

    def feature_taps(self, model) -> list[str]:
        """Module names (in the FP32 network) whose outputs mimic distils, finest first."""
        raise NotImplementedError

    def tap_channels(self, config: dict) -> list[int]:
        """Channels of each feature tap, in `feature_taps` order."""
        raise NotImplementedError

    def layer_group(self, layer_name: str) -> str:
        """The ablation's group of a quantized layer (its name in the quantized graph)."""
        return layer_name.split("_")[0]

    def input_statistics(self, model):
        """(mean, std) B×3×1×1 of the network's input normalisation, or None for [0, 1] input."""
        return None

    def describe(self, config: dict) -> str:
        """One line for the report: the family and its architecture."""
        return f"{self.name} `{config.get('arch')}`"
