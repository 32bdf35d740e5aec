"""Ask the machine once: how many cores, which device, what machine. Every module asks here."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import subprocess
import time


def cores() -> int:
    """The cores this process may use: its CPU affinity (which a batch system may have cut), and no more than its
    cgroup's CPU quota (a container or a Slurm job given 2 CPUs of a 64-core node: `quota_cores`)."""
    affinity = len(os.sched_getaffinity(0))
    quota = quota_cores()
    return max(1, min(affinity, quota)) if quota else affinity


def quota_cores(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """The CPUs this process's cgroup may use by its quota, rounded up: the tightest quota of its own cgroup (the
    path `proc` names: a Slurm job's or a systemd unit's, without a cgroup namespace) and its ancestors up to
    `root` (cgroup v2 `cpu.max`, v1 `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`); None when none is set."""
    own = {"v2": "", "v1": ""}  # the process's cgroup under each hierarchy, relative to its root
    try:
        with open(proc) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    own["v2"] = path.lstrip("/")
                elif "cpu" in controllers.split(","):
                    own["v1"] = path.lstrip("/")
    except (OSError, ValueError):
        pass
    quotas = []
    for kind, rel in own.items():
        parts = [p for p in rel.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the process's own cgroup first, then each ancestor
            base = os.path.join(root, *parts[:depth]) if kind == "v2" else os.path.join(root, "cpu", *parts[:depth])
            quotas.append(_quota_at(base, kind))
    found = [q for q in quotas if q]
    return min(found) if found else None


def _quota_at(base: str, kind: str) -> int | None:
    """The CPU quota of the cgroup directory `base` in CPUs (rounded up), None when it sets none."""
    import math

    try:
        if kind == "v2":
            with open(os.path.join(base, "cpu.max")) as f:
                quota, period = f.read().split()[:2]
        else:
            with open(os.path.join(base, "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(base, "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        q, p = int(quota), int(period)
    except (OSError, ValueError):  # no such file, or "max": no quota
        return None
    return math.ceil(q / p) if q > 0 and p > 0 else None


def cores_per_rank() -> int:
    """cores() shared among the ranks on this node (torchrun sets LOCAL_WORLD_SIZE): every rank with all cores
    would oversubscribe them LOCAL_WORLD_SIZE times."""
    return max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


# A forked child must never free what it inherited: a DALI pipeline that was garbage in the parent (a reference
# cycle its collector had not reached yet) would be destroyed by the child's collector, and DALI's executor
# destructor waits forever there on threads that a fork does not copy (seen in CI: a prepare in a process that had
# trained hung). So every child of a process that imports the project, forked by us or by anyone (a torch
# DataLoader's workers), freezes what it inherited (gc.freeze: its collector never looks at those objects) before
# any of its own code runs. Objects the child creates are collected as usual.
os.register_at_fork(after_in_child=gc.freeze)


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device() -> str:
    """ "gpu" when torch sees a CUDA GPU, else "cpu"."""
    return "gpu" if has_gpu() else "cpu"


def torch_device(device: str, index: int = 0):
    """The torch.device of a project device name: "gpu" -> cuda:index, "cpu" -> cpu."""
    import torch

    return torch.device("cuda", index) if device == "gpu" else torch.device("cpu")


def dali_device_id(device: str, index: int = 0) -> int | None:
    """DALI's device_id: the GPU's index, or None, which builds a CPU-only pipeline."""
    return index if device == "gpu" else None


def synchronizer(device: str):
    """A function that waits for the work queued on torch's current CUDA stream, the consumer's (a loader's batch
    copy, a training step; nothing to wait for on the CPU): for timing. Not torch.cuda.synchronize, which would
    also wait for the batches DALI prepares ahead on its own streams and bill them to the batch in hand."""
    import torch

    return (lambda: torch.cuda.current_stream().synchronize()) if device == "gpu" else (lambda: None)


def device_synchronizer(device: str):
    """A function that waits for all of the device's queued work: for a bare DALI pipeline's outputs, which are
    on DALI's streams, not torch's (the decode-only ceiling, so it is the harder bound on the ratio to it)."""
    import torch

    return torch.cuda.synchronize if device == "gpu" else (lambda: None)


def machine(device: str | None = None) -> dict:
    """What a benchmark or a run record says about the machine: CPU, cores, library versions, and with
    device "gpu" the GPU, its memory, CUDA, cuDNN and the driver."""
    import numpy as np
    import PIL

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": cores(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "host": platform.node(),
        # the 1-minute load average when the figures were taken: a reader can tell noise (a busy box) from a figure
        "load_1min": round(os.getloadavg()[0], 2),
    }
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        return info
    if device is not None:
        info["device"] = device
    if device == "gpu":
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            driver=nvidia_smi("driver_version"),
        )
    return info


def nvidia_smi(field: str) -> str | None:
    """One field of `nvidia-smi --query-gpu` for GPU 0, or None where nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


LOG_EVERY_S = 30.0  # a progress line's interval where stderr is a log file, not a terminal


class _Lines:
    """tqdm's interface for a log that is not a terminal (Slurm, nohup): a plain line every `every` seconds and
    one at the end, in tqdm's words, instead of a stream of carriage-return frames."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it", unit_scale=False, every=LOG_EVERY_S, **_):
        import sys

        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.n, self.every, self.postfix, self.file = 0, every, "", sys.stderr
        self.t0 = self.shown = time.perf_counter()
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def line(self) -> str:
        from tqdm import tqdm

        return tqdm.format_meter(
            self.n,
            self.total,
            time.perf_counter() - self.t0,
            prefix=self.desc,
            unit=self.unit,
            unit_scale=self.unit_scale,
            postfix=self.postfix or None,
            bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
            if self.total
            else None,
        )

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.shown >= self.every:
            self.show()

    def show(self) -> None:
        self.shown = time.perf_counter()
        print(self.line(), file=self.file, flush=True)

    def set_postfix(self, refresh: bool = True, **kw) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in kw.items()), refresh)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        if refresh:  # a bar whose count is set, not updated (a time box): a line when one is due
            self.update(0)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.every is not None:
            self.show()
            self.every = None  # closed: one end line, and no more

    def write(self, s: str) -> None:
        print(s, file=self.file, flush=True)


def progress_bar(iterable=None, *, enabled: bool = True, **kw):
    """A tqdm bar on stderr where it is a terminal, plain lines every LOG_EVERY_S seconds where it is a log file,
    nothing when not `enabled`: every long command's progress. kw: tqdm's (total, desc, unit, ...)."""
    import sys

    from tqdm import tqdm

    if not enabled:
        return tqdm(iterable, disable=True, **kw)
    if sys.stderr.isatty():
        return tqdm(iterable, **kw)
    return _Lines(iterable, **kw)
