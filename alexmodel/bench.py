"""`alexnet bench train`: training images/s with synthetic tensors already on the device (the compute bound) and
with the real DALI loader (end to end), side by side in one run; end_to_end / synthetic is what waiting for data
costs. Also sweeps placement (one device / two towers), precision and channels_last on synthetic tensors.

Every variant runs the trainer's own `train_one_epoch` step (forward, backward, SGD, the per-step host sync), so
the figures are the trainer's, not a stripped-down loop's. One stripped-down loop runs beside them on purpose:
the best synthetic variant without the trainer's per-step host sync and bookkeeping (`host_sync`), which says
what that sync costs (on a GPU it stops the host from queueing the next step while the current one runs)."""
from __future__ import annotations

import itertools
import platform
import time

import torch

import torch.nn.functional as F

from alexmodel.model import AlexNet
from alexmodel.train import _autocast, train_one_epoch


class Synthetic:
    """`steps` batches of one fixed random batch, already on the device: no data cost at all."""

    def __init__(self, batch_size: int, classes: int, device: torch.device, steps: int):
        g = torch.Generator().manual_seed(0)
        self.images = (torch.randn(batch_size, 3, 227, 227, generator=g) * 60).to(device)
        self.labels = torch.randint(0, classes, (batch_size,), generator=g).to(device)
        self.steps = steps

    def __iter__(self):
        return itertools.repeat((self.images, self.labels), self.steps)


class Take:
    """The first `steps` batches of an endless pass over a Loader (epochs chained). full_only: leave out an
    epoch's short last batch, whose new shape would make cuDNN's benchmark mode tune every convolution again
    inside a short timed window (a long run pays that once)."""

    def __init__(self, loader, steps: int, full_only: bool = False):
        self.loader, self.steps, self.full_only = loader, steps, full_only

    def __iter__(self):
        batches = itertools.chain.from_iterable(itertools.repeat(self.loader))
        if self.full_only:
            batches = (b for b in batches if len(b[1]) == self.loader.batch_size)
        return itertools.islice(batches, self.steps)


def run_steps(model, batches, *, precision: str, channels_last: bool, warmup: int, sync,
              fused_sgd: bool = False) -> dict:
    """The trainer's step timed after `warmup` batches; fused_sgd: SGD's one-kernel update (RunConfig.fused_sgd)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4,  # tiny lr: stays finite
                          fused=fused_sgd or None)
    batches_it = iter(batches)
    head = list(itertools.islice(batches_it, warmup))
    train_one_epoch(model, opt, head, precision=precision, channels_last=channels_last)  # cudnn autotune, caches
    sync()
    t0 = time.perf_counter()
    meter = train_one_epoch(model, opt, batches_it, precision=precision, channels_last=channels_last)
    sync()
    dt = time.perf_counter() - t0
    return {"images_per_s": meter.images / dt, "data_wait_frac": meter.data_s / max(meter.step_s, 1e-9),
            "steps": meter.steps}


def run_unsynced(model, batches, *, precision: str, channels_last: bool, warmup: int, sync) -> float:
    """Images/s of the trainer's step without its host sync: forward, loss, backward, SGD; no .tolist(), no NaN
    check, no meters. The host can queue steps ahead of the device."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step(images, labels):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(images.device.type, precision):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = iter(batches)
    for images, labels in itertools.islice(it, warmup):
        step(images, labels)
    sync()
    n, t0 = 0, time.perf_counter()
    for images, labels in it:
        step(images, labels)
        n += len(labels)
    sync()
    return n / (time.perf_counter() - t0)


def bench_train(data: str | None, device: str = "cpu", steps: int = 20, batch_size: int = 128,
                width: float = 1.0, precisions: tuple[str, ...] = ("fp32", "bf16"), threads: int | None = None,
                stats=None, warmup: int = 3, sweep: bool = True) -> dict:
    from alexdata.bench import machine
    from alexdata.dataset import open_split
    from alexdata.loader import Loader

    dev = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    if device == "gpu":
        torch.backends.cudnn.benchmark = True
    split = open_split(data, "train") if data else None
    classes = len(split.classes) if split else 1000
    res = {"device": device, "batch_size": batch_size, "width": width, "steps": steps, "classes": classes,
           "machine": machine(), "torch": torch.__version__}
    if device == "gpu":
        res["gpu"] = torch.cuda.get_device_name(0)
    n_gpu = torch.cuda.device_count() if device == "gpu" else 0
    placements = ["single"] + (["two-tower"] if n_gpu >= 2 else [])  # as train: the paper's split needs two GPUs
    best = "bf16" if "bf16" in precisions else precisions[0]
    variants = [("single", p, cl) for p in precisions for cl in (False, True)] if sweep else []
    variants += [("two-tower", best, True)] if sweep and "two-tower" in placements else []
    variants = variants or [("single", best, True)]

    def make(placement, channels_last):
        torch.manual_seed(0)
        if placement == "two-tower":
            model = AlexNet(classes, width=width, devices=("cuda:0", "cuda:1"))
        else:
            model = AlexNet(classes, width=width).to(dev)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    results = []
    for placement, precision, cl in variants:
        model = make(placement, cl)
        r = run_steps(model, Synthetic(batch_size, classes, dev, steps + warmup), precision=precision,
                 channels_last=cl, warmup=warmup, sync=sync)
        results.append({"placement": placement, "precision": precision, "channels_last": cl,
                        "synthetic_images_per_s": r["images_per_s"]})
    res["synthetic"] = results
    top = max(results, key=lambda r: r["synthetic_images_per_s"])
    top_kw = dict(precision=top["precision"], channels_last=top["channels_last"], warmup=warmup, sync=sync)
    unsynced = run_unsynced(make(top["placement"], top["channels_last"]),
                             Synthetic(batch_size, classes, dev, steps + warmup), **top_kw)
    res["host_sync"] = {**{k: top[k] for k in ("placement", "precision", "channels_last")},
                        "trainer_images_per_s": top["synthetic_images_per_s"], "no_sync_images_per_s": unsynced,
                        "trainer_vs_no_sync": top["synthetic_images_per_s"] / unsynced}
    if data:
        loader = Loader(data, batch_size=batch_size, device=device, threads=threads, stats=stats, opened=split)
        r = run_steps(make(top["placement"], top["channels_last"]), Take(loader, steps + warmup), **top_kw)
        res["end_to_end"] = {**{k: top[k] for k in ("placement", "precision", "channels_last")},
                             "images_per_s": r["images_per_s"], "data_wait_frac": r["data_wait_frac"],
                             "synthetic_images_per_s": top["synthetic_images_per_s"],
                             "end_to_end_vs_synthetic": r["images_per_s"] / top["synthetic_images_per_s"]}
    res["python"] = platform.python_version()
    return res
