"""The paper's LRN (alexmodel/lrn.py) as two Triton kernels, for CUDA tensors: the bytes a step moves through it
are the least there are, reading the input and writing the output in the forward, reading the input and the
output's gradient and writing the input's gradient in the backward (10 bytes per element in bf16, against ~94
for the eager "analytic" one: alexnet bench bytes). Nothing else is stored for the backward: it recomputes each
window's sum of squares from the input, which the caches serve.

Each program holds BLOCK_C maps of one image's channel group over BLOCK_P pixels; a window's channels are read
as shifted, masked loads, so the window stops at the group's edges and the towers never mix. A tile is TILE
elements, a few per thread (`_blocks`): the first version's tiles held a whole group over up to 4096 elements, 32
per thread, and its backward spilled 5.2 KB a thread to local memory on sm_90 (ptxas -v; docs/BENCHMARKS.md).
Squares, sums and powers are float32; the output keeps the input's dtype, and a dense NCHW or channels_last
input is read in place (any other is copied to a dense one first). With TRITON_INTERPRET=1 (set before this
module is imported) the kernels run on CPU tensors, which is how tests/test_lrn.py checks them without a GPU.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

TILE = 512  # elements a program holds: 4 a thread at Triton's 4 warps


@triton.jit
def _tile(sb, sc, G, n, HW, CB, PB, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's tile: the offset of its image's channel group, its channel column (the CB-th block of
    BLOCK_C maps in the group), the pixel row and which pixels lie inside the image."""
    pid = tl.program_id(0)  # one axis (2^31 - 1 programs): PB pixel blocks of each of CB channel blocks of each
    q, pb = pid // PB, pid % PB  # image's group
    bg, cb = q // CB, q % CB
    base = (bg // G).to(tl.int64) * sb + ((bg % G) * n).to(tl.int64) * sc
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    return base, c, p, p < HW


@triton.jit
def _sum_sq(X, base, ci, p, sc, sp, n, inside, SIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The float32 sum of a^2 over the window of each channel `ci`, zero past the group's edges."""
    total = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
    for q in tl.static_range(SIZE):
        cq = ci + (q - SIZE // 2)
        v = tl.load(X + base + cq * sc + p * sp, mask=(cq >= 0) & (cq < n) & inside, other=0.0).to(tl.float32)
        total += v * v
    return total


@triton.jit
def _lrn_fwd(
    X, Y, n, HW, G, CB, PB, sb, sc, sp, alpha, beta, k, SIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    base, c, p, inside = _tile(sb, sc, G, n, HW, CB, PB, BLOCK_C, BLOCK_P)
    total = _sum_sq(X, base, c, p, sc, sp, n, inside, SIZE, BLOCK_C, BLOCK_P)
    mine = (c < n) & inside
    x = tl.load(X + base + c * sc + p * sp, mask=mine, other=0.0).to(tl.float32)
    y = x * tl.exp2(-beta * tl.log2(k + alpha * total))  # a d^-beta
    tl.store(Y + base + c * sc + p * sp, y.to(Y.dtype.element_ty), mask=mine)


@triton.jit
def _lrn_bwd(
    X,
    G_OUT,
    DX,
    n,
    HW,
    G,
    CB,
    PB,
    sb,
    sc,
    sp,
    alpha,
    beta,
    k,
    SIZE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i in window(j)} g_i a_i d_i^(-beta-1)
    base, c, p, inside = _tile(sb, sc, G, n, HW, CB, PB, BLOCK_C, BLOCK_P)
    window = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
    own = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)  # g_j d_j^-beta
    for o in tl.static_range(SIZE):
        ci = c + (o - SIZE // 2)  # a neighbour i of j
        valid = (ci >= 0) & (ci < n) & inside
        log_d = tl.log2(k + alpha * _sum_sq(X, base, ci, p, sc, sp, n, inside, SIZE, BLOCK_C, BLOCK_P))
        xi = tl.load(X + base + ci * sc + p * sp, mask=valid, other=0.0).to(tl.float32)
        gi = tl.load(G_OUT + base + ci * sc + p * sp, mask=valid, other=0.0).to(tl.float32)
        window += gi * xi * tl.exp2((-beta - 1.0) * log_d)
        if o == SIZE // 2:
            own = gi * tl.exp2(-beta * log_d)
    mine = (c < n) & inside
    x = tl.load(X + base + c * sc + p * sp, mask=mine, other=0.0).to(tl.float32)
    dx = own - 2.0 * alpha * beta * x * window
    tl.store(DX + base + c * sc + p * sp, dx.to(DX.dtype.element_ty), mask=mine)


def _blocks(n: int, hw: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of a TILE-element tile, longest along the contiguous axis: maps in channels_last (up to
    the group's n, at most 64), pixels in NCHW (up to the map's hw, at most 256)."""
    if channels_last:
        block_c = min(triton.next_power_of_2(n), 64)
        return block_c, max(1, TILE // block_c)
    block_p = min(triton.next_power_of_2(hw), 256)
    return max(1, TILE // block_p), block_p


def _launch(kernel, tensors, x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float):
    b, c, h, w = x.shape
    n = c // groups
    sb, sc, sh, sw = x.stride()
    block_c, block_p = _blocks(n, h * w, channels_last=sc == 1 and c > 1)
    cb, pb = triton.cdiv(n, block_c), triton.cdiv(h * w, block_p)
    grid = (b * groups * cb * pb,)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():  # Triton launches on the current one
        kernel[grid](
            *tensors, n, h * w, groups, cb, pb, sb, sc, sw, alpha, beta, k, SIZE=size, BLOCK_C=block_c, BLOCK_P=block_p
        )


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when it is dense NCHW or channels_last (the outputs, made by empty_like, then share its strides,
    which the kernels use for all three tensors), else a contiguous copy (a channel slice, a strided view)."""
    return x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x.contiguous()


class TritonLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, groups: int, size: int, alpha: float, beta: float, k: float):
        x = _dense(x)
        y = torch.empty_like(x)
        _launch(_lrn_fwd, (x, y), x, groups, size, alpha, beta, k)
        ctx.save_for_backward(x)
        ctx.conf = groups, size, alpha, beta, k
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g = g if g.stride() == x.stride() else torch.empty_like(x).copy_(g)  # the kernel reads both with x's strides
        dx = torch.empty_like(x)
        _launch(_lrn_bwd, (x, g, dx), x, *ctx.conf)
        return dx, None, None, None, None, None


def lrn_triton(x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return TritonLRN.apply(x, groups, size, alpha, beta, k)


def sm90_resources(channels_last: bool, n: int, hw: int) -> dict:
    """What ptxas reports for the forward and backward kernels compiled for sm_90a (H100/H200) at a group of n
    maps of hw pixels in bf16, without a GPU (Triton compiles for a named target; its wheel carries ptxas):
    {"fwd": {"registers", "spill_bytes", "stack_bytes", "scalar_loads"}, "bwd": {...}} per thread. Spills and
    the registers that set a multiprocessor's occupancy are what the kernels' speed on the device hangs on."""
    import os
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    block_c, block_p = _blocks(n, hw, channels_last)
    out = {}
    for name, kernel, pointers in (("fwd", _lrn_fwd, ("X", "Y")), ("bwd", _lrn_bwd, ("X", "G_OUT", "DX"))):
        names = kernel.arg_names
        sig = {
            a: "constexpr"
            if a in ("SIZE", "BLOCK_C", "BLOCK_P")
            else "*bf16"
            if a in pointers
            else "fp32"
            if a in ("alpha", "beta", "k")
            else "i32"
            for a in names
        }
        # as Triton's launcher specialises them: the unit stride a constant, pointers and 16-divisible ints marked
        unit, other = ("sc", "sp") if channels_last else ("sp", "sc")
        consts = {(names.index(a),): v for a, v in (("SIZE", 5), ("BLOCK_C", block_c), ("BLOCK_P", block_p), (unit, 1))}
        attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in (*pointers, "sb", other)}
        compiled = triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", 90, 32))
        ptx = compiled.asm["ptx"]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            r = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True)
        info = r.stderr
        number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, info)) else 0  # noqa: E731
        out[name] = {
            "registers": number(r"Used (\d+) registers"),
            "spill_bytes": number(r"(\d+) bytes spill stores") + number(r"(\d+) bytes spill loads"),
            "stack_bytes": number(r"(\d+) bytes stack frame"),
            "scalar_loads": ptx.count("ld.global.b16"),
        }
    return out
