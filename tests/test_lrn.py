"""alexmodel.lrn against the paper's formula (§3.3) computed literally in numpy float64: forward and gradient,
within each tower, on towers narrower than the window, in bf16/fp16 under autocast and channels_last; and the
bytes its step moves (alexmodel/tools/traffic.py) against the autograd-taped implementation it replaced."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import limit

from alexmodel.lrn import LRN, lrn_functional
from alexmodel.model import LRN_ALPHA, LRN_BETA, LRN_K, LRN_N, lrn, within_towers
from alexmodel.tools.traffic import ByteCount

CL = torch.channels_last


def lrn_reference(a, towers=2, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Paper §3.3, literally: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta,
    with N the maps of one tower and i, j counted within that tower."""
    b = np.empty_like(a)
    N = a.shape[1] // towers
    for tower in range(towers):
        for i in range(N):
            lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
            s = sum(a[:, tower * N + j] ** 2 for j in range(lo, hi + 1))
            b[:, tower * N + i] = a[:, tower * N + i] / (k + alpha * s) ** beta
    return b


def test_lrn_constants_are_the_papers():
    assert (LRN_K, LRN_N, LRN_ALPHA, LRN_BETA) == (2.0, 5, 1e-4, 0.75)


@pytest.mark.parametrize("channels", [2 * 7, 96])
def test_lrn_matches_the_paper_formula_within_each_tower(channels):
    # Scale 30 so that alpha * sum(a^2) (~0.5) is comparable with k = 2 and a wrong alpha shows.
    a = 30 * np.random.default_rng(0).standard_normal((2, channels, 3, 4))
    want = lrn_reference(a)
    x = torch.from_numpy(a)
    one_device = within_towers(lrn(), x)
    two_towers = torch.cat(within_towers(lrn(), tuple(x.chunk(2, dim=1))), dim=1)
    np.testing.assert_allclose(one_device.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(two_towers.numpy(), want, rtol=1e-12)
    # Sensitivity: normalising across the tower boundary changes the maps next to it.
    across = lrn_reference(a, towers=1)
    half = channels // 2
    assert not np.allclose(across[:, half - 2 : half + 2], want[:, half - 2 : half + 2], rtol=1e-6)


def test_lrn_in_float16_does_not_overflow():
    """Activations of a few hundred (0-255 inputs) square past float16's 65504: the result must still be the
    paper's formula, not 0 from an infinite divisor."""
    a = np.random.default_rng(1).uniform(200, 400, (1, 10, 3, 3))
    want = lrn_reference(a, towers=1)
    got = lrn()(torch.from_numpy(a).half())
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-3)  # float16 rounding of input and output


def test_lrn_towers_do_not_mix():
    x = torch.randn(1, 20, 5, 5, dtype=torch.float64) * 30
    y = within_towers(lrn(), x)
    x2 = x.clone()
    x2[:, 10:] *= 5  # change only tower 1
    y2 = within_towers(lrn(), x2)
    assert torch.equal(y[:, :10], y2[:, :10])
    assert not torch.allclose(y[:, 10:12], y2[:, 10:12] / 5)


@pytest.mark.parametrize("towers", [1, 2])
def test_lrn_under_bf16_autocast_stays_bf16_and_keeps_the_formula(towers):
    """Under autocast the LRN hands the next layer bf16, as every other layer does, and still computes the
    paper's formula (squares summed in float32) up to bf16 rounding of its input and output."""
    a = 30 * np.random.default_rng(2).standard_normal((2, 12, 3, 4))
    x = torch.from_numpy(a).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = within_towers(lrn(), x) if towers == 2 else lrn()(x)
    assert got.dtype == torch.bfloat16
    want = lrn_reference(x.double().numpy(), towers=towers)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-2, atol=1e-2)


def test_lrn_on_towers_narrower_than_its_window():
    """A 1/16-width model has 3 maps per tower in layer 1, fewer than the window of 5."""
    a = 30 * np.random.default_rng(3).standard_normal((2, 6, 3, 4))
    np.testing.assert_allclose(within_towers(lrn(), torch.from_numpy(a)).numpy(), lrn_reference(a), rtol=1e-12)


