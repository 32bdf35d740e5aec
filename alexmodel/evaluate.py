"""`alexnet evaluate`: a trained checkpoint's top-1/top-5 on a data set's val split, centre crop or ten-crop
(paper §4.1), through the same loader and `loop.evaluate` as the trainer's epoch-end evaluation."""

from __future__ import annotations

import os

from alexdata import host
from alexdata.dataset import open_split
from alexdata.errors import TrainError
from alexdata.verify import check_raw_once
from alexmodel.checkpoint import check_classes, load_run, model_from_checkpoint, stats_from_checkpoint
from alexmodel.config import PRECISIONS, resolve_device
from alexmodel.loop import evaluate
from pipelines.config import AugmentConfig


def evaluate_checkpoint(
    data: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    ten_crop: bool = False,
    device: str = "auto",
    batch_size: int = 128,
    threads: int | None = None,
    stats: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> dict:
    """Top-1/top-5 of a trained checkpoint (a file, or a run directory) on DATA's val split, centre crop or
    ten-crop (paper §4.1): {"loss", "top1", "top5", "images", "ten_crop", "checkpoint", "epoch", "step"}.

    The mean subtracted is the one the run trained with (kept in the checkpoint) unless `stats` names a file."""
    import torch

    from alexdata.loader import Loader, resolve_stats

    device = resolve_device(device)
    if precision not in PRECISIONS or (precision == "fp16" and device != "gpu"):
        raise TrainError(f"--precision {precision}: expected fp32 or bf16 (fp16 on a GPU)")
    saved = load_run(checkpoint)
    cfg = saved["config"]
    val = open_split(data, "val")
    check_classes(cfg, val.classes, checkpoint, data)
    check_raw_once(data, val, "val", threads=threads, gather=lambda mine: [mine])  # DALI would stop at a bad file
    pstats = resolve_stats(stats, data) if stats else stats_from_checkpoint(saved)
    index = torch.cuda.current_device() if device == "gpu" else 0
    net = model_from_checkpoint(saved, host.torch_device(device, index))
    loader = Loader(
        data,
        split="val",
        mode="tencrop" if ten_crop else "center",
        opened=val,
        stats=pstats,
        aug=AugmentConfig(**cfg["data"]["aug"]),
        batch_size=batch_size,
        device=device,
        device_id=index,
        threads=threads,
    )
    out = evaluate(net, loader, precision=precision)
    return {**out, "ten_crop": ten_crop, "checkpoint": str(checkpoint), "epoch": saved["epoch"], "step": saved["step"]}
