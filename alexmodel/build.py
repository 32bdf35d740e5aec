"""What a run trains, built the same way on every rank: the network on its devices (one GPU, or the paper's two
towers on two), SGD, the plateau schedule and the fp16 loss scaler. A resume loads its state into these
(resume.load_state)."""

from __future__ import annotations

import random

import numpy as np
import torch

from alexmodel import distributed
from alexmodel.config import OptimConfig, RunConfig
from alexmodel.distributed import Dist
from alexmodel.model import AlexNet, ModelConfig


def build_net(model_cfg: ModelConfig, run: RunConfig, d: Dist) -> tuple[torch.nn.Module, tuple[torch.device, ...]]:
    """(net, this rank's devices); seeds every RNG with run.seed first, then torch's with one per rank."""
    # Same init on every rank (DDP also broadcasts rank 0's weights), then a different dropout stream per rank.
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    random.seed(run.seed)
    devices = distributed.tower_devices(run.device, run.placement, d.local_rank)
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
