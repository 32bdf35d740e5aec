"""The loader: DALI pipelines wrapped as an iterable of `(images, labels)` torch tensors.

    loader = Loader("data/", split="train", mode="train", batch_size=128, device="gpu")
    for epoch in range(90):
        for images, labels in loader:      # one pass over this rank's shard of the split
            ...
    state = loader.state_dict()             # mid-epoch too; Loader(...).load_state_dict(state) resumes exactly

- images: (B, 3, 227, 227) float32, or (B, 10, 3, 227, 227) in mode "tencrop"; AugmentConfig's `crop` sets the
  size, its `dtype` the type: float16 (DALI's output), bfloat16 (cast here), or uint8, the pixels as decoded
  without mean, std or lighting, for a model that normalises on the GPU. labels: (B,) int64; both on the
  pipeline's device (CPU, or the GPU `device_id`). layout="NHWC": the same values in channels_last memory (DALI
  writes HWC; the NCHW view of it costs no copy), for a channels_last model.
- aug: an AugmentConfig or a dict of its fields; augment="inception" trains on torchvision's RandomResizedCrop
  (pipelines/inception.py) and evaluates at shorter side round(crop / 0.875), for models other than AlexNet.
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
import shlex
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from alexdata import host
from alexdata.dataset import open_split
from alexdata.echo import Echo, image_key
from alexdata.errors import ConfigError, DataError, StatsError, StatsMissing, dali_reason
from alexdata.host import cores_per_rank as default_threads  # the name it had here
from pipelines.common import READER, labels_from_digits, lighting_problem, mean_image_problem
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split, Tuning

MODES = ("train", "center", "tencrop")
LAYOUTS = {"NCHW": "CHW", "NHWC": "HWC"}  # the batch's memory layout -> crop_mirror_normalize's output_layout


def resolve_stats(stats, data) -> PipelineStats:
    """PipelineStats from an object, a dict in stats.json's format, or a stats.json path (default DATA/stats.json)."""
    if isinstance(stats, PipelineStats):
        return stats
    if isinstance(stats, dict):
        try:
            return PipelineStats.from_dict(stats)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"stats: a dict needs 'mean' and 'std' (0-255, 3 each), optionally 'eigval' (3) and 'eigvec' (3x3) "
                f"for PCA lighting; {type(e).__name__}: {e}"
            ) from None
    from alexdata.statsfile import load_stats

    path = Path(stats) if stats is not None else Path(data) / "stats.json"
    if not path.is_file() and stats is not None:
        raise StatsError(f"{path}: no stats file there")
    if not path.is_file():
        raise StatsMissing(f"{path}: no stats file; run `alexnet stats {data}` to write it")
    try:
        return PipelineStats.from_dict(load_stats(path))
    except DataError:
        raise
    except Exception as e:  # a malformed file: one line naming it
        raise DataError(f"{path}: not a valid stats file ({e})") from None


def torch_style_device(device, device_id: int) -> tuple[str, int]:
    """("cpu" | "gpu", GPU index) from what a torch user types too: "cuda", "cuda:1", a torch.device; "cpu" and
    "gpu" as they are. ConfigError for anything else."""
    text = str(device)
    if text in ("cpu", "gpu"):
        return text, device_id
    if text == "cuda":
        return "gpu", device_id
    if text.startswith("cuda:") and text[5:].isdigit():
        return "gpu", int(text[5:])
    raise ConfigError(f"device must be 'cpu', 'gpu', 'cuda' or 'cuda:N', got {device!r}")


def augment_config(aug) -> AugmentConfig:
    """An AugmentConfig from itself or a dict of its fields; a bad field or value raised as ConfigError."""
    if isinstance(aug, AugmentConfig):
        return aug
    if not isinstance(aug, dict):
        raise ConfigError(f"aug must be an AugmentConfig or a dict of its fields, got {type(aug).__name__}")
    unknown = sorted(set(aug) - {f.name for f in fields(AugmentConfig)})
    if unknown:
        raise ConfigError(
            f"aug: unknown field {unknown[0]!r}; AugmentConfig has {', '.join(f.name for f in fields(AugmentConfig))}"
        )
    try:
        return AugmentConfig(**aug)
    except ValueError as e:
        raise ConfigError(f"aug: {e}") from None


