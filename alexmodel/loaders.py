"""The data a run reads: its splits, checked against the options before anything is built (the batch over the
ranks, a val split where validation needs one, a raw tree's unreadable files, a batch larger than the train
split); the train and val loaders over them; and which raw data a prepared directory came from, for the record.

A refusal here is one line at the start; the same problem found by DALI would stop the run mid-epoch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from alexdata.dataset import check_images, has_split, image_problems, open_split
from alexdata.errors import DataError, TrainError
from alexdata.verify import check_raw_once, verify_once
from alexmodel import distributed
from alexmodel.config import DataConfig, OptimConfig, RunConfig, small_data_batch
from alexmodel.distributed import Dist
from pipelines.config import PipelineStats


def open_splits(data: DataConfig, optim: OptimConfig, *, validate: bool, d: Dist) -> dict:
    """{"train": Split, "val": Split (when `validate`)} of `data.data`, or a TrainError naming what does not fit
    (the same on every rank of `d`)."""
    world = d.world
    gather = lambda mine: distributed.gather(mine, d)  # noqa: E731  (every rank's list)
    if optim.batch_size % world:
        raise TrainError(
            f"--batch-size {optim.batch_size} does not split over {world} ranks; use a multiple of {world}"
        )
    splits = {"train": open_split(data.data, "train")}
    if data.verify and splits["train"].prepared:  # one rank per node hashes its node's files (a copy on local
        problems = []  # disk each), once per change of them; every rank stops on a problem any node found
        if d.local_rank == 0:
            try:
                verify_once(data.data, progress=sys.stderr.isatty())
            except DataError as e:
                problems = [str(e)]
        problems = [p for ps in distributed.gather(problems, d) for p in ps]
        if problems:
            raise DataError(problems[0])
    if validate:  # val now: the schedule needs its error
        if not has_split(data.data, "val"):
            raise TrainError(
                f"{data.data} has no val split: give data with one, or train without validation with --no-val "
                f"(train metrics only; with --recipe modern, whose cosine schedule needs no val error)"
            )
        splits["val"] = open_split(data.data, "val")
    elif optim.schedule == "plateau":
        raise TrainError(
            "--no-val: the plateau schedule (--recipe paper) cuts the lr when the val error stops improving; "
            "use --recipe modern (a cosine schedule), or data with a val split"
        )
    for name, split in splits.items():  # a raw tree's bad file would stop DALI mid-epoch: refuse it now
        if data.verify:  # strictly the first time: a damaged JPEG decodes as grey
            check_raw_once(data.data, split, name, threads=data.threads, rank=d.rank, world=world, gather=gather)
        else:
            mine = image_problems(split, data.threads, d.rank, world)  # each rank reads its share of the files
            check_images(data.data, split, problems=[p for ps in gather(mine) for p in ps])
    images = splits["train"].images
    if optim.batch_size > images:
        raise TrainError(
            f"--batch-size {optim.batch_size} is more than the {images} images of {data.data}'s train split; "
            f"on data this small try --batch-size {small_data_batch(images)} (README: Small data)"
        )
    return splits


def make_loaders(
    data: DataConfig, run: RunConfig, splits: dict, *, stats: PipelineStats, batch_size: int, device_id: int, d: Dist
) -> tuple:
    """(train loader, val loader or None) of this rank over `splits` (open_splits); batch_size: this rank's."""
    from alexdata.loader import Loader

    kw = dict(
        stats=stats,
        aug=data.aug,
        batch_size=batch_size,
        device=run.device,
        device_id=device_id,
        threads=data.threads,
        seed=run.seed + d.rank,
        shuffle_seed=run.seed,
        shard_id=d.rank,
        num_shards=d.world,
        layout="NHWC" if run.channels_last else "NCHW",
    )  # channels_last batches: the step copies none
    # torch.compile: only full batches, so the compiled step sees one shape (a partial last batch, or DDP's
    # empty one, would recompile it)
    train_loader = Loader(
        data.data,
        split="train",
        mode="train",
        opened=splits["train"],
        drop_last=run.compile,
        echo=data.echo,
        tuning=data.tuning,
        **kw,
    )
    val_loader = None
    if run.validate:  # the decoded-image cache is the train split's: val's images are decoded once an epoch anyway
        val_tuning = replace(data.tuning, gpu_cache_gb=0.0)
        val_loader = Loader(data.data, split="val", mode="center", opened=splits["val"], tuning=val_tuning, **kw)
    return train_loader, val_loader


def data_inputs(data: str) -> str | None:
    """The prepare inputs' fingerprint (.prepare/params.json), recorded with the run: which raw data it came from."""
    p = Path(data) / ".prepare" / "params.json"
    try:
        return json.loads(p.read_text()).get("inputs")
    except (OSError, ValueError):
        return None
