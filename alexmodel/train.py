"""The trainer: SGD with momentum on the two-tower AlexNet (paper §5), fed by the DALI `Loader`.

    alexnet train DATA --out runs/paper                                   # the paper's recipe, one GPU
    python -m torch.distributed.run --nproc_per_node 8 cli.py train DATA --out runs/ddp   # data parallel

Small free functions, as in torchvision's references/classification:
    train_one_epoch(model, optimizer, loader, ...)   one pass over this rank's shard; returns the epoch's sums
    evaluate(model, loader, ...)                     top-1/top-5 on a centre-crop or ten-crop loader (§4.1)
    train(data, model, optim, run)                   a whole run: loaders, model, schedule, checkpoints, record
    evaluate_checkpoint(data, checkpoint, ...)       `alexnet evaluate`

Recipes (`recipe()`):
    paper   §5: batch 128, SGD momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 whenever the validation
            error stops improving, 90 epochs, N(0, 0.01) init with the paper's unit biases; §2/§4.1: random 227
            crops and ten-crop corners inside the central 256x256 patch, minus the mean image (per pixel), PCA
            lighting.
    modern  batch 512 with the lr scaled linearly (0.01 per 128 images, Goyal et al. 2017 §2.1), 5 warmup
            epochs (ibid. §2.2), cosine decay to 0 (Loshchilov & Hutter 2017), label smoothing 0.1 (Szegedy et
            al. 2016 §7), Kaiming init (He et al. 2015) on inputs divided by the per-channel std, no PCA lighting
            noise. Not the paper; it starts learning at once where the paper's init can sit at chance for epochs.

Data parallel: started by torchrun (WORLD_SIZE > 1), every rank trains on `Loader(shard_id=rank,
num_shards=world_size)` (disjoint shards that together cover the epoch), DistributedDataParallel all-reduces the
gradients (NCCL on GPUs, gloo on CPUs), and rank 0 writes the run directory (alexmodel/runlog.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexdata.errors import TrainError
from alexdata.dataset import DataError, open_split
from alexdata.stats import default_device
from alexmodel import checkpoint as ckpt_io
from alexmodel import runlog
from alexmodel.model import AlexNet, ModelConfig
from pipelines.config import AugmentConfig, PipelineStats

RECIPES = ("paper", "modern")
SCHEDULES = ("plateau", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
PLACEMENTS = ("single", "two-tower")
DEVICES = ("auto", "cpu", "gpu")
PAPER_LR_BATCH = 128  # the paper's lr 0.01 is for 128 images per step (§5)


@dataclass(frozen=True)
class DataConfig:
    data: str  # a prepare output (or class-folder tree) with a train and a val split
    stats: str | None = None  # stats.json (0-255 scale); None: DATA/stats.json from `alexnet stats DATA`
    threads: int | None = None  # DALI CPU threads per rank; None: all cores
    aug: AugmentConfig = AugmentConfig()  # paper §4.1 (pipelines/config.py)
    prefetch: int = 2  # batches DALI prepares ahead (prefetch_queue_depth); speed only, like threads
    hw_decoder_load: float = 0.65  # share of JPEGs for the GPU's hardware decoder, DALI's default; speed only

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: expected an int >= 1 (or None for all cores)")
        if not (isinstance(self.prefetch, int) and self.prefetch >= 1):
            raise ValueError(f"prefetch={self.prefetch!r}: expected an int >= 1 (batches prepared ahead)")
        if not 0 <= self.hw_decoder_load <= 1:
            raise ValueError(f"hw_decoder_load={self.hw_decoder_load}: expected a share in [0, 1]")


@dataclass(frozen=True)
class OptimConfig:
    recipe: str = "paper"  # where the defaults came from, see recipe()
    batch_size: int = 128  # paper §5; images per step over all data-parallel ranks together
    epochs: int = 90  # paper §5: "roughly 90 cycles through the training set"
    lr: float = 0.01  # paper §5: initial (peak) learning rate
    momentum: float = 0.9  # paper §5
    weight_decay: float = 5e-4  # paper §5, on every weight and bias as in the paper's update rule
    schedule: str = "plateau"  # paper §5: lr / 10 "when the validation error rate stopped improving"; or "cosine"
    plateau_factor: float = 0.1  # paper §5: "divided by 10"
    plateau_patience: int = 5  # epochs without a better val top-1 error; the paper gives no number (3 cuts, ~90 ep.)
    warmup_epochs: float = 0.0  # cosine only: lr ramps linearly from 0 (Goyal et al. 2017 §2.2)
    label_smoothing: float = 0.0  # Szegedy et al. 2016 §7; the paper uses none

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe={self.recipe!r}: expected one of {', '.join(RECIPES)}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size={self.batch_size!r}: expected an int >= 1")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs={self.epochs!r}: expected an int >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r}: expected a finite number > 0")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"momentum={self.momentum}, weight_decay={self.weight_decay}: expected 0 <= momentum < 1 "
                             f"and weight_decay >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not 0 < self.plateau_factor < 1 or self.plateau_patience < 0:
            raise ValueError(f"plateau_factor={self.plateau_factor}, plateau_patience={self.plateau_patience}: "
                             f"expected 0 < factor < 1 and patience >= 0")
        if self.warmup_epochs < 0 or (self.warmup_epochs > 0 and self.schedule != "cosine"):
            raise ValueError(f"warmup_epochs={self.warmup_epochs}: expected >= 0, and 0 unless schedule='cosine'")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing}: expected a number in [0, 1)")


def recipe(name: str = "paper", *, width: float = 1.0, batch_size: int | None = None, epochs: int | None = None,
           lr: float | None = None) -> tuple[ModelConfig, AugmentConfig, OptimConfig]:
    """The model, augmentation and optimisation settings of a recipe (see the module docstring), with overrides.

    "modern" scales its lr linearly with the batch size unless `lr` is given, and divides the inputs by the
    per-channel std so that Kaiming-initialised layers start at unit scale (the paper's N(0, 0.01) init is
    matched to mean-subtracted 0-255 pixels instead). "paper" keeps lr 0.01 at any batch size.
    ModelConfig.num_classes is a placeholder: train() takes the class count from the data."""
    if name == "paper":
        # §2: crops (and the ten-crop corners) come from the central 256x256 patch, minus the mean image's window
        model, optim = ModelConfig(width=width, init="paper"), OptimConfig()
        aug = AugmentConfig(central_square=True, mean="pixel")
    elif name == "modern":
        # No PCA lighting noise: torchvision's and timm's ImageNet recipes use none.
        model, aug = ModelConfig(width=width, init="modern"), AugmentConfig(divide_std=True, pca_std=0.0)
        optim = OptimConfig(recipe="modern", batch_size=512, schedule="cosine", warmup_epochs=5.0,
                            label_smoothing=0.1)
    else:
        raise ValueError(f"recipe={name!r}: expected one of {', '.join(RECIPES)}")
    bs = optim.batch_size if batch_size is None else batch_size
    if lr is None:
        lr = optim.lr * bs / PAPER_LR_BATCH if name == "modern" else optim.lr
    return model, aug, replace(optim, batch_size=bs, epochs=optim.epochs if epochs is None else epochs, lr=lr)


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/alexnet"  # run directory: config.json, metrics.jsonl, plot.png, checkpoint.pt
    device: str = "auto"  # "gpu" when torch sees CUDA, else "cpu"
    precision: str = "fp32"  # the paper trained in fp32; "bf16" autocast; "fp16" autocast + GradScaler (GPU)
    channels_last: bool = False  # NHWC activations: faster convolutions on tensor cores
    compile: bool = False  # torch.compile the model
    placement: str = "single"  # "two-tower": tower t on GPU t, as the paper split the net (§3.2)
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0: at the end of each epoch only
    seed: int = 0  # init, dropout and the loader's augmentation draws
    torch_threads: int | None = None  # CPU intra-op threads; fix it so CPU runs (and resumes) are bit-exact
    progress: bool = True  # rank 0: a live bar on a terminal, plain lines per logging window otherwise
    log_every: int = 100  # optimizer steps per logging window: one host sync, one steps.jsonl line (~1 s on a GPU)
    tensorboard: bool = False  # also write TensorBoard scalars to OUT/tensorboard (needs the tensorboard package)
    # Speed only, off as before until `alexnet check` on a GPU says they win (its train stage: tf32, fused_sgd).
    tf32: bool = False  # fp32 matmuls (fc6-fc8) in TF32 on the GPU; cuDNN's convolutions use TF32 either way
    fused_sgd: bool = False  # torch.optim.SGD(fused=True): the update of every parameter in one kernel

    def __post_init__(self):
        for name, value, allowed in (("device", self.device, DEVICES), ("precision", self.precision, PRECISIONS),
                                     ("placement", self.placement, PLACEMENTS)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every}: expected >= 0 steps (0: epoch ends only)")
        if self.log_every < 1:
            raise ValueError(f"log_every={self.log_every}: expected >= 1 optimizer steps")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads={self.torch_threads}: expected >= 1 (or None for torch's default)")


def resolve_device(device: str) -> str:
    if device == "auto":
        return default_device()
    if device == "gpu" and not torch.cuda.is_available():
        raise TrainError("--device gpu asked for, but torch sees no CUDA GPU (use --device cpu)")
    return device


# ---------------------------------------------------------------------------------------------- one epoch


@dataclass
class EpochMeter:
    """Running sums of one training epoch over all ranks (times: this rank's); saved in mid-epoch checkpoints.
    steps, images and data_s are counted on the host at every step; loss_sum, correct and step_s are added when
    the host waits for the device, once per logging window (`train_one_epoch`)."""
    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0  # cross-entropy summed over images
    correct: int = 0  # top-1 hits on the training crops, with the weights as they were before each step
    data_s: float = 0.0  # seconds waiting for the loader
    step_s: float = 0.0  # seconds in whole steps, the wait included
    host_syncs: int = 0  # times the host waited for the device to read the sums

    def summary(self) -> dict:
        n, s = max(self.images, 1), max(self.step_s, 1e-9)
        return {"train_loss": self.loss_sum / n, "train_top1": self.correct / n,
                "images_per_s": self.images / s, "data_wait_frac": self.data_s / s}


class NonFiniteLoss(TrainError):
    pass


class StopRequested(Exception):
    """A stop was asked for (a signal): raised after the step at which every rank agreed to stop, once the
    window is read into the meter, so a checkpoint taken now resumes exactly."""

    def __init__(self, meter: EpochMeter):
        super().__init__("stop requested")
        self.meter = meter


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _autocast(device_type: str, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def train_one_epoch(model, optimizer, loader, *, precision: str = "fp32", scaler=None, channels_last: bool = False,
                    label_smoothing: float = 0.0, lr_at: Callable[[int], float] | None = None,
                    meter: EpochMeter | None = None, after_step: Callable | None = None, bar=None,
                    log_every: int = 0, on_window: Callable | None = None,
                    stop: Callable[[], bool] | None = None) -> EpochMeter:
    """One pass over `loader` (this rank's shard of the epoch), continuing `meter` when resuming mid-epoch.

    The loss and accuracy sums stay on the device; the host waits for it once per window of `log_every` steps
    (0: once, at the end), and there checks the loss for NaN, times the window and calls on_window(meter, window)
    with the window's figures. Between windows the host queues steps ahead of the device.
    lr_at(i): the lr for the epoch's step i (per-step schedules); None leaves the optimizer's lr alone.
    after_step(meter, images, labels, sync): called after every optimizer step; it calls sync() before it needs
        the meter's sums (a checkpoint).
    stop(): True once a stop is asked for on this rank. The ranks agree at a window's end (the flag rides in the
        all-reduce each step makes already, so no rank waits in a collective of its own); one process stops after
        the current step. Then StopRequested is raised, with the meter read up to that step.
    Raises NonFiniteLoss when the loss (averaged over all ranks) is NaN or infinite."""
    meter = EpochMeter() if meter is None else meter
    scaler = torch.amp.GradScaler("cuda", enabled=False) if scaler is None else scaler
    model.train()
    window = {"sums": None, "steps": 0, "data_s": 0.0, "t0": time.perf_counter(), "stop": False}

    def sync() -> bool:
        """Read the window's sums into the meter (the host waits for the device here); True once any rank has
        asked to stop."""
        if window["sums"] is None:
            return window["stop"]
        loss_sum, correct, count, stops = window["sums"].tolist()
        first = meter.steps - window["steps"] + 1
        if not math.isfinite(loss_sum):
            steps = f"step {first}" if first == meter.steps else f"steps {first}-{meter.steps}"
            raise NonFiniteLoss(f"loss is {loss_sum / max(count, 1)} in {steps} of the epoch")
        dt = time.perf_counter() - window["t0"]
        meter.loss_sum += loss_sum
        meter.correct += int(correct)
        meter.images += int(count)
        meter.step_s += dt
        meter.host_syncs += 1
        n = max(count, 1)
        stats = {"steps": window["steps"], "images": int(count), "loss": loss_sum / n, "top1": correct / n,
                 "lr": optimizer.param_groups[0]["lr"], "images_per_s": count / max(dt, 1e-9),
                 "data_wait_frac": window["data_s"] / max(dt, 1e-9)}
        window.update(sums=None, steps=0, data_s=0.0, t0=time.perf_counter(), stop=window["stop"] or stops > 0)
        if bar is not None:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", top1=f"{100 * stats['top1']:.1f}%",
                            lr=f"{stats['lr']:.3g}", img_s=f"{stats['images_per_s']:.0f}",
                            wait=f"{100 * stats['data_wait_frac']:.0f}%", refresh=False)
        if on_window is not None:
            on_window(meter, stats)
        return window["stop"]

    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        images, labels = batch  # (B, 3, 227, 227), (B,) on the loader's device
        t_data = time.perf_counter() - t0
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(meter.steps)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(images.device.type, precision):
            logits = model(images)  # (B, classes)
        labels = labels.to(logits.device)
        # Sum / max(n, 1): a data-parallel rank's last batch can be empty (alexdata/loader.py); it still steps
        # (zero gradients) so every rank makes the same all-reduce calls, and its loss is 0, not NaN.
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing,
                               reduction="sum") / max(labels.numel(), 1)
        asked = bool(stop is not None and stop())
        # float64: a window's sums add up exactly enough that the window's length changes no reported figure
        # beyond round-off (tests/test_preemption.py), and counts stay exact past float32's 2^24.
        # The two host numbers go in with fill kernels: new_tensor() would be a host-to-device copy, which
        # waits for the device every step (caught by the GPU test under torch.cuda.set_sync_debug_mode).
        full = lambda v: torch.full((), v, dtype=torch.float64, device=logits.device)
        sums = torch.stack([loss.detach().double() * labels.numel(), (logits.argmax(1) == labels).sum().double(),
                            full(labels.numel()), full(float(asked))])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if _distributed():
            dist.all_reduce(sums)  # queued on the device: no host wait (NCCL)
        window["sums"] = sums if window["sums"] is None else window["sums"] + sums
        window["steps"] += 1
        window["data_s"] += t_data
        meter.steps += 1
        meter.data_s += t_data
        if bar is not None:
            bar.update()
        if log_every and window["steps"] >= log_every:
            sync()
        if after_step is not None:
            t_after, syncs = time.perf_counter(), meter.host_syncs
            after_step(meter, images, labels, sync)
            # A checkpoint's write is not step time: the window restarts after it (or shifts past the hook).
            window["t0"] = time.perf_counter() if meter.host_syncs != syncs else \
                window["t0"] + time.perf_counter() - t_after
        if not _distributed() and stop is not None and stop():  # one process: no one to agree with
            sync()
            window["stop"] = True
        if window["stop"]:
            raise StopRequested(meter)
    if sync():
        raise StopRequested(meter)
    return meter


@torch.no_grad()
def evaluate_views(model, images: torch.Tensor, *, precision: str = "fp32", channels_last: bool = False):
    """(B, classes) log of the softmax averaged over an image's views: images (B, 3, 227, 227), one view each, or
    (B, 10, 3, 227, 227), the ten crops (paper §4.1). `evaluate` and `alexnet predict` both score with this."""
    views = images.shape[1] if images.dim() == 5 else 1
    if views > 1:
        images = images.flatten(0, 1)  # (B * 10, 3, 227, 227), views of an image adjacent
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with _autocast(images.device.type, precision):
        logits = model(images)
    logp = logits.float().log_softmax(-1)
    return logp.view(-1, views, logp.shape[-1]).logsumexp(1) - math.log(views)  # log of the mean softmax


@torch.no_grad()
def evaluate(model, loader, *, precision: str = "fp32", channels_last: bool = False) -> dict:
    """Top-1/top-5 accuracy (fractions) and cross-entropy over `loader`, summed over all ranks.

    A ten-crop loader gives (B, 10, 3, 227, 227): the prediction is the softmax averaged over the ten views
    (paper §4.1); its loss is -log of that average."""
    was_training = model.training
    model.eval()
    totals = None
    for images, labels in loader:
        logp = evaluate_views(model, images, precision=precision, channels_last=channels_last)
        labels = labels.to(logp.device)
        top = logp.topk(min(5, logp.shape[-1]), dim=1).indices  # (B, 5)
        hits = top == labels[:, None]
        batch = torch.stack([-logp.gather(1, labels[:, None]).sum(), hits[:, 0].sum().float(),
                             hits.any(1).sum().float(), torch.ones_like(labels).sum().float()]).double()
        totals = batch if totals is None else totals + batch
    if totals is None:
        raise DataError("evaluate: the loader yielded no batches")
    if _distributed():
        dist.all_reduce(totals)
    loss_sum, top1, top5, n = totals.tolist()
    model.train(was_training)
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "images": int(n)}


# ---------------------------------------------------------------------------------------------- a whole run


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module initialised the process group (and destroys it)


def _init_distributed(device: str, placement: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "gpu":
        torch.cuda.set_device(local * (2 if placement == "two-tower" else 1))
    if _distributed():
        return Dist(dist.get_rank(), dist.get_world_size(), local)
    dist.init_process_group("nccl" if device == "gpu" else "gloo")
    return Dist(rank, world, local, owned=True)


def _tower_devices(device: str, placement: str, local_rank: int) -> tuple[torch.device, ...]:
    """The devices of this rank's model: one, or (tower 0, tower 1) for the two-tower placement."""
    if device == "cpu":
        return (torch.device("cpu"),)
    per_rank = 2 if placement == "two-tower" else 1
    first = local_rank * per_rank
    if torch.cuda.device_count() < first + per_rank:
        raise TrainError(f"--placement {placement} on local rank {local_rank} needs GPUs "
                         f"{first}..{first + per_rank - 1}, but torch sees {torch.cuda.device_count()}")
    return tuple(torch.device("cuda", first + t) for t in range(per_rank))


def _gather(obj, d: Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# What must match for a checkpoint to resume: everything but the number of epochs (which may grow), the lr (which
# may be lowered by hand, as the paper's authors did, §5; the resume is then no longer exact), the paths, the
# speed-only settings (precision, threads, prefetch, hw_decoder_load, channels_last, compile, tf32, fused_sgd), the
# number of ranks (a cluster gives what it has: the global batch stays, the per-rank batch changes) and the
# statistics (a resume uses the checkpoint's unless --stats is given, so re-running `alexnet stats` cannot break
# it). The class list must match: a checkpoint never continues on, or scores, data whose labels mean other classes.
COMPAT_KEYS = (["classes", "model.num_classes", "model.width", "model.init", "data.aug", "run.seed", "run.device",
                "run.placement"]
               + [f"optim.{f.name}" for f in fields(OptimConfig) if f.name not in ("epochs", "lr")])
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")  # Slurm's preemption, its early warning (--signal), Ctrl-C
STOPPED_EXIT = 75  # the exit status after a stop on a signal (EX_TEMPFAIL: try again later, i.e. resume)


class TrainStopped(Exception):
    """The run stopped on a signal after writing an exact checkpoint; the message says where and how to resume."""


class _Signals:
    """The first STOP_SIGNALS signal asks the run to stop after the step all ranks agree on; a second exits at
    once (after a checkpoint being written, so no half file and no traceback)."""

    def __init__(self):
        self.received: str | None = None
        self.saving, self.pending, self.old = False, None, {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for name in STOP_SIGNALS:
                sig = getattr(signal, name)
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, old in self.old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        import signal

        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            # os.write, not print: a handler may interrupt a print to stderr (tqdm's), and print is not reentrant.
            os.write(2, f"train: {name}: stopping after this step and writing a checkpoint (again to exit at "
                        f"once)\n".encode())
        elif self.saving:
            self.pending = name
        else:
            self._exit(name)

    @staticmethod
    def _exit(name: str) -> None:
        import signal

        try:
            os.write(2, f"train: second {name}: exiting at once; the last checkpoint is kept\n".encode())
        finally:
            os._exit(128 + getattr(signal, name))

    def stop(self) -> bool:
        return self.received is not None

    @contextlib.contextmanager
    def saving_checkpoint(self):
        self.saving = True
        try:
            yield
        finally:
            self.saving = False
            if self.pending:
                self._exit(self.pending)


def train(data: DataConfig, model: ModelConfig, optim: OptimConfig, run: RunConfig, *,
          resume: bool | str = False, on_step: Callable | None = None) -> dict:
    """Trains AlexNet and records the run in `run.out`. Returns {"run_dir", "history", "model", "checkpoint"}.

    model: width and init are used; num_classes comes from the data, devices from `run.placement`.
    resume: True continues `run.out/checkpoint.pt` exactly (weights, optimizer, schedule, scaler, RNGs and the
        loader's position inside the epoch; from checkpoint.prev.pt when the latest is unreadable); the configs
        must match the checkpoint's (COMPAT_KEYS), `optim.epochs` may grow. On another number of ranks the run
        goes on from the next epoch boundary. "auto": resume when run.out holds a checkpoint, else start.
    on_step(epoch, step, images, labels): called on every rank after every optimizer step (tests, debugging);
        epoch counts from 0, step is the global step count after this one.
    A SIGTERM, SIGUSR1 or SIGINT stops the run after the current step (under DDP: the step every rank agrees on,
    at most run.log_every steps later) with an exact checkpoint, and raises TrainStopped.
    Raises TrainError (and DataError, ValueError for bad inputs) with one line."""
    device = resolve_device(run.device)
    run = replace(run, device=device)
    if run.precision == "fp16" and device != "gpu":
        raise TrainError("--precision fp16 needs a GPU (its GradScaler is CUDA's); use bf16 or fp32 on the CPU")
    if run.placement == "two-tower" and device != "gpu":
        raise TrainError("--placement two-tower needs two GPUs; use --placement single on the CPU")
    if resume == "auto":
        resume = runlog.holds_run(run.out)
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    d = _init_distributed(device, run.placement)
    try:
        saved = _load_latest(Path(run.out), d.rank) if resume else None
        with _Signals() as signals:
            return _Run(data, model, optim, run, d, signals, on_step, saved).fit()
    finally:
        if d.owned:
            dist.destroy_process_group()


def _load_latest(run_dir: Path, rank: int = 0) -> dict:
    """The latest readable checkpoint in run_dir: checkpoint.pt, else the spare one, saying so in one line."""
    ckpt, prev = run_dir / runlog.CHECKPOINT, run_dir / runlog.PREVIOUS
    new = run_dir / (runlog.CHECKPOINT + ".new")
    if not ckpt.is_file() and new.is_file():
        ckpt = new  # a crash between save_atomic's two renames: the newest complete checkpoint is here
    if not ckpt.is_file() and not prev.is_file():
        raise TrainError(f"--resume: {ckpt} not found (no run to continue in {run_dir})")
    try:
        return ckpt_io.load(ckpt)
    except (FileNotFoundError, ValueError) as e:
        if not prev.is_file():
            raise TrainError(str(e)) from None
        try:
            saved = ckpt_io.load(prev)
        except (FileNotFoundError, ValueError) as e2:
            raise TrainError(f"{e}; the spare {prev.name} too: {e2}") from None
        if rank == 0:
            print(f"train: {ckpt.name} is unreadable ({str(e).split(': ', 1)[-1][:120]}); resuming from the spare "
                  f"{prev.name} (epoch {saved['epoch']}, step {saved['step']})", file=sys.stderr)
        saved["_loaded_from"] = runlog.PREVIOUS
        return saved


def _data_inputs(data: str) -> str | None:
    """The prepare inputs' fingerprint (.prepare/params.json), recorded with the run: which raw data it came from."""
    p = Path(data) / ".prepare" / "params.json"
    try:
        return json.loads(p.read_text()).get("inputs")
    except (OSError, ValueError):
        return None


class _Run:
    """One training run: built from the configs, then `fit` goes epoch by epoch; every rank holds one."""

    def __init__(self, data: DataConfig, model_cfg: ModelConfig, optim: OptimConfig, run: RunConfig, d: Dist,
                 signals: _Signals, on_step: Callable | None, saved: dict | None):
        from alexdata.loader import Loader, resolve_stats

        if optim.batch_size % d.world:
            raise TrainError(f"--batch-size {optim.batch_size} does not split over {d.world} ranks; "
                             f"use a multiple of {d.world}")
        self.data, self.optim, self.run, self.d, self.signals, self.on_step = data, optim, run, d, signals, on_step
        self.per_rank = optim.batch_size // d.world
        splits = {s: open_split(data.data, s) for s in ("train", "val")}  # val now: the schedule needs its error
        self.classes = splits["train"].classes
        self.model_cfg = replace(model_cfg, num_classes=len(self.classes), devices=None)
        self.saved = saved
        if saved is not None and data.stats is None:  # a resume keeps the statistics it trained with
            stats = stats_from_checkpoint(saved)
        else:
            stats = resolve_stats(data.stats, data.data)  # None: DATA/stats.json
            old = None if saved is None else stats_from_checkpoint(saved)
            if old is not None and d.rank == 0 and (stats != old or not _same_image(stats, old)):
                print(f"train: using --stats {data.stats}, not the statistics the run trained with",
                      file=sys.stderr)
        # The mean image goes into the checkpoint beside the config (a tensor), not into config.json (768 KB)
        self.mean_image = None if stats.mean_image_255 is None else torch.from_numpy(stats.mean_image_255)
        self.config = {"data": asdict(data),
                       "model": {k: getattr(self.model_cfg, k) for k in ("num_classes", "width", "init")},
                       "optim": asdict(optim), "run": asdict(run), "world_size": d.world,
                       "stats_255": stats.per_channel(), "classes": list(self.classes),
                       "data_inputs": _data_inputs(data.data)}
        self.run_dir = Path(run.out)
        self.ckpt_path = self.run_dir / runlog.CHECKPOINT

        # Same init on every rank (DDP also broadcasts rank 0's weights), then a different dropout stream per rank.
        torch.manual_seed(run.seed)
        np.random.seed(run.seed)
        random.seed(run.seed)
        devices = _tower_devices(run.device, run.placement, d.local_rank)
        net = AlexNet(self.model_cfg.num_classes, width=self.model_cfg.width, init=self.model_cfg.init,
                      devices=devices if len(devices) == 2 else None)
        if len(devices) == 1:
            net = net.to(devices[0])
        self.net = net.to(memory_format=torch.channels_last) if run.channels_last else net
        torch.manual_seed(run.seed + 1 + d.rank)
        if run.device == "gpu":
            torch.backends.cudnn.benchmark = True  # fixed 227x227 inputs: pick the fastest conv algorithms once
            torch.backends.cuda.matmul.allow_tf32 = run.tf32  # process-wide, as cudnn.benchmark
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=optim.lr, momentum=optim.momentum,
                                         weight_decay=optim.weight_decay, fused=run.fused_sgd or None)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=run.precision == "fp16")
        kw = dict(stats=stats, aug=data.aug, batch_size=self.per_rank, device=run.device,
                  device_id=devices[0].index or 0, threads=data.threads, seed=run.seed + d.rank,
                  shuffle_seed=run.seed, shard_id=d.rank, num_shards=d.world, prefetch=data.prefetch,
                  hw_decoder_load=data.hw_decoder_load,
                  layout="NHWC" if run.channels_last else "NCHW")  # channels_last batches: the step copies none
        # torch.compile: only full batches, so the compiled step sees one shape (a partial last batch, or DDP's
        # empty one, would recompile it)
        self.train_loader = Loader(data.data, split="train", mode="train", opened=splits["train"],
                                   drop_last=run.compile, **kw)
        self.val_loader = Loader(data.data, split="val", mode="center", opened=splits["val"], **kw)
        self.steps_per_epoch = len(self.train_loader)
        self.cuda_devices = sorted({p.device for p in self.net.parameters() if p.device.type == "cuda"}, key=str)
        self.history: list[dict] = []
        self.last_saved: tuple[int, int] | None = None
        self.finish_partial = False  # a resume on another rank count ends the epoch in progress where it stands
        self.interactive = sys.stderr.isatty()  # a terminal draws a live bar; Slurm, nohup get plain lines
        self.writer = None
        if run.tensorboard and d.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (opened once the run starts)
            except ImportError:
                raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                 "(or the project's [tensorboard] extra)") from None

    # ------------------------------------------------------------------ checkpoints

    def _restore(self, saved: dict) -> tuple[int, EpochMeter | None]:
        """Loads a checkpoint; returns (epoch to start at, the meter of an epoch in progress)."""
        # AugmentConfig fields added since the checkpoint was written take their defaults (mean: "channel")
        then = {**saved["config"], "data": {**saved["config"]["data"],
                                            "aug": asdict(AugmentConfig(**saved["config"]["data"]["aug"]))}}
        why = ckpt_io.incompatibility(then, self.config, COMPAT_KEYS)
        if why:
            raise TrainError(f"cannot resume {self.ckpt_path}: {why}; resume with the run's options "
                             f"(see {self.run_dir / runlog.CONFIG}) or train into a new --out")
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # the saved groups carry the run's old fused flag: speed only
            group["fused"] = self.optimizer.defaults["fused"]
        if self.optim.lr != saved["config"]["optim"]["lr"]:  # a new initial lr: keep the plateau cuts made so far
            for group in self.optimizer.param_groups:
                group["lr"] *= self.optim.lr / saved["config"]["optim"]["lr"]
        self.plateau.load_state_dict(saved["plateau"])
        if saved["scaler"]:  # a run without fp16 saved a disabled scaler's empty state
            self.scaler.load_state_dict(saved["scaler"])
        self.history = saved["history"]
        self.last_saved = (saved["epoch"], saved["step"])
        epoch, meter = saved["epoch"], EpochMeter(**saved["meter"]) if saved["meter"] else None
        from alexdata.loader import StaleLoaderState

        saved_world = len(saved["ranks"])
        why = f"a run checkpointed on {saved_world}"
        if saved_world == self.d.world:
            try:
                self.train_loader.load_state_dict(saved["ranks"][self.d.rank]["loader"])
                ckpt_io.set_rng_state(saved["ranks"][self.d.rank]["rng"])  # last: building the model drew from them
                return epoch, meter
            except StaleLoaderState as e:  # the same on every rank: the same code reads the same checkpoint
                why = f"a run whose loader position does not load here ({e})"
        # Another number of ranks (or a loader position from another version): each rank's shard of the epoch is
        # another set of samples, so the positions do not carry over; the run goes on from the next epoch
        # boundary with fresh loaders.
        if self.d.rank == 0:
            skipped = (f"; the rest of epoch {epoch + 1} is skipped ({self.train_loader.split.images - meter.images}"
                       f" of {self.train_loader.split.images} samples) and the epoch evaluated as it stands"
                       if meter else "")
            print(f"train: resuming on {self.d.world} rank(s) {why}, from the next epoch boundary{skipped}",
                  file=sys.stderr)
        self.finish_partial = meter is not None
        return epoch, meter

    def save(self, epoch: int, meter: EpochMeter | None, step: int) -> None:
        """A checkpoint after `step` global steps; epoch = epochs finished (meter None) or the one in progress."""
        if not _all_finite(self.net):
            raise NonFiniteLoss(f"the weights hold NaN/inf after step {step}")
        mine = {"loader": self.train_loader.state_dict(), "rng": ckpt_io.rng_state(self.cuda_devices)}
        ranks = _gather(mine, self.d)
        if self.d.rank == 0:
            with self.signals.saving_checkpoint():
                ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "config": self.config,
                                     "mean_image_255": self.mean_image, "epoch": epoch, "step": step,
                                     "meter": None if meter is None else asdict(meter),
                                     "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                                     "plateau": self.plateau.state_dict(), "scaler": self.scaler.state_dict(),
                                     "ranks": ranks, "history": self.history}, self.ckpt_path,
                                    previous=self.run_dir / runlog.PREVIOUS)
        self.last_saved = (epoch, step)

    # ------------------------------------------------------------------ logging

    def _on_window(self, epoch: int):
        def log(meter: EpochMeter, w: dict) -> None:
            if self.d.rank != 0:
                return
            step = epoch * self.steps_per_epoch + meter.steps
            rec = {"step": step, "epoch": round(epoch + meter.steps / self.steps_per_epoch, 4), **w,
                   "time": time.time()}
            runlog.append_step(self.run_dir, rec)
            if self.writer is not None:
                for k in ("loss", "top1", "lr", "images_per_s", "data_wait_frac"):
                    self.writer.add_scalar(f"train/{k}", w[k], step)
            if self.run.progress and not self.interactive:
                print(f"epoch {rec['epoch']:.2f}  step {step}  loss {w['loss']:.3f}  top-1 {100 * w['top1']:.1f}%  "
                      f"lr {w['lr']:.3g}  {w['images_per_s']:.0f} img/s  data wait {100 * w['data_wait_frac']:.0f}%",
                      flush=True)
        return log

    def _after_step(self, epoch: int):
        def after(meter: EpochMeter, images, labels, sync) -> None:
            step = epoch * self.steps_per_epoch + meter.steps
            every = self.run.checkpoint_every
            if every and step % every == 0 and meter.steps < self.steps_per_epoch:
                sync()  # the meter's sums up to this step, for an exact resume
                self.save(epoch, meter, step)
            if self.on_step is not None:
                self.on_step(epoch, step, images, labels)
        return after

    def _lr_at(self, epoch: int) -> Callable[[int], float] | None:
        o, spe = self.optim, self.steps_per_epoch
        if o.schedule != "cosine":
            return None
        total, warm = o.epochs * spe, o.warmup_epochs * spe

        def at(i: int) -> float:
            step = epoch * spe + i  # 0-based global step
            if step < warm:
                return o.lr * (step + 1) / warm
            return 0.5 * o.lr * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))
        return at

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict:
        from tqdm import tqdm

        saved = self.saved
        if saved is None and runlog.holds_run(self.run_dir):
            raise TrainError(f"{self.run_dir} already holds a run ({runlog.CHECKPOINT}); pass --resume to continue "
                             f"it, or choose another --out")
        start_epoch, meter = self._restore(saved) if saved is not None else (0, None)
        if saved is not None:
            done = saved["epoch"]
            if self.optim.epochs < done or (self.optim.epochs == done and saved["meter"]):
                raise TrainError(f"--epochs {self.optim.epochs}: the run has done {done} epoch(s) "
                                 f"{'and part of the next ' if saved['meter'] else ''}already; give more epochs")
            if self.optim.epochs == done and start_epoch >= self.optim.epochs:
                if self.d.rank == 0:
                    print(f"train: nothing to do: {self.run_dir} finished its {done} epochs (give --epochs N to "
                          f"train longer)", file=sys.stderr)
                return {"run_dir": self.run_dir, "history": self.history, "model": self.net,
                        "checkpoint": self.ckpt_path}
        if self.d.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for leftover in (".tmp", ".new", ".new.tmp"):  # a save cut short by a kill or a power loss
                (self.run_dir / (runlog.CHECKPOINT + leftover)).unlink(missing_ok=True)
            if saved is not None and saved.get("_loaded_from") == runlog.PREVIOUS and self.ckpt_path.exists():
                # Keep the unreadable file for a look, out of the way: the next save must not make it the spare.
                os.replace(self.ckpt_path, self.run_dir / "checkpoint.unreadable.pt")
            if self.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            resumed_at = None if saved is None else {"epoch": saved["epoch"], "step": saved["step"]}
            runlog.write_config(self.run_dir, self.config, classes=list(self.classes), resumed_at=resumed_at)
            if saved is not None:  # the checkpoint's history is the truth: drop lines it does not hold
                runlog.write_metrics(self.run_dir, self.history)
            runlog.truncate_steps(self.run_dir, saved["step"] if saved is not None else 0)
        model = self.net
        if self.d.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.net.fc8.weight.device] if self.run.device == "gpu"
                and self.run.placement == "single" else None)
        if self.run.compile:
            model = torch.compile(model)
        show = self.run.progress and self.interactive and self.d.rank == 0
        epoch = start_epoch
        try:
            if self.finish_partial:
                self._end_epoch(epoch, meter)
                start_epoch, meter = epoch + 1, None
            for epoch in range(start_epoch, self.optim.epochs):
                desc = f"epoch {epoch + 1}/{self.optim.epochs}" + (
                    f" (val top-1 {100 * self.history[-1]['val_top1']:.1f}%)" if self.history else "")
                bar = tqdm(total=self.steps_per_epoch, initial=meter.steps if meter else 0, unit="step",
                           leave=False, desc=desc, dynamic_ncols=True) if show else None
                stopped = False
                try:
                    meter = train_one_epoch(
                        model, self.optimizer, self.train_loader, precision=self.run.precision, scaler=self.scaler,
                        channels_last=self.run.channels_last, label_smoothing=self.optim.label_smoothing,
                        lr_at=self._lr_at(epoch), meter=meter, after_step=self._after_step(epoch), bar=bar,
                        log_every=self.run.log_every, on_window=self._on_window(epoch), stop=self.signals.stop)
                except StopRequested as e:
                    meter, stopped = e.meter, True
                finally:
                    if bar is not None:
                        bar.close()
                if stopped and meter.steps < self.steps_per_epoch:
                    step = epoch * self.steps_per_epoch + meter.steps
                    if self.last_saved != (epoch, step):  # a --checkpoint-every save of this very step
                        self.save(epoch, meter, step)
                    raise TrainStopped(self._stopped_line(epoch, step))
                self._end_epoch(epoch, meter)
                meter = None
                last = epoch + 1 == self.optim.epochs  # the run is done: a late signal changes nothing
                if not last and (stopped or _any_rank(self.signals.stop(), self.d, self.run.device)):
                    raise TrainStopped(self._stopped_line(epoch + 1, (epoch + 1) * self.steps_per_epoch))
        except NonFiniteLoss as e:
            if self.last_saved:
                where = (f"kept the last good checkpoint {self.ckpt_path} (epoch {self.last_saved[0]}, step "
                         f"{self.last_saved[1]}); continue with --resume and a lower --lr")
            else:
                where = "no checkpoint was written yet; start again with a lower --lr"
            hint = ", or fp32" if self.run.precision != "fp32" else ""
            raise TrainError(f"epoch {epoch + 1}: {e}: training stopped; {where}{hint}") from None
        except torch.cuda.OutOfMemoryError:
            raise TrainError(f"out of GPU memory with {self.per_rank} images per GPU (--batch-size "
                             f"{self.optim.batch_size}); try --batch-size {max(1, self.optim.batch_size // 2)}") from None
        finally:
            if self.writer is not None:
                self.writer.close()
        return {"run_dir": self.run_dir, "history": self.history, "model": self.net, "checkpoint": self.ckpt_path}

    def _end_epoch(self, epoch: int, meter: EpochMeter) -> None:
        t_eval = time.perf_counter()
        val = evaluate(self.net, self.val_loader, precision=self.run.precision, channels_last=self.run.channels_last)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.optim.schedule == "plateau":
            self.plateau.step(1.0 - val["top1"])  # paper §5: watches the validation error rate
        self.history.append({"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch, **meter.summary(),
                             "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"], "lr": lr,
                             "epoch_s": meter.step_s, "eval_s": time.perf_counter() - t_eval,
                             "host_syncs": meter.host_syncs, "time": time.time()})
        self.save(epoch + 1, None, (epoch + 1) * self.steps_per_epoch)
        if self.d.rank == 0:
            m = self.history[-1]
            runlog.write_metrics(self.run_dir, self.history)
            runlog.plot(self.run_dir, self.history, runlog.read_steps(self.run_dir))
            if self.writer is not None:
                for k in ("val_loss", "val_top1", "val_top5", "train_loss", "train_top1"):
                    self.writer.add_scalar(f"epoch/{k}", m[k], m["step"])
            _print_epoch(m, self.optim.epochs)

    def _stopped_line(self, epoch: int, step: int) -> str:
        if self.d.world > 1:
            dist.barrier()  # every rank is past the checkpoint before any exits (torchrun ends the rest then)
        where = (f"{step % self.steps_per_epoch} steps into epoch {epoch + 1}" if step % self.steps_per_epoch
                 else f"after epoch {step // self.steps_per_epoch}")
        by = self.signals.received or "a signal to another rank"
        return f"stopped by {by} at step {step} ({where}); checkpoint {self.ckpt_path}"


