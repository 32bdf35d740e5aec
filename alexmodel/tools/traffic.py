"""`alexnet bench bytes`: the bytes one training step reads and writes, counted from every aten operator it runs.

A memory-bound step's time on a GPU is about its bytes over the memory's bandwidth (an H200: ~4.8 TB/s peak,
~4 TB/s reached), and the count does not depend on the machine: it is measured on the CPU and holds on the GPU,
where the same aten operators run (cuDNN and cuBLAS kernels read and write the same tensors). Each operator
counts the bytes of its tensor inputs and outputs once each (an in-place operator reads and writes its tensor);
views (`view`, `permute`, `expand`, ...) move nothing and are not counted, and an expanded tensor counts only the
storage behind it. Kernels that fuse several operators move fewer bytes than this, so the count is the eager
step's traffic, the figure a fused kernel has to beat.

Counting is exact for one batch size; the step's bytes grow linearly with the batch (the weights, gradients and
momentum add a constant), so two small batches give the line, extrapolated to the batch asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Operators that allocate or alias without moving data through memory.
_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh"}


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches in `t`: its elements, but no more than the storage behind it (an expanded tensor)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def _unique_bytes(tree) -> int:
    seen, total = set(), 0
    for t in tree_flatten(tree)[0]:
        if isinstance(t, torch.Tensor) and t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
            if key not in seen:
                seen.add(key)
                total += _tensor_bytes(t)
    return total


class ByteCount(TorchDispatchMode):
    """Sums the bytes every aten operator run inside it reads and writes, in `total`, and by operator in `by_op`."""

    def __init__(self):
        super().__init__()
        self.total, self.by_op = 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in _FREE:
            return out
        moved = _unique_bytes((args, kwargs)) + _unique_bytes(out)
        self.total += moved
        self.by_op[name] = self.by_op.get(name, 0) + moved
        return out


@dataclass(frozen=True)
class StepBytes:
    """One training step's memory traffic in bytes at `batch_size`, extrapolated from two traced batches."""

    batch_size: int
    channels_last: bool
    lrn: str
    total_gb: float
    per_image_mb: float
    constant_gb: float  # the batch-independent part: weights, gradients, momentum, SGD's update
    top_ops_gb: dict  # the operators that move most, in GB at batch_size


def traced_step(model, images: torch.Tensor, labels: torch.Tensor, opt, precision: str) -> ByteCount:
    """One forward, backward and SGD step of `model` under autocast `precision` ("bf16", "fp16", "fp32"), traced."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with ByteCount() as counted:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return counted


def step_bytes(
    *,
    batch_size: int = 256,
    channels_last: bool = False,
    lrn: str = "analytic",
    precision: str = "bf16",
    width: float = 1.0,
    classes: int = 1000,
    traced: tuple[int, int] = (2, 4),
    top: int = 8,
) -> StepBytes:
    """The bytes one training step of AlexNet(`classes`, width=`width`) moves at `batch_size` (module docstring),
    with the LRNs' implementation `lrn` (alexmodel.lrn.IMPLS)."""
    from alexmodel.model import AlexNet, set_lrn

    counts = []
    for b in traced:
        torch.manual_seed(0)
        model = set_lrn(AlexNet(classes, width=width), lrn)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        images = (torch.randn(b, 3, 227, 227) * 60).contiguous(memory_format=fmt)
        labels = torch.randint(0, classes, (b,))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        traced_step(model, images, labels, opt, precision)  # the momentum buffers exist from the second step on
        counts.append(traced_step(model, images, labels, opt, precision))
    (b0, c0), (b1, c1) = zip(traced, counts)
    at = lambda v0, v1: v0 + (v1 - v0) * (batch_size - b0) / (b1 - b0)
    ops = {k: at(c0.by_op.get(k, 0), c1.by_op.get(k, 0)) for k in set(c0.by_op) | set(c1.by_op)}
    top_ops = dict(sorted(((k, v / 1e9) for k, v in ops.items()), key=lambda kv: -kv[1])[:top])
    per_image = (c1.total - c0.total) / (b1 - b0)
    return StepBytes(
        batch_size=batch_size,
        channels_last=channels_last,
        lrn=lrn,
        total_gb=at(c0.total, c1.total) / 1e9,
        per_image_mb=per_image / 1e6,
        constant_gb=(c0.total - per_image * b0) / 1e9,
        top_ops_gb={k: round(v, 3) for k, v in top_ops.items()},
    )
