"""The loader: DALI pipelines wrapped as an iterable of `(images, labels)` torch tensors.

    loader = Loader("data/", split="train", mode="train", batch_size=128, device="gpu")
    for epoch in range(90):
        for images, labels in loader:      # one pass over this rank's shard of the split
            ...
    state = loader.state_dict()             # mid-epoch too; Loader(...).load_state_dict(state) resumes exactly

- images: (B, 3, 227, 227) float32 (float16/bfloat16 options), or (B, 10, 3, 227, 227) in mode "tencrop";
  labels: (B,) int64; both on the pipeline's device (CPU, or the GPU `device_id`).
- `len(loader)` is the number of batches in one epoch on this rank. Across `num_shards` ranks an epoch reads each
  image exactly once: shards are disjoint, and DALI pads every shard to the same length (so all ranks run the
  same number of steps) while the iterator strips the padding. The last batch of an epoch is therefore
  partial (smaller than `batch_size`) when the shard size is not a multiple of it; on a rank whose shard is one
  image shorter it can even be empty (0 images), so a data-parallel consumer must accept empty batches.
- `seed` drives the augmentation (give each rank its own); `shuffle_seed` the epoch order (the same on every
  rank, or the shards stop being disjoint).
- Corrupt data: `prepare` decodes every image before writing it, so a sample that fails to decode means the
  files changed after `prepare`. Policy: stop with a `DataError` naming the shard (and sample where DALI tells
  it); DALI cannot skip a sample inside a running pipeline. Re-run `alexnet prepare` into a fresh directory.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from alexdata.dataset import DataError, Split, open_split
from pipelines.common import READER, labels_from_digits
from pipelines.config import AugmentConfig, PipelineStats

MODES = ("train", "center", "tencrop")


def resolve_stats(stats, data) -> PipelineStats:
    """PipelineStats from an object, a dict in stats.json's format, or a stats.json path (default DATA/stats.json)."""
    if isinstance(stats, PipelineStats):
        return stats
    if isinstance(stats, dict):
        return PipelineStats.from_dict(stats)
    from alexdata.stats import load_stats

    path = Path(stats) if stats is not None else Path(data) / "stats.json"
    if not path.is_file():
        raise DataError(f"{path}: no stats file (run `alexnet stats {data}` first, or pass --stats)")
    try:
        return PipelineStats.from_dict(load_stats(path))
    except DataError:
        raise
    except Exception as e:  # a malformed file: one line naming it
        raise DataError(f"{path}: not a valid stats file ({e})") from None


def default_threads() -> int:
    """The cores this process may use, shared among the ranks on this node (torchrun sets LOCAL_WORLD_SIZE):
    every rank's pipeline with all cores would oversubscribe them LOCAL_WORLD_SIZE times."""
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class Loader:
    def __init__(self, data: str | os.PathLike, *, split: str = "train", mode: str = "train", stats=None,
                 aug: AugmentConfig = AugmentConfig(), batch_size: int = 128, device: str = "cpu",
                 device_id: int = 0, threads: int | None = None, seed: int = 0, shuffle_seed: int = 0,
                 shard_id: int = 0, num_shards: int = 1, prefetch: int = 2, hw_decoder_load: float = 0.65,
                 opened: Split | None = None):
        """`opened`: what `open_split(data, split)` returned, when the caller has it already (on a raw ImageNet
        tree that call lists 1.28 M files)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("device 'gpu' asked for, but torch sees no CUDA GPU")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"need 0 <= shard_id < num_shards, got {shard_id}/{num_shards}")
        if aug.dtype == "float16" and device == "cpu":
            raise ValueError("float16 output is for the GPU; use float32 on the CPU")
        self.split = opened if opened is not None else open_split(data, split)
        self._where = f"{data} ({split} split)"
        if self.split.images < num_shards:
            raise ValueError(f"{self.split.images} images cannot be split over {num_shards} shards")
        self.stats = resolve_stats(stats, data)
        self.mode, self.aug, self.device = mode, aug, device
        self.batch_size, self.seed, self.shard_id, self.num_shards = batch_size, seed, shard_id, num_shards
        self.shuffle_seed = shuffle_seed
        self._kw = dict(batch_size=batch_size, num_threads=threads or default_threads(),
                        device=device, device_id=device_id, seed=seed, shuffle_seed=shuffle_seed, shard_id=shard_id,
                        num_shards=num_shards,
                        prefetch=prefetch, hw_decoder_load=hw_decoder_load)
        self._build(None)

    def _build(self, checkpoint: str | None) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from pipelines.eval import build_eval_pipeline
        from pipelines.train import build_train_pipeline

        if self.mode == "train":
            pipe = build_train_pipeline(self.split, self.stats, self.aug, checkpoint=checkpoint, **self._kw)
        else:
            pipe = build_eval_pipeline(self.split, self.stats, self.aug, ten_crop=self.mode == "tencrop",
                                       checkpoint=checkpoint, **self._kw)
        try:
            self._it = DALIGenericIterator([pipe], ["images", "labels"], reader_name=READER,
                                           last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        except RuntimeError as e:  # the first batch is prepared at construction
            raise self._data_error(e) from None

    def __len__(self) -> int:
        return len(self._it)

    def __iter__(self):
        it = iter(self._it)
        while True:
            try:
                out = next(it)
            except StopIteration:
                return
            except RuntimeError as e:
                raise self._data_error(e) from None
            images = out[0]["images"]
            try:
                labels = labels_from_digits(out[0]["labels"])  # on the CPU, as DALI gives them
                if labels.numel() and int(labels.max()) >= len(self.split.classes):
                    raise ValueError(f"label {int(labels.max())} is past the {len(self.split.classes)} classes")
            except ValueError as e:
                raise DataError(f"{self._where}: {e} (re-run `alexnet prepare` into a fresh directory)") from None
            labels = labels.to(images.device)  # 8 bytes an image: a synchronous copy costs nothing
            if self.aug.dtype == "bfloat16":
                images = images.to(torch.bfloat16)
            yield images, labels

    def _data_error(self, e: RuntimeError) -> DataError:
        """DALI's multi-line error -> one line: the sample (from DALI's message, when it names one) and why."""
        msg = str(e)
        detail = msg.split("encountered:", 1)[-1]
        reason = next((ln.strip() for ln in detail.splitlines() if ln.strip()), "unknown error")
        where = re.search(r"(\S+\.(?:tar|idx|jpe?g|JPE?G|png|PNG)(?::\S+)?)", detail)
        place = where.group(1) if where else f"the {self.split.kind} of this split"
        fix = ("re-run `alexnet prepare` into a fresh directory" if self.split.prepared
               else "remove or repair it, or use `alexnet prepare`, which lists and skips unreadable files")
        return DataError(f"unreadable sample in {place}: {reason[:200]} ({fix}); this loader can not continue")

    def state_dict(self) -> dict:
        """The pipeline's position (reader, random generators) after the batches handed out so far."""
        return {"dali": self._it.checkpoints()[0], "mode": self.mode, "seed": self.seed,
                "shuffle_seed": self.shuffle_seed,
                "shard": [self.shard_id, self.num_shards], "batch_size": self.batch_size, "aug": asdict(self.aug)}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for k in ("mode", "seed", "shuffle_seed", "shard", "batch_size", "aug"):
            if state.get(k) != mine[k]:
                raise ValueError(f"loader state is for {k}={state.get(k)!r}, this loader has {mine[k]!r}")
        self._build(state["dali"])