def _any_rank(flag: bool, d: Dist, device: str) -> bool:
    """True on every rank when `flag` is true on any (one small all-reduce, at an epoch's end)."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if device == "gpu" else "cpu")
    dist.all_reduce(t)
    return bool(t.item())


def _print_epoch(m: dict, epochs: int) -> None:
    from tqdm import tqdm

    tqdm.write(f"epoch {m['epoch']:>3}/{epochs}  loss {m['train_loss']:.3f}  train {100 * m['train_top1']:5.1f}%  "
               f"val top-1 {100 * m['val_top1']:5.1f}%  top-5 {100 * m['val_top5']:5.1f}%  lr {m['lr']:.3g}  "
               f"{m['images_per_s']:.0f} img/s  data wait {100 * m['data_wait_frac']:.0f}%")


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_checkpoint(data: str | os.PathLike, checkpoint: str | os.PathLike, *, ten_crop: bool = False,
                        device: str = "auto", batch_size: int = 128, threads: int | None = None,
                        stats: str | os.PathLike | None = None, precision: str = "fp32") -> dict:
    """Top-1/top-5 of a trained checkpoint on DATA's val split, centre crop or ten-crop (paper §4.1).

    The mean subtracted is the one the run trained with (kept in the checkpoint) unless `stats` names a file."""
    from alexdata.loader import Loader, resolve_stats

    device = resolve_device(device)
    if precision not in PRECISIONS or (precision == "fp16" and device != "gpu"):
        raise TrainError(f"--precision {precision}: expected fp32 or bf16 (fp16 on a GPU)")
    saved = load_checkpoint(checkpoint)
    cfg = saved["config"]
    val = open_split(data, "val")
    check_classes(cfg, val.classes, checkpoint, data)
    pstats = resolve_stats(stats, data) if stats else stats_from_checkpoint(saved)
    net = model_from_checkpoint(saved, "cuda" if device == "gpu" else "cpu")
    loader = Loader(data, split="val", mode="tencrop" if ten_crop else "center", opened=val, stats=pstats,
                    aug=AugmentConfig(**cfg["data"]["aug"]), batch_size=batch_size, device=device,
                    device_id=torch.cuda.current_device() if device == "gpu" else 0, threads=threads)
    out = evaluate(net, loader, precision=precision)
    return {**out, "ten_crop": ten_crop, "checkpoint": str(checkpoint), "epoch": saved["epoch"],
            "step": saved["step"]}


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint file, or a run directory's checkpoint.pt; TrainError with one line when it cannot be read."""
    p = Path(path)
    if p.is_dir():
        p = p / runlog.CHECKPOINT
    try:
        return ckpt_io.load(p)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(str(e)) from None