def run_spec(**kw) -> RunSpec:
    """RunSpec(**kw), a value out of range raised as ConfigError (pipelines/ knows no project errors)."""
    try:
        return RunSpec(**kw)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def tuning_of(tuning: Tuning | dict | None, knobs: dict) -> Tuning:
    """`tuning` (a Tuning, a dict of its fields or None: the defaults) with `knobs` by field name on top;
    ConfigError with one line for a name that is no knob or a value out of range."""
    names = [f.name for f in fields(Tuning)]
    unknown = sorted(set(knobs) - set(names))
    if unknown:
        raise ConfigError(f"unknown Loader argument {unknown[0]!r}: a DALI knob is one of {', '.join(names)}")
    base = asdict(tuning) if isinstance(tuning, Tuning) else dict(tuning or {})
    try:
        return Tuning(**{**base, **knobs})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


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
        aug: AugmentConfig | dict = AugmentConfig(),
        batch_size: int = 128,
        device: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        seed: int = 0,
        shuffle_seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        preallocate: bool = False,
        layout: str = "NCHW",
        drop_last: bool = False,
        opened: Split | None = None,
        echo: int = 1,
        tuning: Tuning | None = None,
        **knobs,
    ):
        """`opened`: what `open_split(data, split)` returned, when the caller has it already (on a raw ImageNet
        tree that call lists 1.28 M files). preallocate: the GPU decoder's buffers allocated for the largest image
        manifest.json records (pipelines/common.py `decoder_kw`). drop_last: hand out only full batches, the same
        number on every rank (split images // (num_shards * batch_size)); the rest of each epoch is read and
        dropped, other images each epoch as the order changes (torch.compile'd steps then see one shape). echo:
        data echoing (alexdata/echo.py), mode "train" only: each decoded image handed out `echo` times,
        differently augmented, in different batches; an epoch reads each image once and gives `echo` x the
        batches. tuning, and **knobs by field name on top of it: DALI's speed knobs (pipelines/config.py
        `Tuning`: prefetch, hw_decoder_load, hybrid_huffman_threshold, gpu_cache_gb)."""
        device, device_id = torch_style_device(device, device_id)
        tuning = tuning_of(tuning, knobs)
        layout = layout.upper() if isinstance(layout, str) else layout
        if not (isinstance(echo, int) and echo >= 1):
            raise ConfigError(f"echo must be an int >= 1 (augmented copies of each decoded image), got {echo!r}")
        if echo > 1 and mode != "train":
            raise ConfigError(f"echo {echo}: data echoing is for training (mode 'train'), not mode {mode!r}")
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
            tuning=tuning,
        )
        if device == "gpu" and not host.has_gpu():
            raise ConfigError("device 'gpu' asked for, but torch sees no CUDA GPU")
        aug = augment_config(aug)
        if echo > 1 and aug.augment != "paper":
            raise ConfigError(f"echo {echo}: data echoing takes augment='paper', not {aug.augment!r}")
        if tuning.gpu_cache_gb and mode == "train" and aug.augment != "paper":
            raise ConfigError(
                f"gpu_cache_gb {tuning.gpu_cache_gb:g}: augment {aug.augment!r} decodes only each crop's window, "
                f"and DALI caches whole images only; use augment='paper'"
            )
        self.split = opened if opened is not None else open_split(data, split)
        if preallocate:
            if self.split.max_hw is None:
                raise ConfigError(
                    f"preallocate: {data} is a raw tree, which records no largest image size; use an "
                    f"`alexnet prepare` output, or leave it off"
                )
            self.spec = replace(self.spec, preallocate_hw=self.split.max_hw)
        self._data, self._where = str(data), f"{data} ({split} split)"
        if self.split.images < num_shards:
            raise ConfigError(f"{self.split.images} images cannot be split over {num_shards} shards")
        self.echo = Echo(echo, seed) if echo > 1 else None
        self.drop_last, self._full = drop_last, echo * (self.split.images // (num_shards * batch_size))
        if drop_last and self._full == 0:
            raise ConfigError(
                f"drop_last: {self.split.images} images make no full batch of {batch_size} on each of "
                f"{num_shards} shards"
            )
        self._served = 0  # batches handed out in the epoch in progress
        self._interrupted = False  # a pass was left before its end: `__iter__` finishes its epoch first
        self.stats = resolve_stats(stats, data)
        problem = mean_image_problem(self.stats, aug) or lighting_problem(self.stats, aug.pca_std)
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
        copies = self.echo.copies if self.echo else 1
        if self.mode == "train":
            pipe = build_train_pipeline(self.split, self.stats, self.aug, self.spec, echo=copies, **out)
        else:
            pipe = build_eval_pipeline(
                self.split, self.stats, self.aug, self.spec, ten_crop=self.mode == "tencrop", **out
            )
        try:
            self._it = DALIGenericIterator(
                [pipe],
                [image_key(c) for c in range(copies)] + ["labels"] if self.echo else ["images", "labels"],
                reader_name=READER,
                last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=True,
            )
        except RuntimeError as e:  # the first batch is prepared at construction
            raise self._data_error(e) from None

    def __len__(self) -> int:
        return self._full if self.drop_last else len(self._it) * (self.echo.copies if self.echo else 1)

    def __iter__(self):
        """One full pass: an epoch, or with a restored `state_dict` the rest of the saved one. A pass left before
        its end (`next(iter(loader))` to look at a batch, a `break`, a shorter partner in `zip`) has the rest of
        its epoch read and dropped here first, so the next pass still sees every image (DALI's iterator cannot be
        reset mid-epoch: it would go on where it stopped)."""
        if self._interrupted:
            if not self.echo or self.echo.drop():
                try:
                    for _ in self._it:  # the rest of the interrupted epoch; then DALI's auto_reset starts the next
                        pass
                except RuntimeError as e:
                    raise self._data_error(e) from None
            self._served = 0
        self._interrupted = True  # until this pass reaches its end
        it = iter(self._it)
        if self.echo:  # each DALI batch's copies, handed out in mixed batches
            it = self.echo.epoch(it, lambda: self._it.checkpoints()[0])
        while True:
            try:
                out = next(it)
            except StopIteration:
                self._served, self._interrupted = 0, False
                return
            except RuntimeError as e:
                raise self._data_error(e) from None
            if self.drop_last and (self._served == self._full or len(out[0]["labels"]) < self.batch_size):
                # the epoch's partial batches (with echo one per copy, inside the last group) and those past
                continue  # the full ones every rank has: read (so the next epoch starts right), not handed out
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
        """DALI's multi-line error -> one line: the sample, whole, when DALI names it (`dali_reason`), and why."""
        place, why = dali_reason(e)
        if self.split.prepared:  # prepare decoded every sample it stored: a shard changed after it was written
            fix = f"a shard changed since prepare wrote it: `alexnet verify {shlex.quote(self._data)}` names it"
        else:
            fix = "use `alexnet prepare`, which lists and skips unreadable files"
            fix = f"remove or repair it, or {fix}" if place else fix
        what = f"{place}: {why}" if place else f"in {self._where}: {why}"
        return DataError(f"unreadable sample {what} ({fix}); this loader can not continue")

    def state_dict(self) -> dict:
        """The pipeline's position (reader, random generators) after the batches handed out so far."""
        spec = self.spec
        dali, where = self.echo.position(lambda: self._it.checkpoints()[0]) if self.echo else (None, None)
        return {
            "dali": dali or self._it.checkpoints()[0],
            "mode": self.mode,
            "seed": spec.seed,
            "shuffle_seed": spec.shuffle_seed,
            "shard": [spec.shard_id, spec.num_shards],
            "batch_size": spec.batch_size,
            "aug": asdict(self.aug),
            "served": self._served,
            "echo": self.echo.copies if self.echo else 1,
            **({"echo_position": where} if where else {}),
        }  # drop_last is not compared: it changes what is handed out, not the reader

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("dali"), (bytes, str)):
            raise StaleLoaderState("the loader's saved position holds no DALI checkpoint (damaged?)")
        mine = self.state_dict()
        for k in ("mode", "seed", "shuffle_seed", "shard", "batch_size", "aug", "echo"):
            if state.get(k) != mine[k]:
                raise ConfigError(f"loader state is for {k}={state.get(k)!r}, this loader has {mine[k]!r}")
        try:
            self._build(state["dali"])
        except (DataError, ValueError, TypeError):  # DALI names the graph's operators: a state saved by another
            self._build(None)  # version of it won't load, nor will damaged bytes; a real data error raises again here
            raise StaleLoaderState(
                "the loader's saved position does not load (from another version of the pipeline, saved before an "
                "upgrade, or damaged)"
            ) from None
        self._served, self._interrupted = state.get("served", 0), False  # the next pass continues the saved one
        if self.echo:
            self.echo.resume(state.get("echo_position", {"group": 0, "done": 0}))
