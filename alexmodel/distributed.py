"""Ranks and stops: data parallelism under torchrun, and the signal protocol that stops every rank at one step.

Started by torchrun (WORLD_SIZE > 1), every rank trains on `Loader(shard_id=rank, num_shards=world_size)`
(disjoint shards that together cover the epoch), DistributedDataParallel all-reduces the gradients (NCCL on
GPUs, gloo on CPUs), and rank 0 writes the run directory. One process otherwise: every function here then
answers without a collective.

A stop: the first of STOP_SIGNALS on any rank asks the run to stop; the ranks agree on the step inside the
all-reduce each step makes already (alexmodel/loop.py), the run checkpoints there and raises TrainStopped, and
the command exits with STOPPED_EXIT. A second signal exits at once, during the run (Signals) or while the process
ends after it (end_on_signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexdata import host
from alexdata.errors import TrainError

# Slurm's preemption, its early warning (--signal), Ctrl-C, a closed terminal or ssh session (unless nohup ignores it)
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP")
STOPPED_EXIT = 75  # the exit status after a stop on a signal (EX_TEMPFAIL: try again later, i.e. resume)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module initialised the process group (and destroys it)


def active() -> bool:
    """Whether this process is one rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def init(device: str, placement: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "gpu":
        torch.cuda.set_device(local * (2 if placement == "two-tower" else 1))
    if active():
        return Dist(dist.get_rank(), dist.get_world_size(), local)
    dist.init_process_group("nccl" if device == "gpu" else "gloo")
    return Dist(rank, world, local, owned=True)


def close(d: Dist) -> None:
    """Ends the process group where init() started it."""
    if d.owned:
        dist.destroy_process_group()


def tower_devices(device: str, placement: str, local_rank: int) -> tuple[torch.device, ...]:
    """The devices of this rank's model: one, or (tower 0, tower 1) for the two-tower placement."""
    if device == "cpu":
        return (host.torch_device("cpu"),)
    per_rank = 2 if placement == "two-tower" else 1
    first = local_rank * per_rank
    if torch.cuda.device_count() < first + per_rank:
        raise TrainError(
            f"--placement {placement} on local rank {local_rank} needs GPUs "
            f"{first}..{first + per_rank - 1}, but torch sees {torch.cuda.device_count()}"
        )
    return tuple(host.torch_device(device, first + t) for t in range(per_rank))


def gather(obj, d: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, d: Dist, on: torch.device) -> bool:
    """True on every rank when `flag` is true on any (one small all-reduce, at an epoch's end); `on`: this rank's
    device (NCCL reduces CUDA tensors only)."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=on)
    dist.all_reduce(t)
    return bool(t.item())


def barrier(d: Dist) -> None:
    """Every rank waits here for the others (none to wait for in one process)."""
    if d.world > 1:
        dist.barrier()


class TrainStopped(Exception):
    """The run stopped on a signal after writing an exact checkpoint; the message says where and how to resume.
    rank: the rank that raised it (a command prints the line on rank 0 only)."""

    def __init__(self, message: str, rank: int = 0):
        super().__init__(message)
        self.rank = rank


class Signals:
    """The first STOP_SIGNALS signal asks the run to stop after the step all ranks agree on; a second exits at
    once (after a checkpoint being written, so no half file and no traceback)."""

    def __init__(self):
        self.received: str | None = None
        self.saving, self.pending, self.old = False, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for name in STOP_SIGNALS:
                sig = getattr(signal, name)
                if signal.getsignal(sig) is signal.SIG_IGN and name == "SIGHUP":
                    continue  # nohup asked for the run to outlive its terminal
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            # os.write, not print: a handler may interrupt a print to stderr (tqdm's), and print is not reentrant.
            os.write(
                2,
                f"train: {name}: stopping after this step and writing a checkpoint (again to exit at once)\n".encode(),
            )
        elif self.saving:
            self.pending = name
        else:
            self._exit(name)

    @staticmethod
    def _exit(name: str) -> None:
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


def end_on_signal(status: int) -> None:
    """Once a stopped run's checkpoint is written the process only has to end, and that can take seconds (DALI joins
    its threads at exit): from now on a STOP_SIGNALS signal exits at once with `status`, in one line, instead of a
    KeyboardInterrupt traceback from wherever the shutdown was. For a command ending its process; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum, frame) -> None:
        name = signal.Signals(signum).name
        try:
            os.write(2, f"train: {name}: exiting at once; the checkpoint is written\n".encode())
        finally:
            os._exit(status)

    for name in STOP_SIGNALS:
        sig = getattr(signal, name)
        if not (name == "SIGHUP" and signal.getsignal(sig) is signal.SIG_IGN):  # nohup's choice stays
            signal.signal(sig, handle)


def launcher(argv0: str, parent: list[str] | None = None) -> list[str]:
    """The words of the command line that launched this process up to its program (argv0), when a launcher
    started it: ["torchrun", "--nproc_per_node", "8", "--no-python", "alexnet"] under torchrun, so a printed
    resume command runs on as many ranks as the run did. [] when this process is no launcher's worker (no
    LOCAL_WORLD_SIZE) or the launcher's command line cannot be read. parent: that command line (default: the
    parent process's, from /proc)."""
    if parent is None:
        if "LOCAL_WORLD_SIZE" not in os.environ:
            return []
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent = [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
        except OSError:
            return []
    name = os.path.basename(argv0)
    at = next((i for i, w in enumerate(parent) if i and os.path.basename(w) == name), None)
    if at is None:
        return []
    words = parent[: at + 1]
    if len(words) > 1 and os.path.basename(words[1]) == "torchrun":  # python /venv/bin/torchrun ...: as typed
        words = ["torchrun", *words[2:]]
    return words