def stats_from_checkpoint(saved: dict) -> PipelineStats:
    """The statistics a loaded checkpoint's run trained with: the per-channel ones in its config, and its mean
    image (a tensor beside the config; absent from checkpoints written before it existed)."""
    m = saved.get("mean_image_255")
    return PipelineStats(**saved["config"]["stats_255"], mean_image_255=None if m is None else m.numpy())


def _same_image(a: PipelineStats, b: PipelineStats) -> bool:
    x, y = a.mean_image_255, b.mean_image_255
    return (x is None) == (y is None) and (x is None or np.array_equal(x, y))


def model_from_checkpoint(saved: dict, device: str | torch.device = "cpu") -> AlexNet:
    """The trained network of a loaded checkpoint, in eval mode on `device` (both towers on it)."""
    cfg = saved["config"]["model"]
    net = AlexNet(cfg["num_classes"], width=cfg["width"], init=cfg["init"])
    net.load_state_dict(saved["model"])
    return net.to(device).eval()


def check_classes(cfg: dict, classes, checkpoint, data) -> None:
    """Refuses data whose class list is not the one the checkpoint was trained on (the labels would lie)."""
    mine = list(classes)
    theirs = cfg.get("classes") or []
    if len(mine) != cfg["model"]["num_classes"]:
        raise TrainError(f"{checkpoint} predicts {cfg['model']['num_classes']} classes but {data} has {len(mine)}")
    if theirs and theirs != mine:
        diff = [(a, b) for a, b in zip(theirs, mine) if a != b]
        raise TrainError(f"{checkpoint} was trained on other classes than {data} holds ({len(diff)} of {len(mine)} "
                         f"differ, e.g. {diff[0][0]} vs {diff[0][1]})")


def configs_from_dict(cfg: dict) -> tuple[DataConfig, ModelConfig, OptimConfig, RunConfig]:
    """The configs recorded in a run's config.json (to resume with the options the run started with)."""
    d = dict(cfg["data"])
    d["aug"] = AugmentConfig(**d["aug"])
    return (DataConfig(**d), ModelConfig(**cfg["model"]), OptimConfig(**cfg["optim"]), RunConfig(**cfg["run"]))


__all__ = ["DataConfig", "OptimConfig", "RunConfig", "EpochMeter", "TrainError", "TrainStopped", "recipe", "train",
           "train_one_epoch", "evaluate", "evaluate_views", "evaluate_checkpoint", "configs_from_dict",
           "load_checkpoint", "model_from_checkpoint", "stats_from_checkpoint", "RECIPES"]
