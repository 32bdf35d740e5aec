"""Checkpoints that resume a run exactly, written so that a kill at any instant leaves a readable file.

A checkpoint holds everything the next step depends on: model, optimizer, lr scheduler and GradScaler states,
the global step, the epoch's running sums when taken mid-epoch, and per data-parallel rank the loader's position
inside the epoch (`Loader.state_dict()`) and the random generators (torch, CUDA, numpy, python). It is written
to `NAME.tmp` and renamed over NAME (`os.replace` is atomic on POSIX), so the file on disk is always the last
complete checkpoint.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from alexdata.files import atomic_open

FORMAT = 1  # bump when the layout below changes


def save_atomic(obj, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """torch.save to `path.tmp`, flushed to disk, then renamed over `path` (alexdata.files.atomic_open).

    previous: where the checkpoint being replaced goes (the spare), moved only once the new one is complete on
    disk. A crash between the two renames leaves the spare and no `path`: resuming falls back to the spare."""
    if previous is None or not os.path.exists(path):
        with atomic_open(path) as f:
            torch.save(obj, f)
        return
    tmp = f"{path}.new"
    with atomic_open(tmp) as f:
        torch.save(obj, f)
    os.replace(path, previous)
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> dict:
    """A checkpoint written by the trainer, on the CPU. It holds numpy and python RNG states, hence
    weights_only=False: load only checkpoints you trust (as with any pickle)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a trainer checkpoint of format {FORMAT}")
    return ckpt


def rng_state(cuda_devices=()) -> dict:
    """The states of every generator the training step draws from (dropout: torch, and the CUDA devices the model
    uses: only those, so a rank never opens a context on the other ranks' GPUs)."""
    return {"torch": torch.get_rng_state(),
            "cuda": {str(dev): torch.cuda.get_rng_state(dev) for dev in cuda_devices},
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    for dev, st in (state["cuda"] or {}).items():
        torch.cuda.set_rng_state(st, dev)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def incompatibility(saved: dict, now: dict, keys: list[str]) -> str | None:
    """The first dotted key (e.g. "model.width") whose value differs between two nested config dicts,
    described in one phrase; None when they all agree."""
    for key in keys:
        a, b = saved, now
        for part in key.split("."):
            a, b = a.get(part) if isinstance(a, dict) else None, b.get(part) if isinstance(b, dict) else None
        if a != b:
            return f"{key} is {a!r} in the checkpoint but {b!r} now"
    return None
