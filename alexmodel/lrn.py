"""Local response normalisation, paper §3.3, with the fewest bytes moved that eager PyTorch allows.

    b_i = a_i / d_i^beta,   d_i = k + alpha * sum_{j in window(i)} a_j^2

the window being the n maps centred on i, clipped at the edges of each tower's channels (so `groups` independent
channel groups on one device). The backward is written out rather than taped by autograd:

    da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i in window(j)} g_i a_i d_i^(-beta-1)

(the window is symmetric, so "i whose window holds j" is "i in j's window"). Each window sum is one stride-1,
zero-padded avg_pool2d with divisor 1 over a one-channel view of the maps: no padded copy, no atomic-add
backward, no in-place op on a view for autograd to copy around (`F.avg_pool3d` with padding and
`mean.view(...).mul_()` did both: alexnet bench bytes, docs/BENCHMARKS.md). Squares and sums are float32
(float64 for a float64 input), the output keeps the input's dtype and memory format (channels_last stays
channels_last), and autocast does not reach inside.

`IMPLS` names the implementations `LRN.impl` takes: "analytic" (this file), "triton" (alexmodel/lrn_triton.py:
two fused kernels for CUDA tensors, 10 bytes per bf16 element), "auto" (the default: on a CUDA tensor the faster
of "triton" and "analytic", timed once per shape and layout when first met, as cudnn.benchmark picks
convolutions; "analytic" elsewhere, and when Triton is missing or its kernels fail to build), "pool" (autograd
through avg_pool3d, kept as the reference the check measures against) and "identity" (no normalisation: the
ablation that measures the LRN's share of a step). Under torch.compile "analytic" traces the plain formula
(`lrn_functional`) instead, which the compiler fuses.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

IMPLS = ("auto", "analytic", "triton", "pool", "identity")
_CHOSEN: dict = {}  # "auto": (device, shape, strides, dtype, groups) -> "triton" or "analytic"


def window_sum(t: torch.Tensor, groups: int, size: int) -> torch.Tensor:
    """The sum of `t` over each channel's window of `size` maps inside its group, zero past the group's edges: one
    stride-1 avg_pool2d with zero padding and divisor 1 over a one-channel view, NCHW maps as (B*groups, 1,
    C/groups, H*W) with a (size, 1) window, channels_last maps as (B*H*W*groups, 1, 1, C/groups) with a (1, size)
    one; both views need no copy, and the result has t's shape and memory format. (avg_pool2d's backward
    gathers, without atomics; a one-channel convolution would do the same sum in as few bytes but runs 3-4x
    slower on the CPU: docs/BENCHMARKS.md.)"""
    b, c, h, w = t.shape
    n, pad = c // groups, size // 2
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        v = t.permute(0, 2, 3, 1).reshape(b * h * w * groups, 1, 1, n)
        s = F.avg_pool2d(v, (1, size), stride=1, padding=(0, pad), divisor_override=1)
        return s.view(b, h, w, c).permute(0, 3, 1, 2)
    v = t.reshape(b * groups, 1, n, h * w)
    return F.avg_pool2d(v, (size, 1), stride=1, padding=(pad, 0), divisor_override=1).view(b, c, h, w)


class _AnalyticLRN(torch.autograd.Function):
    """The module docstring's forward and backward; saves the input, d^-beta and d (float32)."""

    @staticmethod
    def forward(ctx, x, groups: int, size: int, alpha: float, beta: float, k: float):
        with torch.autocast(x.device.type, enabled=False):
            acc = torch.promote_types(x.dtype, torch.float32)
            # alpha a^2 in float32 straight from the input, one pass: a one-element float32 tensor (not 0-dim,
            # which type promotion would treat as a scalar) makes addcmul compute in float32
            zero = torch.zeros((1, 1, 1, 1), dtype=acc, device=x.device)
            total = window_sum(torch.addcmul(zero, x, x, value=alpha), groups, size)  # alpha sum a^2
            d = torch.add(total, k)  # k + alpha sum a^2
            del total
            s = d.pow(-beta)
            y = torch.mul(x, s, out=torch.empty_like(x))  # computed in float32, stored in x's dtype
        ctx.save_for_backward(x, s, d)
        ctx.conf = groups, size, alpha, beta
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, s, d = ctx.saved_tensors
        groups, size, alpha, beta = ctx.conf
        with torch.autocast(x.device.type, enabled=False):
            gs = g * s  # g d^-beta, float32
            u = (gs * x).div_(d)  # g a d^(-beta-1)
            w = window_sum(u, groups, size)
            del u
            dx = torch.addcmul(gs, x, w, value=-2.0 * alpha * beta, out=torch.empty_like(x))
        return dx, None, None, None, None, None


