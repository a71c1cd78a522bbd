"""The one training loop: FP32 pre-training, QAT and distillation all call ``fit``.

AdamW with linear warm-up then cosine decay per iteration, gradient clipping, a checkpoint at
the end of every epoch, and resumption from it: a rerun of an interrupted job continues from
its last finished epoch and ends with the same weights as a run that was never interrupted.

Inside a torch.distributed process group (`quantdet.train.distributed`, under torchrun) the
same call trains data-parallel: DDP averages gradients, each rank takes its share of every
global batch of ``batch_size`` images, and only rank 0 writes checkpoints and calls ``log_fn``.
"""
from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from quantdet.data.dataset import collate_detections
from quantdet.train.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from quantdet.train.device import Fp32StridedConvOnLines, loader_workers, numerics, set_tf32, training_device

GRAD_CLIP_NORM = 10.0


def warmup_cosine(warmup_iters: int, total_iters: int) -> Callable[[int], float]:
    """LR factor: linear warm-up from ~0 to 1, then cosine decay to 0 at the last iteration."""
    warmup_iters = min(warmup_iters, total_iters)

    def factor(iteration: int) -> float:
        if iteration < warmup_iters:
            return (iteration + 1) / warmup_iters
        progress = (iteration - warmup_iters) / max(1, total_iters - warmup_iters)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No decay on BN affine parameters, biases and per-channel quantiser scales: shrinking
    # them towards 0 regularises nothing and fights the normalisation.
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class GlobalBatchShards(Sampler):
    """One rank's share of each global batch: consecutive batches of a permutation drawn from
    ``shuffle_seed``, each split across the ranks (every ``world``-th image; all of it alone).

    So N ranks see together exactly the images a single process with the global batch sees,
    in the same iterations.
    """

    def __init__(self, size: int, batch_size: int, drop_last: bool, shuffle_seed: int, rank: int,
                 world: int):
        self.size, self.batch_size, self.drop_last = size, batch_size, drop_last
        self.shuffle_seed, self.rank, self.world = shuffle_seed, rank, world

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else math.ceil(self.size / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.shuffle_seed)).tolist()
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group ``fit`` runs in; (0, 1) alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(model: torch.nn.Module, dataset, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
        warmup_iters: int, seed: int, checkpoint_path, threads: int | None = None, loss_fn=None,
        extra_loss=None, collate_fn=None, description: str = "train", log_fn=None,
        mixed_precision: bool = False, workers: int | str = 0, optimizer: str = "adamw",
        momentum: float = 0.9, after_backward=None, prepare_batch=None, tf32: bool = False,
        max_update: float | None = None) -> dict:
    """Train ``model`` in place on ``dataset`` and return the history ``{"epochs": [metrics, ...],
    "numerics": {...}}`` (numerics: the device, GPU, autocast dtype and TF32 it trained with).

    ``loss_fn(outputs, targets, stride) -> (total, parts)`` defaults to the detector family's loss;
    ``extra_loss(model, images, targets, outputs) -> (tensor, parts)`` is added to it (QAT,
    distillation). ``log_fn(epoch, metrics)`` is called after each epoch's checkpoint.

    ``mixed_precision`` runs the forward pass under bfloat16 autocast (weights and loss stay
    FP32): about 2x faster on CPUs with AVX512-BF16 or AMX, very slow on CPUs without them, and
    wrong for QAT, whose fake-quantizers must round FP32 values onto the integer grid.

    ``batch_size`` is the global batch: with N ranks each takes ``batch_size / N`` images of
    it. ``workers`` DataLoader processes load each rank's images (0: in the training process;
    ``"auto"``: see `quantdet.train.device.loader_workers`; augmentation is seeded per image, so
    the result does not depend on it).

    The model trains on `training_device()` (CUDA when present), with TF32 as ``tf32`` says.
    ``prepare_batch(batch, device) -> (images, targets)`` turns a loaded batch into the model's
    input and the loss's targets on the device (default: the images moved there, targets as
    loaded); AIT draws its generated images and the FP32 model's targets there.

    ``max_update`` caps each optimizer step's change of every output channel of a weight
    (a conv's or linear's row) at that fraction of the row's norm (a trust ratio, as LARS and
    LAMB use): Adam's step is about ``lr`` per weight whatever the weight's size, and BatchNorm
    folding leaves some channels' weights so small that one step changes them by a multiple
    of themselves (OA-QAT, `quantdet.methods.oaqat`).

    ``optimizer`` is "adamw" or "sgd" (with ``momentum``): AIT's gradient inflation needs
    SGD, whose step is proportional to the gradient. ``after_backward(model, optimizer,
    iteration) -> parts`` runs after gradient clipping and before the step (AIT).
    """
    if threads:
        torch.set_num_threads(threads)
    if loss_fn is None:
        from quantdet import detectors

        loss_fn = detectors.of(getattr(model, "detector_config", None) or {}).loss_fn(model)
    collate_fn = collate_fn or collate_detections
    rank, world = _world()
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} does not split evenly across {world} processes")
    device = training_device()
    set_tf32(tf32)
    workers = loader_workers(workers, int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                             cuda=device.type == "cuda")
    # channels_last: oneDNN's convolutions run ~1.4x faster in NHWC on CPU; the model goes
    # back to the default layout at the end, so what callers save or export looks as usual.
    model.to(device, memory_format=torch.channels_last)

    # Batches of one break BatchNorm; drop the ragged tail unless it is the whole dataset.
    drop_last = len(dataset) >= batch_size
    iters_per_epoch = len(dataset) // batch_size if drop_last else 1
    optimizer_name = optimizer
    groups = _parameter_groups(model, weight_decay)
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr)
    elif optimizer_name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    else:
        raise ValueError(f"unknown optimizer {optimizer_name!r}; known: adamw, sgd")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_iters, epochs * iters_per_epoch))
    if max_update is not None:
        _cap_relative_updates(optimizer, [p for p in model.parameters() if p.requires_grad and p.dim() > 1],
                              max_update)
    # A checkpoint from other settings or another architecture would continue a different
    # run: start afresh instead.
    run = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
           "warmup_iters": warmup_iters, "seed": seed, "dataset_size": len(dataset),
           "mixed_precision": mixed_precision, "tf32": tf32, "optimizer": optimizer_name,
           "max_update": max_update,
           "momentum": momentum if optimizer_name == "sgd" else None,
           "architecture": [(name, tuple(value.shape)) for name, value in model.state_dict().items()]}
    if world > 1:  # each rank's batch statistics differ from a single process's: another run
        run["processes"] = world

    history = {"epochs": []}
    start_epoch = 0
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is not None and checkpoint["run"] == run:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng_states(checkpoint["rng"])
        history = checkpoint["history"]
        start_epoch = checkpoint["epoch"]
    else:
        if checkpoint is not None and rank == 0:
            tqdm.write(f"{description}: {checkpoint_path} was written with other settings; starting afresh")
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    net = model
    ddp = world > 1 or _forced_ddp()
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        # Broadcasts rank 0's weights and buffers first, so every rank starts alike.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fp32_line_convs = False
    for epoch in range(start_epoch, epochs):
        if hasattr(dataset, "set_epoch"):  # DetectionDataset draws its augmentation from (seed, epoch, index)
            dataset.set_epoch(epoch)
        # The shuffle order depends on (seed, epoch) only, so a resumed epoch sees the same batches.
        shuffle_seed = seed * 100_003 + epoch
        shards = GlobalBatchShards(len(dataset), batch_size, drop_last, shuffle_seed, rank, world)
        # The loader's own generator (it draws the workers' base seed) leaves the global RNG alone.
        loader = DataLoader(dataset, batch_sampler=shards, collate_fn=collate_fn, num_workers=workers,
                            generator=torch.Generator().manual_seed(shuffle_seed),
                            pin_memory=device.type == "cuda")
        with Fp32StridedConvOnLines(model, mixed_precision and device.type == "cpu") as guard:
            metrics = _train_epoch(net, model, loader, optimizer, scheduler, loss_fn, extra_loss, device,
                                   mixed_precision, f"{description} {epoch + 1}/{epochs}", rank == 0,
                                   after_backward, prepare_batch)
        fp32_line_convs = fp32_line_convs or guard.guarded > 0
        if world > 1:
            metrics = _average_over_ranks(metrics, device)
        history["epochs"].append({"epoch": epoch + 1, **metrics})
        if rank == 0:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "run": run,
                "rng": rng_states(), "history": history,
            })
            if log_fn is not None:
                log_fn(epoch + 1, metrics)
    model.to(memory_format=torch.contiguous_format)
    return {**history, "numerics": {**numerics(device, torch.bfloat16 if mixed_precision else None, world),
                                    "ddp": ddp, "fp32_strided_line_convs": fp32_line_convs}}


