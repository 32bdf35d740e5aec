"""Checkpoints that resume a run exactly, written so that a kill at any instant leaves a readable file.

A checkpoint holds everything the next step depends on: model, optimizer, lr scheduler and GradScaler states,
the global step, the epoch's running sums when taken mid-epoch, the statistics the inputs were normalised with
(per channel in the config, the mean image as a tensor beside it: train.stats_from_checkpoint), and per
data-parallel rank the loader's position inside the epoch (`Loader.state_dict()`) and the random generators
(torch, CUDA, numpy, python). It is written to `NAME.tmp` and renamed over NAME (`os.replace` is atomic on
POSIX), so the file on disk is always the last complete checkpoint.

Everything in it is a tensor or a plain Python value (the numpy RNG state is stored as a tensor), so it loads
with `torch.load(path, weights_only=True)`, which runs no pickled code: a checkpoint from elsewhere is safe to
open. Format 1 (before that) held numpy objects and is refused with one line.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from alexdata.files import atomic_open

FORMAT = 2  # bump when the layout below changes; 2: loadable with weights_only=True, classes in the config


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
    """A checkpoint written by the trainer, on the CPU, loaded with weights_only=True (no pickled code runs)."""
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if "numpy" in str(e):
            raise ValueError(f"{path}: a format-1 checkpoint (numpy objects inside), which only an unsafe load "
                             f"(weights_only=False) reads; retrain, or load it yourself if you trust its source")
        raise ValueError(f"{path}: not a checkpoint that loads safely ({first[:160]})") from None
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise ValueError(f"{path}: not a trainer checkpoint of format {FORMAT}" + (f" (format {got})" if got else ""))
    return ckpt


def rng_state(cuda_devices=()) -> dict:
    """The states of every generator the training step draws from (dropout: torch, and the CUDA devices the model
    uses: only those, so a rank never opens a context on the other ranks' GPUs), as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": {str(dev): torch.cuda.get_rng_state(dev) for dev in cuda_devices},
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    for dev, st in (state["cuda"] or {}).items():
        torch.cuda.set_rng_state(st, dev)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])


def incompatibility(saved: dict, now: dict, keys: list[str]) -> str | None:
    """The first dotted key (e.g. "model.width") whose value differs between two nested config dicts,
    described in one short phrase (values only when they are short); None when they all agree."""
    for key in keys:
        a, b = saved, now
        for part in key.split("."):
            a, b = a.get(part) if isinstance(a, dict) else None, b.get(part) if isinstance(b, dict) else None
        if a != b:
            if len(repr(a)) + len(repr(b)) <= 60:
                return f"{key} is {a!r} in the checkpoint but {b!r} now"
            return f"{key} differs from the checkpoint's"
    return None
