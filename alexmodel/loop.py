"""The step loop and evaluation, as small free functions (torchvision's references/classification):

    train_one_epoch(model, optimizer, loader, ...)   one pass over this rank's shard; returns the epoch's sums
    evaluate(model, loader, ...)                     top-1/top-5 on a centre-crop or ten-crop loader (§4.1)
    evaluate_views(model, images, ...)               the log of the mean softmax over an image's views

They take a model, an optimizer and any iterable of (images, labels): the trainer's Loader, synthetic tensors
(alexmodel/tools/bench.py), a list in a test. Under DDP the sums are all-reduced over the ranks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexdata.errors import DataError, TrainError
from alexmodel import distributed

BAR_PEEK_S = 5.0  # a live bar shows the logging window so far this often, where a window takes longer


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
        return {
            "train_loss": self.loss_sum / n,
            "train_top1": self.correct / n,
            "images_per_s": self.images / s,
            "data_wait_frac": self.data_s / s,
        }


class NonFiniteLoss(TrainError):
    """The loss, or a weight, is NaN or infinite: the run stops (train() says which checkpoint is kept)."""


class StopRequested(Exception):
    """A stop was asked for (a signal): raised after the step at which every rank agreed to stop, once the
    window is read into the meter, so a checkpoint taken now resumes exactly."""

    def __init__(self, meter: EpochMeter):
        super().__init__("stop requested")
        self.meter = meter


def autocast(device_type: str, precision: str):
    """torch.autocast for a precision name: bf16 and fp16 autocast, fp32 (the paper's) none."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


class _Window:
    """One logging window of the step loop: its sums (loss, correct, images, stop flags) stay on the device until
    the host reads them, once per window (`read`), into the epoch's meter; `peek` shows the window so far on a
    live bar without ending it."""

    def __init__(self, meter: EpochMeter, optimizer, bar=None):
        self.meter, self.optimizer, self.bar = meter, optimizer, bar
        self.stop = False  # a rank asked to stop: sticks once read
        self.shown = time.perf_counter()
        self._start()

    def _start(self) -> None:
        self.sums, self.steps, self.data_s, self.t0 = None, 0, 0.0, time.perf_counter()

    def add(self, sums: torch.Tensor, data_s: float) -> None:
        """One step's sums (queued on the device, no host wait) and the time it waited for its batch."""
        self.sums = sums if self.sums is None else self.sums + sums
        self.steps += 1
        self.data_s += data_s

    def _figures(self, loss_sum: float, correct: float, count: float, dt: float) -> dict:
        n = max(count, 1)
        return {
            "steps": self.steps,
            "images": int(count),
            "loss": loss_sum / n,
            "top1": correct / n,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": count / max(dt, 1e-9),
            "data_wait_frac": self.data_s / max(dt, 1e-9),
        }

    def read(self) -> dict | None:
        """The window's figures, added to the meter (the host waits for the device here), and a new window;
        None when it holds no step. NonFiniteLoss when its loss is NaN or infinite."""
        if self.sums is None:
            return None
        loss_sum, correct, count, stops = self.sums.tolist()
        m = self.meter
        if not math.isfinite(loss_sum):
            first = m.steps - self.steps + 1
            steps = f"step {first}" if first == m.steps else f"steps {first}-{m.steps}"
            raise NonFiniteLoss(f"loss is {loss_sum / max(count, 1)} in {steps} of the epoch")
        dt = time.perf_counter() - self.t0
        w = self._figures(loss_sum, correct, count, dt)
        m.loss_sum += loss_sum
        m.correct += int(correct)
        m.images += int(count)
        m.step_s += dt
        m.host_syncs += 1
        self.stop = self.stop or stops > 0
        self._start()
        self.show(w)
        return w

    def peek(self) -> None:
        """The window so far on the bar, every BAR_PEEK_S seconds of a window longer than that (a slow device, a
        large --log-every): one extra wait for the device, with a terminal only, and nothing recorded."""
        if self.bar is None or self.sums is None or time.perf_counter() - self.shown < BAR_PEEK_S:
            return
        loss_sum, correct, count, _ = self.sums.tolist()
        self.show(self._figures(loss_sum, correct, count, time.perf_counter() - self.t0))

    def show(self, w: dict) -> None:
        """Figures on the live bar (the rest of its line is tqdm's)."""
        self.shown = time.perf_counter()
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{w['loss']:.3f}",
                top1=f"{100 * w['top1']:.1f}%",
                lr=f"{w['lr']:.3g}",
                img_s=f"{w['images_per_s']:.0f}",
                wait=f"{100 * w['data_wait_frac']:.0f}%",
                refresh=False,
            )