def lrn_grad_reference(a, g, towers=2, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """d/da of sum(g * b) for the paper's b, by the chain rule written out per map (float64):
    da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i d_i^(-beta-1)."""
    N = a.shape[1] // towers
    d = np.empty_like(a)
    for tower in range(towers):
        for i in range(N):
            lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
            d[:, tower * N + i] = k + alpha * sum(a[:, tower * N + j] ** 2 for j in range(lo, hi + 1))
    da = g * d**-beta
    for tower in range(towers):
        for j in range(N):
            for i in range(max(0, j - n // 2), min(N - 1, j + n // 2) + 1):
                ci, cj = tower * N + i, tower * N + j
                da[:, cj] -= 2 * alpha * beta * a[:, cj] * g[:, ci] * a[:, ci] * d[:, ci] ** (-beta - 1)
    return da


@pytest.mark.parametrize("channels", [6, 2 * 7, 96])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_gradient_is_the_papers_and_passes_gradcheck(channels, channels_last):
    """Towers of 3 (narrower than the window), 7 and 48 maps; the gradient against the chain rule in numpy and
    against finite differences (gradcheck), and channels_last in gives channels_last out, forward and back."""
    rng = np.random.default_rng(4)
    a, g = 30 * rng.standard_normal((2, channels, 3, 4)), rng.standard_normal((2, channels, 3, 4))
    fmt = CL if channels_last else torch.contiguous_format
    x = torch.from_numpy(a).contiguous(memory_format=fmt).requires_grad_()
    y = within_towers(lrn(), x)
    np.testing.assert_allclose(y.detach().numpy(), lrn_reference(a), rtol=1e-12)
    (dx,) = torch.autograd.grad(y, x, torch.from_numpy(g).contiguous(memory_format=fmt))
    np.testing.assert_allclose(dx.numpy(), lrn_grad_reference(a, g), rtol=1e-10, atol=1e-13)
    if channels_last:
        assert y.is_contiguous(memory_format=CL) and dx.is_contiguous(memory_format=CL)
    # gradcheck differentiates every element: one pixel of one image keeps it to C inputs (the window runs
    # along the channels only, so one pixel tests all of it)
    small = x.detach()[:1, :, :1, :1].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn()(t, groups=2), (small,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_dtype_stays_and_the_gradient_is_the_papers(dtype):
    """Autocast does not reach inside (the squares and sums stay float32): output and gradient come back in the
    input's dtype, within its rounding of the float64 formula."""
    rng = np.random.default_rng(5)
    a, g = 30 * rng.standard_normal((2, 12, 5, 5)), rng.standard_normal((2, 12, 5, 5))
    x = torch.from_numpy(a).to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = within_towers(lrn(), x)
    (dx,) = torch.autograd.grad(y, x, torch.from_numpy(g).to(dtype))
    assert y.dtype == dtype and dx.dtype == dtype
    a_rounded, g_rounded = x.detach().double().numpy(), torch.from_numpy(g).to(dtype).double().numpy()
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(y.detach().double().numpy(), lrn_reference(a_rounded), **tol)
    np.testing.assert_allclose(dx.double().numpy(), lrn_grad_reference(a_rounded, g_rounded), **tol)


def test_every_implementation_is_the_same_lrn():
    """ "pool" (the autograd-taped avg_pool3d reference) and "analytic" agree in value and gradient; "identity"
    (the ablation) is the identity; an unknown name is refused."""
    a = 30 * np.random.default_rng(6).standard_normal((2, 14, 3, 4))
    out = {}
    for impl in ("auto", "analytic", "pool", "identity"):
        x = torch.from_numpy(a).requires_grad_()
        y = within_towers(LRN(LRN_N, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K, impl=impl), x)
        out[impl] = (y.detach(), torch.autograd.grad(y.square().sum(), x)[0])
    x = torch.from_numpy(a).requires_grad_()
    y = lrn_functional(x, 2, LRN_N, LRN_ALPHA, LRN_BETA, LRN_K)  # what torch.compile traces
    out["functional"] = (y.detach(), torch.autograd.grad(y.square().sum(), x)[0])
    for impl in ("auto", "pool", "functional"):  # "auto" is "analytic" on the CPU
        for got, want in zip(out[impl], out["analytic"]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.equal(out["identity"][0], torch.from_numpy(a))
    with pytest.raises(ValueError, match="impl='fast'"):
        LRN(LRN_N, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K, impl="fast")


def test_byte_count_counts_reads_and_writes_and_skips_views():
    """The tracer against hand counts: an out-of-place add reads two tensors and writes one, an in-place add
    reads and writes its tensor, a view and an expand move nothing, an expanded operand counts its storage."""
    a, b = torch.ones(1000), torch.ones(1000)
    with ByteCount() as c:
        a + b
    assert c.total == 3 * 4000
    with ByteCount() as c:
        a.add_(b)
    assert c.total == 3 * 4000
    with ByteCount() as c:
        a.view(10, 100).t()
        one = torch.ones(1).expand(1000)
    assert c.total == 4  # torch.ones(1) writes its 4 bytes; the view, transpose and expand move nothing
    with ByteCount() as c:
        a * one
    assert c.total == 4000 + 4 + 4000


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_analytic_lrn_moves_at_most_half_the_bytes_of_autograd_through_avg_pool3d(channels_last):
    """Forward and backward of the paper's first LRN under bf16 autocast (96 maps in two towers of 48), traced:
    the analytic one (a few passes over float32 maps) against the taped one it replaced, and against a floor:
    reading the input and the output's gradient and writing the output and the input's gradient (bf16)."""
    fmt = CL if channels_last else torch.contiguous_format
    x0 = (30 * torch.randn(2, 96, 13, 13)).bfloat16().contiguous(memory_format=fmt)
    g = torch.randn_like(x0)
    moved = {}
    for impl in ("analytic", "pool"):
        x = x0.clone().requires_grad_()
        norm = LRN(LRN_N, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K, impl=impl)
        with ByteCount() as c:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = norm(x, groups=2)
            y.backward(g)
        moved[impl] = c.total
    floor = 4 * x0.numel() * 2
    assert moved["analytic"] <= 0.5 * moved["pool"]
    assert floor < moved["analytic"] < 14 * floor  # ~90 bytes per element: float32 squares, sums, d, d^-beta


TRITON_CHECK = """
import torch
from alexmodel.lrn import lrn_pool
from alexmodel.lrn_triton import lrn_triton
for c, groups in ((6, 2), (14, 2), (96, 2), (10, 1), (160, 2)):  # 160: two channel blocks in channels_last
    for channels_last in (False, True):
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)):
            x = (30 * torch.randn(2, c, 5, 7)).to(dtype)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            g = torch.randn_like(x)
            xt, xr = x.clone().requires_grad_(), x.double().requires_grad_()
            yt, yr = lrn_triton(xt, groups, 5, 1e-4, 0.75, 2.0), lrn_pool(xr, groups, 5, 1e-4, 0.75, 2.0)
            (gt,), (gr,) = torch.autograd.grad(yt, xt, g), torch.autograd.grad(yr, xr, g.double())
            assert yt.dtype == gt.dtype == dtype and yt.stride() == gt.stride() == x.stride()
            torch.testing.assert_close(yt.double(), yr, rtol=tol, atol=tol * yr.abs().max().item())
            torch.testing.assert_close(gt.double(), gr, rtol=tol, atol=tol * gr.abs().max().item())
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (pip install triton)")
def test_the_triton_kernels_are_the_papers_formula_in_the_interpreter():
    """alexmodel/lrn_triton.py's forward and backward kernels, run by Triton's interpreter on the CPU
    (TRITON_INTERPRET=1, read when the kernels are defined: hence a fresh process), against the float64 formula:
    towers narrower than the window, one and two groups, channels_last in and out, float32/bf16/fp16."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run(
        [sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=limit(600)
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (pip install triton)")
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "NCHW"])
def test_the_triton_kernels_compile_for_hopper_without_spilling(channels_last):
    """Compiled for sm_90a without a GPU (ptxas -v, `sm90_resources`) at AlexNet's two LRN shapes (a tower's 48
    maps of 55x55, 128 of 27x27): neither kernel spills to local memory, and each leaves room for four blocks of
    128 threads on a multiprocessor (<= 128 registers a thread). Tiles of 32 elements a thread (the first version)
    spilled 5.2 KB a thread in the backward and took 238 registers in the forward."""
    from alexmodel.lrn_triton import sm90_resources

    for n, hw in ((48, 55 * 55), (128, 27 * 27)):
        for kernel, r in sm90_resources(channels_last, n, hw).items():
            assert r["spill_bytes"] == r["stack_bytes"] == 0 and 0 < r["registers"] <= 128, (n, kernel, r)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="needs a CUDA GPU and Triton"
)
def test_on_the_gpu_triton_matches_the_analytic_lrn_and_auto_picks_one():
    """The compiled kernels (not the interpreter) on the paper's first LRN shape, NCHW and channels_last, float32
    and bf16, forward and backward against the analytic LRN; "auto" then holds a choice for the shape."""
    from alexmodel import lrn as lrn_module
    from alexmodel.lrn_triton import lrn_triton

    for channels_last in (False, True):
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            x = (30 * torch.randn(8, 96, 55, 55, device="cuda")).to(dtype)
            x = x.contiguous(memory_format=CL) if channels_last else x
            g = torch.randn_like(x)
            xt, xa = x.clone().requires_grad_(), x.clone().requires_grad_()
            yt = lrn_triton(xt, 2, LRN_N, LRN_ALPHA, LRN_BETA, LRN_K)
            ya = LRN(LRN_N, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K, impl="analytic")(xa, groups=2)
            (gt,), (ga,) = torch.autograd.grad(yt, xt, g), torch.autograd.grad(ya, xa, g)
            assert yt.stride() == x.stride() and gt.stride() == x.stride()
            torch.testing.assert_close(yt.float(), ya.float(), rtol=tol, atol=tol * ya.abs().max().item())
            torch.testing.assert_close(gt.float(), ga.float(), rtol=tol, atol=tol * ga.abs().max().item())
    lrn()(x, groups=2)
    assert set(lrn_module._CHOSEN.values()) <= {"triton", "analytic"} and lrn_module._CHOSEN
