"""Data-parallel training on one node: N processes under torchrun, DistributedDataParallel.

A training stage whose params ask for `train.processes: N > 1` re-launches its own command
under `torchrun --standalone --nproc_per_node N` (`relaunch`), so the Snakemake rule, the DVC
stage and a user at the shell all run the same `quantdet <stage>` command and the process count
stays a param. Each rank then runs the stage: `process_group()` joins the job (nccl on GPUs,
one GPU per rank; gloo on CPUs), `fit` wraps the model in DDP and gives each rank its slice of
every global batch, and only rank 0 (`is_main()`) writes checkpoints, outputs and MLflow runs.

A job of one process trains without DDP (it would change nothing but add its overhead).
`QUANTDET_FORCE_DDP=1` makes a one-process torchrun job join a process group and train
through DDP all the same: the GPU check (tests/gpu/) runs nccl that way on a single GPU.
"""
from __future__ import annotations

import contextlib
import os
import sys

from quantdet.errors import ParamsError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def forced() -> bool:
    """DDP even for one process (QUANTDET_FORCE_DDP=1, under torchrun)."""
    return os.environ.get("QUANTDET_FORCE_DDP", "") == "1" and launched()


def is_main() -> bool:
    """Rank 0, or a process that is not part of a distributed job."""
    return rank() == 0


def launched() -> bool:
    """Running as one rank of a torchrun job (torchrun sets these for every rank)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(processes: int, argv: list[str]) -> int:
    """Run `quantdet <argv>` as `processes` ranks on this node; returns torchrun's exit status.

    `--standalone` rendezvouses on a free local port, so jobs sharing a node do not collide.
    With CUDA every rank needs its own GPU; without it the ranks train on CPUs with gloo.
    """
    import torch
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if torch.cuda.is_available() and torch.cuda.device_count() < processes:
        raise ParamsError(f"train.processes: {processes} processes need {processes} GPUs, "
                          f"{torch.cuda.device_count()} visible")
    # This process becomes torchrun's agent. The stage's arguments are set after parsing:
    # torchrun's parser would take an option such as --log for an abbreviation of its own.
    args = torchrun.parse_args(["--standalone", f"--nproc_per_node={processes}", "-m", "quantdet.cli"])
    args.training_script_args = list(argv)
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        print(f"quantdet: a training process failed: {e}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def process_group():
    """Join the torchrun job's process group for the block; nothing when running alone."""
    import torch
    import torch.distributed as dist

    if (world_size() <= 1 and not forced()) or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """Inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