def _cap_relative_updates(optimizer, weights: list, fraction: float) -> None:
    """After every step, scale back each row's update to at most `fraction` of the row's norm
    before the step (rows: the first dimension, a layer's output channels)."""
    before: list = []

    def keep(_optimizer, _args, _kwargs):
        before[:] = [w.detach().clone() for w in weights]

    @torch.no_grad()
    def cap(_optimizer, _args, _kwargs):
        for w, old in zip(weights, before):
            update = (w - old).flatten(1)
            ratio = update.norm(dim=1) / old.flatten(1).norm(dim=1).clamp(min=1e-12)
            scale = (fraction / ratio.clamp(min=1e-30)).clamp(max=1.0)
            w.copy_(old + (update * scale[:, None]).view_as(w))
        before.clear()

    optimizer.register_step_pre_hook(keep)
    optimizer.register_step_post_hook(cap)


def _forced_ddp() -> bool:
    """DDP at world size 1 (QUANTDET_FORCE_DDP=1 inside an initialised process group)."""
    import torch.distributed as dist

    from quantdet.train.distributed import forced

    return forced() and dist.is_available() and dist.is_initialized()


def _average_over_ranks(metrics: dict, device) -> dict:
    """The epoch's metrics of the whole job: losses averaged over ranks, throughput summed,
    time the slowest rank's. Every rank gets the same values."""
    import torch.distributed as dist

    names = sorted(metrics)
    values = torch.tensor([float(metrics[n]) for n in names], dtype=torch.float64, device=device)
    longest = values.clone()
    dist.all_reduce(values)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    out = {}
    for i, name in enumerate(names):
        if name == "images_per_s":
            out[name] = values[i].item()
        elif name in ("seconds", "lr"):
            out[name] = longest[i].item()
        else:
            out[name] = values[i].item() / world
    return out


