"""`alexnet bench train`: training images/s with synthetic tensors already on the device (the compute bound) and
with the real DALI loader (end to end), side by side in one run; end_to_end / synthetic is what waiting for data
costs. Also sweeps placement (one device / two towers), precision and channels_last on synthetic tensors.

Every variant runs the trainer's own `train_one_epoch` step (forward, backward, SGD, the host sync once per
logging window), so the figures are the trainer's, not a stripped-down loop's. One stripped-down loop runs beside
them on purpose: the best synthetic variant without the trainer's host sync and bookkeeping (`host_sync`), which
says what that sync costs (on a GPU it stops the host from queueing the next step while the current one runs).

`TrainBench` holds the measurements; `bench_train` and `alexnet check`'s train stage (alexmodel/tools/check.py)
both compose them. Figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import itertools
import time

import torch
import torch.nn.functional as F

from alexdata import host
from alexdata.errors import ConfigError
from alexmodel.config import PRECISIONS, refuse_on_cpu, resolve_device
from alexmodel.loop import autocast, train_one_epoch
from alexmodel.model import AlexNet, set_lrn


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
        batches = (
            self._full_batches() if self.full_only else itertools.chain.from_iterable(itertools.repeat(self.loader))
        )
        return itertools.islice(batches, self.steps)

    def _full_batches(self):
        while True:  # an epoch without one full batch would make this loop forever (a split smaller than a batch)
            full = 0
            for b in self.loader:
                if len(b[1]) == self.loader.batch_size:
                    full += 1
                    yield b
            if not full:
                raise ConfigError(
                    f"an epoch of this loader holds no full batch of {self.loader.batch_size}: "
                    "the split has fewer images (per rank) than one batch"
                )


class DeviceWait:
    """`batches` passed through, and on a CUDA device the time its stream sat idle waiting for the host to hand
    over each batch: an event recorded on torch's current stream when the step asks for the next batch (after
    the previous step's work is queued) and one when the batch is in hand. Their gap on the device is zero while
    the host keeps ahead (the device still runs queued steps), and is the device's stall where the loader is
    late. The host's own time inside `next()` (EpochMeter.data_s) counts both, so on a GPU it overstates the
    data's cost (docs/BENCHMARKS.md, "H200, 2026-12-04")."""

    def __init__(self, batches, device: torch.device):
        self.batches, self.cuda, self.device = batches, device.type == "cuda", device
        self.pairs: list[tuple] = []

    def __iter__(self):
        it = iter(self.batches)
        while True:
            if self.cuda:
                asked = torch.cuda.Event(enable_timing=True)
                asked.record(torch.cuda.current_stream(self.device))
            batch = next(it, None)
            if batch is None:
                return
            if self.cuda:
                handed = torch.cuda.Event(enable_timing=True)
                handed.record(torch.cuda.current_stream(self.device))
                self.pairs.append((asked, handed))
            yield batch

    def stalled_s(self) -> float | None:
        """Seconds the device waited for batches (after a synchronize); None off CUDA."""
        if not self.cuda:
            return None
        return sum(a.elapsed_time(h) for a, h in self.pairs) / 1e3


def bench_sgd(model, fused: bool = False) -> torch.optim.SGD:
    """The timed steps' optimizer: the paper's momentum and weight decay at a tiny lr (the weights stay finite
    over any number of steps); fused: SGD's one-kernel update (RunConfig.fused_sgd)."""
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4, fused=fused or None)


def run_steps(
    model, batches, *, precision: str, channels_last: bool, warmup: int, sync, fused_sgd: bool = False
) -> dict:
    """The trainer's step timed after `warmup` batches; fused_sgd: SGD's one-kernel update (RunConfig.fused_sgd).
    data_wait_frac: the host's share of the time inside the loader's next(), as the trainer logs it;
    device_wait_frac (CUDA only, else None): the device's share idle for want of a batch (DeviceWait)."""
    opt = bench_sgd(model, fused_sgd)
    batches_it = iter(batches)
    head = list(itertools.islice(batches_it, warmup))
    train_one_epoch(model, opt, head, precision=precision, channels_last=channels_last)  # cudnn autotune, caches
    sync()
    timed = DeviceWait(batches_it, next(model.parameters()).device)
    t0 = time.perf_counter()
    meter = train_one_epoch(model, opt, timed, precision=precision, channels_last=channels_last)
    sync()
    dt = time.perf_counter() - t0
    stalled = timed.stalled_s()
    return {
        "images_per_s": meter.images / dt,
        "data_wait_frac": meter.data_s / max(meter.step_s, 1e-9),
        "device_wait_frac": None if stalled is None else stalled / dt,
        "steps": meter.steps,
    }


