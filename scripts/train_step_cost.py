"""Cost of one training step (forward, the family's loss, backward, AdamW) per detector, as a
ratio to the default study's student: the numbers the detector families table of docs/detectors.md quotes.

    python scripts/train_step_cost.py --size 128 --batch 32 --threads 1

Each detector is built from params as a study would (from scratch), with random images and
targets of 1-4 boxes per image, under the training loop's numerics (bf16 autocast on a CPU that
has it, `train.mixed_precision: auto`); the median of --steps timed steps after two warm-up
steps. Ratios are from one run of this script: the machine's noise cancels, not its load."""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

DETECTORS = {
    "centernet resnet10t (default student)": {"detector": "centernet", "backbone": "resnet10t",
                                              "fpn_channels": 64, "head_channels": 64},
    "retinanet resnet18 fpn64": {"detector": "retinanet", "arch": "resnet18", "fpn_channels": 64},
    "fcos resnet18 fpn64": {"detector": "fcos", "arch": "resnet18", "fpn_channels": 64},
    "ssdlite mobilenet_v3_large": {"detector": "ssdlite", "arch": "mobilenet_v3_large"},
    "retinanet resnet50 fpn256 (torchvision's)": {"detector": "retinanet", "arch": "resnet50", "fpn_channels": 256},
    "fcos resnet50 fpn256 (torchvision's)": {"detector": "fcos", "arch": "resnet50", "fpn_channels": 256},
    "yolo11n": {"detector": "yolo", "arch": "yolo11n.yaml"},
}


def targets(batch: int, size: int, classes: int, generator: torch.Generator) -> list[dict]:
    out = []
    for _ in range(batch):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * size * 0.6
        wh = 8 + torch.rand(n, 2, generator=generator) * size * 0.35
        out.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                    "labels": torch.randint(0, classes, (n,), generator=generator)})
    return out


def step_seconds(params: dict, size: int, batch: int, classes: int, steps: int, autocast: bool) -> float:
    from quantdet import detectors
    from quantdet.train.device import Fp32StridedConvOnLines

    family = detectors.of_params(params)
    config = family.config(params, classes)
    torch.manual_seed(0)
    model = detectors.build(config).to(memory_format=torch.channels_last).train()
    loss_fn = family.loss_fn(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    labels = targets(batch, size, classes, generator)
    times = []
    with Fp32StridedConvOnLines(model, autocast):
        for i in range(steps + 2):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outputs = model(images)
            outputs = tuple(o.float() for o in outputs)
            loss, _ = loss_fn(outputs, labels, size // outputs[0].shape[-1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--only", nargs="*", help="detector names (keys of the table) to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from quantdet.stages.train import use_mixed_precision

    autocast = use_mixed_precision("auto")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size} px, batch {args.batch}, "
          f"bf16 autocast: {autocast}")
    results = {}
    for name, params in DETECTORS.items():
        if args.only and name not in args.only:
            continue
        results[name] = step_seconds(params, args.size, args.batch, args.classes, args.steps, autocast)
    base = next(iter(results.values()))
    print("| detector | s / step | vs the first |\n| --- | ---: | ---: |")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {seconds / base:.1f}x |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