def _to_device(batch, device):
    return batch[0].to(device, non_blocking=True), batch[1]


def _train_epoch(net, model, loader, optimizer, scheduler, loss_fn, extra_loss, device, mixed_precision,
                 description, show_progress: bool = True, after_backward=None, prepare_batch=None) -> dict:
    """One epoch; ``net`` runs the forward pass (the DDP wrapper, or ``model`` itself)."""
    net.train()
    sums: dict[str, float] = defaultdict(float)
    images_seen, batches = 0, 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=description, dynamic_ncols=True, disable=not show_progress)
    prepare_batch = prepare_batch or _to_device
    for batch in progress:
        images, targets = prepare_batch(batch, device)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            outputs = net(images)
        outputs = tuple(output.float() for output in outputs)
        # The stride follows from the shapes, so traced or wrapped models need no attribute.
        stride = images.shape[-1] // outputs[0].shape[-1]
        loss, parts = loss_fn(outputs, targets, stride)
        if extra_loss is not None:
            extra, extra_parts = extra_loss(model, images, targets, outputs)
            loss = loss + extra
            parts = {**parts, **extra_parts}
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{description}: non-finite loss {loss.item()} at batch {batches} ({parts})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        if after_backward is not None:
            parts = {**parts, **after_backward(model, optimizer, scheduler.last_epoch)}
        optimizer.step()
        scheduler.step()

        batches += 1
        images_seen += images.shape[0]
        sums["loss"] += loss.item()
        for name, value in parts.items():
            sums[name] += float(value)
        images_per_s = images_seen / (time.perf_counter() - start)
        progress.set_postfix({name: f"{value / batches:.3f}" for name, value in sums.items()}
                             | {"img/s": f"{images_per_s:.1f}"}, refresh=False)
    progress.close()
    seconds = time.perf_counter() - start
    return {**{name: value / max(1, batches) for name, value in sums.items()},
            "lr": optimizer.param_groups[0]["lr"], "images_per_s": images_seen / seconds, "seconds": seconds}
