"""The loader: DALI pipelines wrapped as an iterable of `(images, labels)` torch tensors.

    loader = Loader("data/", split="train", mode="train", batch_size=128, device="gpu")
    for epoch in range(90):
        for images, labels in loader:      # one pass over this rank's shard of the split
            ...
    state = loader.state_dict()             # mid-epoch too; Loader(...).load_state_dict(state) resumes exactly

- images: (B, 3, 227, 227) float32 (float16/bfloat16 options), or (B, 10, 3, 227, 227) in mode "tencrop";
  labels: (B,) int64; both on the pipeline's device (CPU, or the GPU `device_id`). layout="NHWC": the same
  values in channels_last memory (DALI writes HWC; the NCHW view of it costs no copy), for a channels_last model.
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
from dataclasses import asdict, replace
from pathlib import Path

import torch

from alexdata import host
from alexdata.dataset import open_split
from alexdata.errors import ConfigError, DataError
from alexdata.host import cores_per_rank as default_threads  # the name it had here
from pipelines.common import READER, labels_from_digits, mean_image_problem
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split

MODES = ("train", "center", "tencrop")
LAYOUTS = {"NCHW": "CHW", "NHWC": "HWC"}  # the batch's memory layout -> crop_mirror_normalize's output_layout


def resolve_stats(stats, data) -> PipelineStats:
    """PipelineStats from an object, a dict in stats.json's format, or a stats.json path (default DATA/stats.json)."""
    if isinstance(stats, PipelineStats):
        return stats
    if isinstance(stats, dict):
        return PipelineStats.from_dict(stats)
    from alexdata.statsfile import load_stats

    path = Path(stats) if stats is not None else Path(data) / "stats.json"
    if not path.is_file():
        raise DataError(f"{path}: no stats file (run `alexnet stats {data}` first, or pass --stats)")
    try:
        return PipelineStats.from_dict(load_stats(path))
    except DataError:
        raise
    except Exception as e:  # a malformed file: one line naming it
        raise DataError(f"{path}: not a valid stats file ({e})") from None


def run_spec(**kw) -> RunSpec:
    """RunSpec(**kw), a value out of range raised as ConfigError (pipelines/ knows no project errors)."""
    try:
        return RunSpec(**kw)
    except ValueError as e:
        raise ConfigError(str(e)) from None


class StaleLoaderState(ValueError):
    """A saved loader position that this version's pipeline cannot take up; the loader starts afresh."""


