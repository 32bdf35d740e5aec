"""`alexnet predict`: a trained checkpoint's top-5 classes for image files, through the evaluation pipeline.

Each JPEG or PNG goes through the same DALI graph as `alexnet evaluate` (pipelines/eval.py): decode, shorter side
to 256, the central 227 crop (or the ten crops of paper §4.1 with `ten_crop`), minus the mean the run trained
with. So predict and evaluate give the same probabilities for the same image (tests/test_usability.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from alexdata import host
from alexdata.dataset import IMAGE_EXTS, DataError, Split
from alexmodel.checkpoint import load_run, model_from_checkpoint, stats_from_checkpoint
from alexmodel.config import resolve_device
from alexmodel.loop import evaluate_views
from pipelines.config import AugmentConfig


def predict(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    *,
    ten_crop: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
    top: int = 5,
) -> list[dict]:
    """[{"image": path, "top": [(wnid, probability), ...]}] in the order of `images`, the `top` most likely."""
    from alexdata.loader import Loader

    device = resolve_device(device)
    paths = [str(Path(p)) for p in images]
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file")
        if Path(p).suffix.lower() not in IMAGE_EXTS:
            raise DataError(f"{p}: not a .JPEG/.jpg/.png file")
    if not paths:
        raise DataError("no images given")
    saved = load_run(checkpoint)
    classes = saved["config"]["classes"]
    index = torch.cuda.current_device() if device == "gpu" else 0
    model = model_from_checkpoint(saved, host.torch_device(device, index))
    stats, aug = stats_from_checkpoint(saved), AugmentConfig(**saved["config"]["data"]["aug"])
    split = Split("files", tuple(classes), len(paths), files=tuple(paths), labels=(0,) * len(paths))
    loader = Loader(
        "(images)",
        split="val",
        mode="tencrop" if ten_crop else "center",
        opened=split,
        stats=stats,
        aug=aug,
        batch_size=min(batch_size, len(paths)),
        device=device,
        device_id=index,
        threads=threads,
    )
    probs = []
    with torch.no_grad():
        for x, _ in loader:
            probs.append(evaluate_views(model, x).exp().cpu())  # (B, classes): the mean softmax of the views
    p = torch.cat(probs)
    k = min(top, p.shape[1])
    values, idx = p.topk(k, dim=1)
    return [
        {"image": path, "top": [(classes[int(i)], float(v)) for v, i in zip(values[n], idx[n])]}
        for n, path in enumerate(paths)
    ]
