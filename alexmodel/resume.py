"""What a resume takes from a checkpoint and what it refuses: the checkpoint a start continues from, the statistics
it keeps, the config and data checks, and the state it loads back (weights, optimizer, schedule, scaler, then each
rank's loader position and RNGs, or the next epoch boundary where those do not carry over).

train.py calls these in this order; the checkpoint file itself is written and read in checkpoint.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from alexdata.errors import TrainError
from alexmodel import checkpoint, runlog
from alexmodel.checkpoint import stats_from_checkpoint
from alexmodel.config import COMPAT_KEYS, DataConfig
from alexmodel.distributed import Dist
from alexmodel.loop import EpochMeter
from pipelines.config import PipelineStats


def saved_run(out: str, resume: bool | str, rank: int) -> dict | None:
    """The checkpoint a run continues from, None for a fresh start. resume "auto": continue when `out` holds a
    run; a fresh start into a directory that holds one is refused."""
    if resume == "auto":
        resume = checkpoint.holds_run(out)
    if not resume and checkpoint.holds_run(out):
        raise TrainError(
            f"{out} already holds a run ({checkpoint.CHECKPOINT}); pass --resume to continue "
            f"it, or choose another --out"
        )
    return checkpoint.load_latest(Path(out), rank) if resume else None


def _same_image(a: PipelineStats, b: PipelineStats) -> bool:
    x, y = a.mean_image_255, b.mean_image_255
    return (x is None) == (y is None) and (x is None or np.array_equal(x, y))


def run_stats(data: DataConfig, saved: dict | None, rank: int, train_images: int | None) -> PipelineStats:
    """The statistics the run normalises with: a resume keeps those it trained with unless --stats names others.
    A file computed over another number of images than the train split's `train_images` is named in one line
    (None: not compared)."""
    from alexdata.loader import resolve_stats
    from alexdata.statsfile import other_data_notice

    if saved is not None and data.stats is None:
        return stats_from_checkpoint(saved)
    stats = resolve_stats(data.stats, data.data)  # None: DATA/stats.json
    if rank == 0 and train_images is not None and isinstance(data.stats, (str, os.PathLike, type(None))):
        path = data.stats if data.stats is not None else os.path.join(data.data, "stats.json")
        if line := other_data_notice(path, train_images):
            print(line, file=sys.stderr)
    old = None if saved is None else stats_from_checkpoint(saved)
    if old is not None and rank == 0 and (stats != old or not _same_image(stats, old)):
        print(f"train: using --stats {data.stats}, not the statistics the run trained with", file=sys.stderr)
    return stats


def check_compatible(saved: dict, config: dict, *, ckpt_path: Path, run_dir: Path, data: str) -> bool:
    """Refuses a checkpoint whose config differs from `config` in COMPAT_KEYS, or whose position inside an epoch
    points into train files that have changed since. Returns whether the train files changed."""
    why = checkpoint.incompatibility(saved["config"], config, COMPAT_KEYS)
    if why:
        raise TrainError(
            f"cannot resume {ckpt_path}: {why}; resume with the run's options "
            f"(see {run_dir / runlog.CONFIG}) or train into a new --out"
        )
    files_changed = saved["config"]["data_fingerprint"] != config["data_fingerprint"]
    if files_changed and saved["meter"]:  # a loader position inside an epoch fits only the files it was on
        raise TrainError(
            f"cannot resume {ckpt_path} mid-epoch on {data}: its train files are not the ones the "
            f"run was reading (prepared again with another --shard-size or --seed?), so the saved position would "
            f"point at other samples; resume on the data the run was trained on"
        )
    return files_changed


def load_state(saved: dict, *, net, optimizer, plateau, scaler, lr: float) -> None:
    """Loads the weights, optimizer, plateau schedule and loss scaler; `lr`: the run's initial lr now."""
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    for group in optimizer.param_groups:  # the saved groups carry the run's old fused flag: speed only
        group["fused"] = optimizer.defaults["fused"]
    if lr != saved["config"]["optim"]["lr"]:  # a new initial lr: keep the plateau cuts made so far
        for group in optimizer.param_groups:
            group["lr"] *= lr / saved["config"]["optim"]["lr"]
    plateau.load_state_dict(saved["plateau"])
    if saved["scaler"]:  # a run without fp16 saved a disabled scaler's empty state
        scaler.load_state_dict(saved["scaler"])


def restore_loader(saved: dict, loader, d: Dist, *, files_changed: bool, meter: EpochMeter | None) -> bool:
    """Puts this rank's loader and RNGs where the checkpoint left them. False (rank 0 says why) when they do not
    carry over and the run goes on from the next epoch boundary with fresh loaders."""
    from alexdata.loader import StaleLoaderState

    epoch = saved["epoch"]
    saved_world = len(saved["ranks"])
    why = f"a run checkpointed on {saved_world}"
    if files_changed:
        why = "a run whose train data changed since its checkpoint (prepared again?)"
    if saved_world == d.world and not files_changed:
        try:
            loader.load_state_dict(saved["ranks"][d.rank]["loader"])
            checkpoint.set_rng_state(saved["ranks"][d.rank]["rng"])  # last: building the model drew from them
            return True
        except StaleLoaderState as e:  # the same on every rank: the same code reads the same checkpoint
            why = f"a run whose loader position does not load here ({e})"
    # Another number of ranks (or a loader position from another version): each rank's shard of the epoch is
    # another set of samples, so the positions do not carry over; the run goes on from the next epoch
    # boundary with fresh loaders.
    if d.rank == 0:
        skipped = (
            f"; the rest of epoch {epoch + 1} is skipped ({loader.split.images - meter.images}"
            f" of {loader.split.images} samples) and the epoch evaluated as it stands"
            if meter
            else ""
        )
        print(
            f"train: resuming on {d.world} rank(s) {why}, from the next epoch boundary{skipped}",
            file=sys.stderr,
        )
    return False


def refuse_fewer_epochs(saved: dict, epochs: int) -> None:
    """A resume must leave epochs to train: --epochs below those done (or equal, with one in progress) is refused.
    A cosine run's epochs may grow, not shrink: its lr curve and warmup are laid out over them (and a warmup
    capped to half of fewer epochs would no longer match the checkpoint's, locking every later resume out)."""
    done = saved["epoch"]
    if epochs < done or (epochs == done and saved["meter"]):
        raise TrainError(
            f"--epochs {epochs}: the run has done {done} epoch(s) "
            f"{'and part of the next ' if saved['meter'] else ''}already; give more epochs"
        )
    o = saved["config"]["optim"]
    if o.get("schedule") == "cosine" and epochs < o["epochs"]:
        raise TrainError(
            f"--epochs {epochs}: this cosine run is set to {o['epochs']} epochs, and a resume may add epochs, not "
            f"take them away (its lr schedule and warmup are laid out over them); give --epochs {o['epochs']} or more"
        )
