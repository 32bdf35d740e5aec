"""What a run trains, built the same way on every rank: the network on its devices (one GPU, or the paper's two
towers on two), SGD, the plateau schedule and the fp16 loss scaler. A resume loads its state into these
(resume.load_state)."""

from __future__ import annotations

import random

import numpy as np
import torch

from alexdata.errors import TrainError
from alexmodel import distributed
from alexmodel.config import OptimConfig, RunConfig
from alexmodel.distributed import Dist
from alexmodel.model import AlexNet, ModelConfig

TRAIN_COPIES = 3  # float32 copies of every parameter while training: the weights, their gradients, SGD's momentum


def available_bytes(device: str, index: int = 0) -> int | None:
    """Memory a run may still take: the GPU's free memory, or on the CPU MemAvailable (/proc/meminfo) capped by
    the cgroup's memory.max; None where neither can be read."""
    if device == "gpu":
        return torch.cuda.mem_get_info(index)[0]
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
            found += [int(text)] if text.isdigit() else []
    except OSError:
        pass
    return min(found) if found else None


def refuse_too_big(model_cfg: ModelConfig, device: str, index: int = 0) -> None:
    """TrainError with one line when the parameters alone (TRAIN_COPIES float32 copies, before any activation)
    need more memory than the device has free: --width 8 asks ~47 GB, and the allocator's traceback came late."""
    params = model_cfg.parameter_count()
    need, free = TRAIN_COPIES * 4 * params, available_bytes(device, index)
    if free is not None and need > free:
        raise TrainError(
            f"--width {model_cfg.width:g}: {params / 1e9:.2f} G parameters need {need / 2**30:.1f} GiB to train "
            f"(weights, gradients, momentum; activations on top), and the {'GPU' if device == 'gpu' else 'machine'} "
            f"has {free / 2**30:.1f} GiB free: choose a smaller --width (1.0 is the paper's, 61 M parameters)"
        )


def build_net(model_cfg: ModelConfig, run: RunConfig, d: Dist) -> tuple[torch.nn.Module, tuple[torch.device, ...]]:
    """(net, this rank's devices); seeds every RNG with run.seed first, then torch's with one per rank. Refuses a
    net whose parameters do not fit the device (`refuse_too_big`) before allocating it."""
    # Same init on every rank (DDP also broadcasts rank 0's weights), then a different dropout stream per rank.
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    random.seed(run.seed)
    devices = distributed.tower_devices(run.device, run.placement, d.local_rank)
    refuse_too_big(model_cfg, run.device, devices[0].index or 0)  # two towers: half each; the whole is the bound
    net = AlexNet(
        model_cfg.num_classes,
        width=model_cfg.width,
        init=model_cfg.init,
        devices=devices if len(devices) == 2 else None,
    )
    if len(devices) == 1:
        net = net.to(devices[0])
    net = net.to(memory_format=torch.channels_last) if run.channels_last else net
    torch.manual_seed(run.seed + 1 + d.rank)
    if run.device == "gpu":
        torch.backends.cudnn.benchmark = True  # fixed 227x227 inputs: pick the fastest conv algorithms once
        torch.backends.cuda.matmul.allow_tf32 = run.tf32  # process-wide, as cudnn.benchmark
    return net, devices


def build_optimizer(net: torch.nn.Module, optim: OptimConfig, run: RunConfig) -> tuple:
    """(SGD, ReduceLROnPlateau, GradScaler) for `net`."""
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        # fp16 on the GPU: fused, so GradScaler skips an overflowing step on the device; with the default
        # (foreach) SGD it reads the inf check on the host every step
        fused=run.fused_sgd or (run.precision == "fp16" and run.device == "gpu") or None,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.precision == "fp16")
    return optimizer, plateau, scaler