def train_one_epoch(
    model,
    optimizer,
    loader,
    *,
    precision: str = "fp32",
    scaler=None,
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    lr_at: Callable[[int], float] | None = None,
    meter: EpochMeter | None = None,
    after_step: Callable | None = None,
    bar=None,
    log_every: int = 0,
    on_window: Callable | None = None,
    stop: Callable[[], bool] | None = None,
) -> EpochMeter:
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
    window = _Window(meter, optimizer, bar)

    def sync() -> bool:
        """The window read into the meter and handed to on_window; True once any rank has asked to stop."""
        w = window.read()
        if w is not None and on_window is not None:
            on_window(meter, w)
        return window.stop

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
        with autocast(images.device.type, precision):
            logits = model(images)  # (B, classes)
        labels = labels.to(logits.device)
        # Sum / max(n, 1): a data-parallel rank's last batch can be empty (alexdata/loader.py); it still steps
        # (zero gradients) so every rank makes the same all-reduce calls, and its loss is 0, not NaN.
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="sum") / max(
            labels.numel(), 1
        )
        asked = bool(stop is not None and stop())
        # float64: a window's sums add up exactly enough that the window's length changes no reported figure
        # beyond round-off (tests/test_cli_preemption.py), and counts stay exact past float32's 2^24.
        # The two host numbers go in with fill kernels: new_tensor() would be a host-to-device copy, which
        # waits for the device every step (caught by the GPU test under torch.cuda.set_sync_debug_mode).
        full = lambda v: torch.full((), v, dtype=torch.float64, device=logits.device)
        sums = torch.stack(
            [
                loss.detach().double() * labels.numel(),
                (logits.argmax(1) == labels).sum().double(),
                full(labels.numel()),
                full(float(asked)),
            ]
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if distributed.active():
            dist.all_reduce(sums)  # queued on the device: no host wait (NCCL)
        window.add(sums, t_data)
        meter.steps += 1
        meter.data_s += t_data
        if log_every and window.steps >= log_every:
            sync()
        if bar is not None:
            window.peek()
            bar.update()
        if after_step is not None:
            t_after, syncs = time.perf_counter(), meter.host_syncs
            after_step(meter, images, labels, sync)
            # A checkpoint's write is not step time: the window restarts after it (or shifts past the hook).
            window.t0 = time.perf_counter() if meter.host_syncs != syncs else window.t0 + time.perf_counter() - t_after
        if not distributed.active() and stop is not None and stop():  # one process: no one to agree with
            sync()
            window.stop = True
        if window.stop:
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
    with autocast(images.device.type, precision):
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
        batch = torch.stack(
            [
                -logp.gather(1, labels[:, None]).sum(),
                hits[:, 0].sum().float(),
                hits.any(1).sum().float(),
                torch.ones_like(labels).sum().float(),
            ]
        ).double()
        totals = batch if totals is None else totals + batch
    if totals is None:
        raise DataError("evaluate: the loader yielded no batches")
    if distributed.active():
        dist.all_reduce(totals)
    loss_sum, top1, top5, n = totals.tolist()
    model.train(was_training)
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "images": int(n)}