def lrn_functional(x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The formula as plain out-of-place tensor operations, for torch.compile: the window is a sum of `size`
    shifted slices of the zero-padded squares, which inductor fuses with the squares, the power and the product
    into a few kernels, and differentiates itself (in eager the same code moves more bytes than `_AnalyticLRN`)."""
    b, c, h, w = x.shape
    n, pad = c // groups, size // 2
    sq = x.to(torch.promote_types(x.dtype, torch.float32)).square().view(b, groups, n, h, w)
    padded = F.pad(sq, (0, 0, 0, 0, pad, pad))
    total = sum(padded[:, :, i : i + n] for i in range(1, size)) + padded[:, :, :n]
    return (x * (k + alpha * total.reshape(b, c, h, w)).pow(-beta)).to(x.dtype)


def lrn_pool(x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The same formula taped by autograd through avg_pool3d (the implementation before "analytic"): the
    reference the check and `alexnet bench bytes` measure the analytic one against."""
    b, c, h, w = x.shape
    sq = x.to(torch.promote_types(x.dtype, torch.float32)).square()
    sq, pad = sq.view(b, groups, c // groups, h, w), size // 2
    if c // groups < size:  # avg_pool3d wants the unpadded depth >= the window (narrow test models)
        sq, pad = F.pad(sq, (0, 0, 0, 0, pad, pad)), 0
    mean = F.avg_pool3d(sq, (size, 1, 1), stride=1, padding=(pad, 0, 0))
    scale = mean.view(b, c, h, w).mul_(alpha * size).add_(k).pow_(-beta)
    return x * scale.to(x.dtype)


def choose(x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> str:
    """ "auto"'s choice for `x`: "triton" where it is faster on this GPU for this shape (forward + backward, timed
    with CUDA events when first met), else "analytic"; never Triton on the CPU or while a CUDA graph is captured."""
    key = (x.device, tuple(x.shape), x.stride(), x.dtype, groups)
    if key in _CHOSEN:
        return _CHOSEN[key]
    usable = x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if not usable or importlib.util.find_spec("triton") is None:
        _CHOSEN[key] = "analytic"
        return "analytic"
    if torch.cuda.is_current_stream_capturing() or torch.is_inference_mode_enabled() or x.is_inference():
        return "analytic"  # no timing inside a graph capture, nor a backward in inference mode: ask again later
    args = (groups, size, alpha, beta, k)
    try:
        from alexmodel.lrn_triton import lrn_triton

        with torch.cuda.device(x.device):  # the events and the kernels on the tensor's GPU (two towers: cuda:1 too)
            ms = {"triton": _time_ms(lrn_triton, x, args), "analytic": _time_ms(_AnalyticLRN.apply, x, args)}
        _CHOSEN[key] = min(ms, key=ms.get)
    except Exception as e:  # a Triton that cannot build for this GPU: the eager LRN still works
        warnings.warn(
            f"the Triton LRN failed on {tuple(x.shape)} {x.dtype} ({type(e).__name__}: {e}): using the analytic one"
        )
        _CHOSEN[key] = "analytic"
    return _CHOSEN[key]


def _time_ms(fn, x: torch.Tensor, args: tuple, reps: int = 5) -> float:
    """Milliseconds of `reps` forward + backward passes of fn(x, *args), after two untimed ones (compilation)."""
    with torch.enable_grad():
        t = x.detach().requires_grad_()
        g = torch.ones_like(t)
        for _ in range(2):
            fn(t, *args).backward(g)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn(t, *args).backward(g)
        end.record()
        end.synchronize()
    return start.elapsed_time(end)


class LRN(nn.Module):
    """The paper's LRN (module docstring) over `groups` independent channel groups: `alpha` multiplies the
    window's sum of squares, as in the paper (nn.LocalResponseNorm divides its alpha by the window instead).
    `impl`: one of IMPLS."""

    def __init__(self, size: int, *, alpha: float, beta: float, k: float, impl: str = "auto"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"LRN impl={impl!r}: expected one of {IMPLS}")
        self.size, self.alpha, self.beta, self.k, self.impl = size, alpha, beta, k, impl

    def forward(self, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
        if self.impl == "identity":
            return x
        if x.shape[1] % groups:
            raise ValueError(f"LRN: {x.shape[1]} channels do not split into {groups} groups")
        if self.impl == "pool":
            return lrn_pool(x, groups, self.size, self.alpha, self.beta, self.k)
        if torch.compiler.is_compiling():  # torch.compile fuses the plain formula, forward and backward
            return lrn_functional(x, groups, self.size, self.alpha, self.beta, self.k)
        args = (groups, self.size, self.alpha, self.beta, self.k)
        impl = choose(x, *args) if self.impl == "auto" else self.impl
        if impl == "triton":
            from alexmodel.lrn_triton import lrn_triton

            return lrn_triton(x, *args)
        return _AnalyticLRN.apply(x, *args)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, impl={self.impl!r}"