class Loader:
    def __init__(
        self,
        data: str | os.PathLike,
        *,
        split: str = "train",
        mode: str = "train",
        stats=None,
        aug: AugmentConfig = AugmentConfig(),
        batch_size: int = 128,
        device: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        seed: int = 0,
        shuffle_seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        prefetch: int = 2,
        hw_decoder_load: float = 0.65,
        hybrid_huffman_threshold: int = 1_000_000,
        preallocate: bool = False,
        layout: str = "NCHW",
        drop_last: bool = False,
        opened: Split | None = None,
    ):
        """`opened`: what `open_split(data, split)` returned, when the caller has it already (on a raw ImageNet
        tree that call lists 1.28 M files). prefetch: batches DALI prepares ahead. hw_decoder_load,
        hybrid_huffman_threshold, preallocate (hints from the largest image manifest.json records): the GPU
        decoder's tuning, see pipelines/common.py `decoder_kw`; the CPU decoder ignores them. drop_last: hand out
        only full batches, the same number on every rank (split images // (num_shards * batch_size)); the rest of
        each epoch is read and dropped, other images each epoch as the order changes (torch.compile'd steps then
        see one shape)."""
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be NCHW or NHWC, got {layout!r}")
        self.spec = run_spec(
            batch_size=batch_size,
            threads=threads or default_threads(),
            device=device,
            device_id=host.dali_device_id(device, device_id),
            seed=seed,
            shuffle_seed=shuffle_seed,
            shard_id=shard_id,
            num_shards=num_shards,
            prefetch=prefetch,
            hw_decoder_load=hw_decoder_load,
            hybrid_huffman_threshold=hybrid_huffman_threshold,
        )
        if device == "gpu" and not host.has_gpu():
            raise ConfigError("device 'gpu' asked for, but torch sees no CUDA GPU")
        if aug.dtype == "float16" and device == "cpu":
            raise ConfigError("float16 output is for the GPU; use float32 on the CPU")
        self.split = opened if opened is not None else open_split(data, split)
        if preallocate:
            if self.split.max_hw is None:
                raise ConfigError(
                    f"preallocate: {data} records no largest image size (a raw tree, or a manifest.json "
                    f"written before prepare recorded it); re-run `alexnet prepare`, or leave it off"
                )
            self.spec = replace(self.spec, preallocate_hw=self.split.max_hw)
        self._where = f"{data} ({split} split)"
        if self.split.images < num_shards:
            raise ConfigError(f"{self.split.images} images cannot be split over {num_shards} shards")
        self.drop_last, self._full = drop_last, self.split.images // (num_shards * batch_size)
        if drop_last and self._full == 0:
            raise ConfigError(
                f"drop_last: {self.split.images} images make no full batch of {batch_size} on each of "
                f"{num_shards} shards"
            )
        self._served = 0  # batches handed out in the epoch in progress
        self.stats = resolve_stats(stats, data)
        problem = mean_image_problem(self.stats, aug)
        if problem:
            raise ConfigError(problem)
        self.mode, self.aug, self.layout = mode, aug, layout
        self._build(None)

    @property
    def batch_size(self) -> int:
        return self.spec.batch_size

    @property
    def device(self) -> str:
        return self.spec.device

    def _build(self, checkpoint: str | None) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from pipelines.eval import build_eval_pipeline
        from pipelines.train import build_train_pipeline

        out = dict(output_layout=LAYOUTS[self.layout], checkpoint=checkpoint)
        if self.mode == "train":
            pipe = build_train_pipeline(self.split, self.stats, self.aug, self.spec, **out)
        else:
            pipe = build_eval_pipeline(
                self.split, self.stats, self.aug, self.spec, ten_crop=self.mode == "tencrop", **out
            )
        try:
            self._it = DALIGenericIterator(
                [pipe],
                ["images", "labels"],
                reader_name=READER,
                last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=True,
            )
        except RuntimeError as e:  # the first batch is prepared at construction
            raise self._data_error(e) from None

    def __len__(self) -> int:
        return self._full if self.drop_last else len(self._it)

    def __iter__(self):
        it = iter(self._it)
        while True:
            try:
                out = next(it)
            except StopIteration:
                self._served = 0
                return
            except RuntimeError as e:
                raise self._data_error(e) from None
            if self.drop_last and self._served == self._full:
                continue  # the epoch's last, partial batches: read (so the next epoch starts right), not handed out
            images = out[0]["images"]
            if self.layout == "NHWC":  # (..., H, W, C) -> an NCHW view, channels_last in memory: no copy
                images = images.movedim(-1, -3)
            try:
                labels = labels_from_digits(out[0]["labels"])  # on the CPU, as DALI gives them
                if labels.numel() and int(labels.max()) >= len(self.split.classes):
                    raise ValueError(f"label {int(labels.max())} is past the {len(self.split.classes)} classes")
            except ValueError as e:
                raise DataError(f"{self._where}: {e} (re-run `alexnet prepare` into a fresh directory)") from None
            if images.is_cuda:
                # From pinned memory, non-blocking: a copy from pageable memory waits for the stream to drain,
                # which would also bill the previous step's backward to data_wait_frac. (The images are DALI's
                # own buffers, handed over through DLPack without a copy; DALI frees a released one only after a
                # device synchronization, dali/pipeline/data/dltensor.h `EnqueueForDeletion`, so kernels still
                # queued on a batch the consumer dropped read valid memory.)
                labels = labels.pin_memory().to(images.device, non_blocking=True)
            if self.aug.dtype == "bfloat16":
                images = images.to(torch.bfloat16)
            self._served += 1
            yield images, labels

    def _data_error(self, e: RuntimeError) -> DataError:
        """DALI's multi-line error -> one line: the sample (from DALI's message, when it names one) and why."""
        msg = str(e)
        detail = msg.split("encountered:", 1)[-1]
        reason = next((ln.strip() for ln in detail.splitlines() if ln.strip()), "unknown error")
        where = re.search(r"(\S+\.(?:tar|idx|jpe?g|JPE?G|png|PNG)(?::\S+)?)", detail)
        place = where.group(1) if where else f"the {self.split.kind} of this split"
        fix = (
            "re-run `alexnet prepare` into a fresh directory"
            if self.split.prepared
            else "remove or repair it, or use `alexnet prepare`, which lists and skips unreadable files"
        )
        return DataError(f"unreadable sample in {place}: {reason[:200]} ({fix}); this loader can not continue")

    def state_dict(self) -> dict:
        """The pipeline's position (reader, random generators) after the batches handed out so far."""
        spec = self.spec
        return {
            "dali": self._it.checkpoints()[0],
            "mode": self.mode,
            "seed": spec.seed,
            "shuffle_seed": spec.shuffle_seed,
            "shard": [spec.shard_id, spec.num_shards],
            "batch_size": spec.batch_size,
            "aug": asdict(self.aug),
            "served": self._served,
        }  # drop_last is not compared: it changes what is handed out, not the reader

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        if isinstance(state.get("aug"), dict):  # AugmentConfig fields added since it was saved: their defaults
            state = {**state, "aug": asdict(AugmentConfig(**state["aug"]))}
        for k in ("mode", "seed", "shuffle_seed", "shard", "batch_size", "aug"):
            if state.get(k) != mine[k]:
                raise ConfigError(f"loader state is for {k}={state.get(k)!r}, this loader has {mine[k]!r}")
        try:
            self._build(state["dali"])
        except DataError:  # DALI names the graph's operators: a state saved by another version of it won't load
            self._build(None)  # a real data error raises again here
            raise StaleLoaderState(
                "the loader's saved position comes from another version of the pipeline (saved before an upgrade?)"
            ) from None
        self._served = state.get("served", 0)
