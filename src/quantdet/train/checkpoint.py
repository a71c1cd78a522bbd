"""Training checkpoints: written atomically, holding everything a resumed run needs to continue
exactly where the interrupted one stopped (weights, optimiser, schedule, RNG states, history)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write to a temporary sibling and rename, so a killed job never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from quantdet.io_utils import atomic_path

    with atomic_path(path) as partial:
        torch.save(state, partial)


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) we wrote ourselves.
    return torch.load(path, map_location="cpu", weights_only=False)
