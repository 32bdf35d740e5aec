"""The modern recipe's learning-rate schedule, step by step: a linear warmup, then cosine decay (the paper's
recipe cuts the lr on a plateau of the val error instead: torch's ReduceLROnPlateau, made in build.py)."""

from __future__ import annotations

import math

from alexmodel.config import OptimConfig


def cosine_lr(o: OptimConfig, steps_per_epoch: int, step: int) -> float:
    """The lr at 0-based global `step`: a linear ramp over `o.warmup_epochs` (Goyal et al. 2017 §2.2), then
    cosine decay to 0 (Loshchilov & Hutter 2017); never above the peak `o.lr`."""
    total, warm = o.epochs * steps_per_epoch, o.warmup_epochs * steps_per_epoch
    if step < warm:
        # A warmup capped to a fraction of an epoch ends between two steps (warm = 2.5: steps 0, 1, 2): its last
        # step would overshoot, (2 + 1) / 2.5 = 1.2x the peak, so the ramp stops at the peak
        return o.lr * min(1.0, (step + 1) / warm)
    return 0.5 * o.lr * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))