def run_unsynced(model, batches, *, precision: str, channels_last: bool, warmup: int, sync) -> float:
    """Images/s of the trainer's step without its host sync: forward, loss, backward, SGD; no .tolist(), no NaN
    check, no meters. The host can queue steps ahead of the device."""
    opt = bench_sgd(model)
    model.train()

    def step(images, labels):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(images.device.type, precision):
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


class TrainBench:
    """The training measurements on one device, for one model size and batch: each builds a fresh seeded model,
    warms up `warmup` steps (cuDNN autotuning, caches) and times `steps` more."""

    def __init__(self, device: str, *, classes: int, width: float, batch_size: int, steps: int, warmup: int = 3):
        self.device, self.classes, self.width, self.batch_size = device, classes, width, batch_size
        self.steps, self.warmup = steps, warmup
        self.dev, self.sync = host.torch_device(device), host.synchronizer(device)
        if device == "gpu":
            torch.backends.cudnn.benchmark = True  # as the trainer: fixed 227x227 inputs

    def model(self, channels_last: bool, devices=None, lrn: str | None = None) -> AlexNet:
        """A fresh model, seeded: on this device, or split over `devices` (tower 0, tower 1); `lrn`: the LRNs'
        implementation (alexmodel.lrn.IMPLS; None: the default)."""
        torch.manual_seed(0)
        net = AlexNet(self.classes, width=self.width, devices=devices)
        if lrn is not None:
            set_lrn(net, lrn)
        net = net if devices else net.to(self.dev)
        return net.to(memory_format=torch.channels_last) if channels_last else net

    def profile(self, model, precision: str, channels_last: bool, steps: int = 5, top: int = 10) -> dict:
        """Where a synthetic step's time goes: the `top` operators by their own time on the device (the GPU's
        kernels, or the CPU's), each {"name", "ms_per_step", "share"}, and the step's total. Names the limit
        when the model, not the data, sets the speed."""
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        opt = bench_sgd(model)
        batches = list(Synthetic(self.batch_size, self.classes, self.dev, self.warmup + steps))
        train_one_epoch(model, opt, batches[: self.warmup], precision=precision, channels_last=channels_last)
        self.sync()
        gpu = self.dev.type == "cuda"
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with torch_profile(activities=acts) as prof:
            train_one_epoch(model, opt, batches[self.warmup :], precision=precision, channels_last=channels_last)
            self.sync()
        attr = "self_device_time_total" if gpu else "self_cpu_time_total"
        # On the GPU only the kernels' own rows: torch also copies a kernel's time onto the CPU event that
        # launched it (cudaLaunchKernel), which would count it twice (torch's own table filters the same way).
        ops = [
            e
            for e in prof.key_averages()
            if getattr(e, attr, 0) > 0 and (not gpu or e.device_type == torch.autograd.DeviceType.CUDA)
        ]
        total = sum(getattr(e, attr) for e in ops)  # microseconds, over `steps` steps
        ops.sort(key=lambda e: getattr(e, attr), reverse=True)
        return {
            "on": "gpu kernels" if gpu else "cpu operators",
            "ms_per_step": total / 1e3 / steps,
            "heaviest": f"{ops[0].key[:60]} {getattr(ops[0], attr) / total:.0%}" if ops else None,
            "top": [
                {"name": e.key[:120], "ms_per_step": getattr(e, attr) / 1e3 / steps, "share": getattr(e, attr) / total}
                for e in ops[:top]
            ],
        }

    def synthetic(self, model, precision: str, channels_last: bool, *, fused_sgd: bool = False) -> float:
        """Images/s of the trainer's step on Synthetic batches."""
        batches = Synthetic(self.batch_size, self.classes, self.dev, self.steps + self.warmup)
        return run_steps(
            model,
            batches,
            precision=precision,
            channels_last=channels_last,
            warmup=self.warmup,
            sync=self.sync,
            fused_sgd=fused_sgd,
        )["images_per_s"]

    def no_sync(self, model, precision: str, channels_last: bool) -> float:
        """Images/s of the same step without the trainer's host sync (run_unsynced) on Synthetic batches."""
        batches = Synthetic(self.batch_size, self.classes, self.dev, self.steps + self.warmup)
        return run_unsynced(
            model, batches, precision=precision, channels_last=channels_last, warmup=self.warmup, sync=self.sync
        )

    def conv_tflops(self, precision: str, reps: int = 10) -> dict:
        """Each convolution of the model alone, forward and backward (input, weight and bias gradients), in TFLOP/s
        at this batch, NCHW and channels_last: {"conv1": {"nchw": ..., "nhwc": ...}, ...}. FLOPs are counted as
        3 x 2 x the forward's multiply-adds; a layer far under the chip's rate is where the step's time goes."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        net = AlexNet(self.classes, width=self.width).to(self.dev)
        shapes = {"conv1": 227, "conv2": 27, "conv3": 13, "conv4": 13, "conv5": 13}  # input sides (paper Figure 2)
        out = {}
        for name, side in shapes.items():
            conv = getattr(net, name)
            w = conv.weight.detach().to(dtype).requires_grad_()
            b = conv.bias.detach().to(dtype).requires_grad_()
            cin = w.shape[1] * conv.groups
            fig = {}
            for fmt_name, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
                x = torch.randn(self.batch_size, cin, side, side, device=self.dev, dtype=dtype)
                x = x.contiguous(memory_format=fmt).requires_grad_()
                wf = w.detach().contiguous(memory_format=fmt).requires_grad_()
                step = lambda: F.conv2d(x, wf, b, conv.stride, conv.padding, groups=conv.groups).sum().backward()
                for _ in range(3):
                    step()
                self.sync()
                t = time.perf_counter()
                for _ in range(reps):
                    step()
                self.sync()
                y = F.conv2d(x.detach(), wf.detach(), None, conv.stride, conv.padding, groups=conv.groups)
                macs = y.numel() * w.shape[1] * w.shape[2] * w.shape[3]
                fig[fmt_name] = 3 * 2 * macs * reps / (time.perf_counter() - t) / 1e12
            out[name] = fig
        return out

    def end_to_end(
        self, model, loader, precision: str, channels_last: bool, *, steps: int | None = None, full_only: bool = False
    ) -> dict:
        """{"images_per_s", "data_wait_frac", "device_wait_frac", "steps"} of the trainer's step fed by `loader`
        (epochs chained): `run_steps`."""
        batches = Take(loader, (steps or self.steps) + self.warmup, full_only=full_only)
        return run_steps(
            model, batches, precision=precision, channels_last=channels_last, warmup=self.warmup, sync=self.sync
        )


def bench_train(
    data: str | None,
    device: str = "cpu",
    steps: int = 20,
    batch_size: int = 128,
    width: float = 1.0,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    threads: int | None = None,
    stats=None,
    warmup: int = 3,
    sweep: bool = True,
) -> dict:
    """The synthetic sweep (placement x precision x channels_last), the host-sync ratio of the fastest variant
    and, with DATA, that variant end to end through the Loader."""
    from alexdata.dataset import open_split
    from alexdata.loader import Loader

    device = resolve_device(device)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ConfigError(f"precisions={list(precisions)}: expected some of {', '.join(PRECISIONS)}")
    for precision in precisions:
        refuse_on_cpu(device, precision=precision)
    split = open_split(data, "train") if data else None
    classes = len(split.classes) if split else 1000
    tb = TrainBench(device, classes=classes, width=width, batch_size=batch_size, steps=steps, warmup=warmup)
    m = host.machine(device)
    res = {
        "device": device,
        "batch_size": batch_size,
        "width": width,
        "steps": steps,
        "classes": classes,
        "machine": m,
        "torch": m.get("torch"),
    }
    if device == "gpu":
        res["gpu"] = m["gpu"]
    n_gpu = torch.cuda.device_count() if device == "gpu" else 0
    towers = {"single": None, "two-tower": ("cuda:0", "cuda:1")}  # as train: the paper's split needs two GPUs
    best = "bf16" if "bf16" in precisions else precisions[0]
    variants = [("single", p, cl) for p in precisions for cl in (False, True)] if sweep else []
    variants += [("two-tower", best, True)] if sweep and n_gpu >= 2 else []
    variants = variants or [("single", best, True)]

    results = []
    for placement, precision, cl in variants:
        rate = tb.synthetic(tb.model(cl, towers[placement]), precision, cl)
        results.append(
            {"placement": placement, "precision": precision, "channels_last": cl, "synthetic_images_per_s": rate}
        )
    res["synthetic"] = results
    top = max(results, key=lambda r: r["synthetic_images_per_s"])
    kind = {k: top[k] for k in ("placement", "precision", "channels_last")}
    make_top = lambda: tb.model(top["channels_last"], towers[top["placement"]])
    unsynced = tb.no_sync(make_top(), top["precision"], top["channels_last"])
    res["host_sync"] = {
        **kind,
        "trainer_images_per_s": top["synthetic_images_per_s"],
        "no_sync_images_per_s": unsynced,
        "trainer_vs_no_sync": top["synthetic_images_per_s"] / unsynced,
    }
    if data:
        loader = Loader(data, batch_size=batch_size, device=device, threads=threads, stats=stats, opened=split)
        r = tb.end_to_end(make_top(), loader, top["precision"], top["channels_last"])
        res["end_to_end"] = {
            **kind,
            "images_per_s": r["images_per_s"],
            "data_wait_frac": r["data_wait_frac"],
            "device_wait_frac": r["device_wait_frac"],
            "synthetic_images_per_s": top["synthetic_images_per_s"],
            "end_to_end_vs_synthetic": r["images_per_s"] / top["synthetic_images_per_s"],
        }
    res["python"] = m["python"]
    return res
