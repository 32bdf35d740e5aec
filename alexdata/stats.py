"""`alexnet stats`: the training images' RGB mean, std, covariance and its eigenvectors, written to stats.json,
and their mean image, written beside it (stats.mean_image.npy).

AlexNet subtracts "the mean activity over the training set from each pixel" (Krizhevsky et al. 2012, §2): a
256x256x3 mean image of the central 256x256 patches, as cuda-convnet and Caffe's reference AlexNet computed it;
the pipelines also offer one mean per channel (AugmentConfig.mean). It adds PCA colour noise along the
eigenvectors of the 3x3 covariance of "the set of RGB pixel values throughout the ImageNet training set" (§4.1).
The pipelines read all of it from these files; no number derived from data lives in code.

One streaming pass with DALI: read -> `fn.decoders.image` to RGB -> per-image sums, over every training image or
a seeded uniform sample of `max_images`. The sums are exact integers: S1 = sum of x_i (3) and S2 = sum of
x_i * x_j (3x3) over all pixels, kept as int64 (ImageNet's 1.28 M images at shorter side 256 reach ~1e16, a
thousandth of the int64 range). Mean and covariance come from the integers at the end,
cov = (N * S2 - S1 S1^T) / N^2, so nothing cancels catastrophically however many pixels there are.
The mean image is exact too: each image's central 256x256 patch (top-left floor((H - 256) / 2),
floor((W - 256) / 2), after resizing a raw image's shorter side to 256 as the pipelines do; the per-channel
sums take the pixels as stored) is added pixel by pixel into integers, divided by the image count at the end.

Where the sums are computed:
  cpu  the decoded HWC uint8 images go to Python threads: each image is copied into blocks of 256 pixels as
       planar float32 with a row of ones, and one batched matmul (C, 4, 256) @ (C, 256, 4) gives every block's
       S2 and S1. 256 * 255**2 < 2**24, so every partial sum in a block is an integer float32 holds exactly, in
       whatever order the BLAS adds; blocks are then added in float64 (exact below 2**53). The same arithmetic as
       DALI CPU operators (the gpu graph below) measured ~5x slower, and padding a batch to one size (to sum it
       with one matmul) wastes most of the work when portrait and landscape images share a batch. The
       central patch is a numpy view of the decoded (or, on a raw tree, DALI-resized) image, added into a
       uint32 accumulator per thread and batch (`patch_sum`).
  gpu  the mixed (nvJPEG) decoder, then the products (uint16: 255**2 < 2**16) and uint64 sums as DALI GPU
       operators inside the pipeline: only 9 integers per image leave the GPU. The central patches
       (`central_patch`, DALI operators) are summed over the batch by torch on the GPU: one int64 image per
       batch leaves it.

Measured (`alexnet bench stats` on 2000 prepared synth images, 2-core AMD EPYC VM shared with other jobs,
DALI 2.4.0): decode alone ~3000 img/s, the stats pass ~2000 img/s, ratio 0.63-0.67; per image 0.62 ms of CPU
for decoding and 0.34 ms for the sums (transposing copy ~0.14, batched matmul ~0.15). Tried and slower:
float64 matmul per image 0.65 ms, torch.compile'd sums 0.8-1.1 ms, DALI CPU operators +2.3 ms, a batch padded
to one size 73 img/s. On a GPU the sums run beside nvJPEG; not measured here. The mean image adds ~0.06-0.09 ms
of CPU per image (decode 3323, stats pass 1904 img/s, ratio 0.57, 1004 us of CPU per image; 2026-11-29, same
machine and data); DALI's slice and its output copy instead of the numpy view cost ~0.2 ms.

stats.json (indent 1; every value on the 0-255 pixel scale, `scale`: 255):
  mean [3], std [3]           per channel R, G, B; std is the population std over all pixels
  cov [3][3]                  population covariance of (R, G, B) over all pixels
  eigval [3]                  eigenvalues of cov, descending (round-off negatives clipped to 0)
  eigvec [3][3]               eigenvectors as COLUMNS: eigvec[i][j] = component i of eigenvector j; each column
                              has unit length and its largest-magnitude component positive (reproducible signs)
  images, pixels              what was summed
  pixel_sum [3], pixel_product_sum [3][3]   S1 and S2, exact integers (partial passes can be merged)
  source                      data, kind, split, max_images, seed, device, dali version, batch_size, threads,
                              seconds (of the pass)
  mean_image_file             the mean image's file name, in stats.json's folder (`mean_image_path`): a .npy of
                              float64 (256, 256, 3), RGB, each pixel's exact sum over the images / images
  mean_image_sha256           of that file's bytes: `load_stats` refuses a file that is not the one written
A stats.json without the two (written before the mean image existed) loads with mean_image None.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexdata.files import atomic_write
from alexdata.dataset import DataError, Split, open_split
from pipelines.config import SHORTER_SIDE

SCALE = 255  # pixel values of stats.json are on the 0-255 scale
BLOCK = 256  # pixels per float32 block: 256 * 255**2 = 16_646_400 < 2**24, so block sums are exact
READER = "Reader"
VEC3, MAT3 = ("mean", "std", "eigval"), ("cov", "eigvec")
MEAN_IMAGE_SUFFIX = ".mean_image.npy"  # stats.json -> stats.mean_image.npy, beside it


class StatsError(DataError):
    """A stats pass that cannot run or a stats.json that is missing or malformed; one line naming the file."""


# ---------------------------------------------------------------- which images


@dataclass(frozen=True)
class Selection:
    """The images of one pass: the first `images` samples of `tars` read in this order (kind "shards"), or
    `files` (kind "files"). resize: their shorter side is not SHORTER_SIDE yet (a raw tree), so the mean image's
    central patches are taken after resizing it, as the pipelines do."""
    kind: str
    images: int
    tars: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    shard_images: tuple[int, ...] = ()
    files: tuple[str, ...] = ()
    resize: bool = True


def _check_max_images(max_images: int | None) -> None:
    if max_images is not None and max_images < 1:
        raise StatsError(f"--max-images must be >= 1, got {max_images}")


def select(split: Split, max_images: int | None = None, seed: int = 0) -> Selection:
    """All of `split`, or a seeded uniform sample of `max_images` of its images.

    Raw files: `max_images` indices drawn uniformly without replacement (read in sorted order, for locality).
    Shards: whole shards in a seeded random order until `max_images` are covered, the last one only partly.
    `prepare` wrote the training samples in a uniformly shuffled order (a seeded permutation of all of them,
    then cut into shards), so the samples at any set of positions chosen without looking at them are a uniform
    sample of the training set; reading whole shards keeps the reads sequential."""
    from pipelines.common import needs_resize

    _check_max_images(max_images)
    n = split.images if max_images is None else min(max_images, split.images)
    rng = np.random.default_rng(seed)
    resize = needs_resize(split, SHORTER_SIDE)
    if split.kind == "files":
        files = split.files
        if n < len(files):
            files = tuple(files[i] for i in np.sort(rng.choice(len(files), n, replace=False)))
        return Selection("files", n, files=files, resize=resize)
    order = range(len(split.tars)) if n == split.images else rng.permutation(len(split.tars))
    picked, covered = [], 0
    for i in order:
        if covered >= n:
            break
        if split.shard_images[i]:
            picked.append(int(i))
            covered += split.shard_images[i]
    return Selection("shards", n, tuple(split.tars[i] for i in picked), tuple(split.indexes[i] for i in picked),
                     tuple(split.shard_images[i] for i in picked), resize=resize)


# ---------------------------------------------------------------- exact sums


@dataclass
class Moments:
    """Exact integer sums over pixels: s1[i] = sum x_i, s2[i][j] = sum x_i * x_j (values 0-255); patch: the
    per-pixel sum of the images' central patches (int64 (256, 256, 3)), None when not summed."""
    images: int = 0
    pixels: int = 0
    s1: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    s2: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.int64))
    patch: np.ndarray | None = None

    def add(self, images: int, pixels: int, s1: np.ndarray, s2: np.ndarray, patch: np.ndarray | None = None) -> None:
        self.images += images
        self.pixels += pixels
        self.s1 += s1
        self.s2 += s2
        if patch is not None:
            if self.patch is None:
                self.patch = patch.astype(np.int64)
            else:
                self.patch += patch


class _BlockSums:
    """One thread's buffer: an image as planar float32 blocks of BLOCK pixels, rows R, G, B and a row of ones."""

    def __init__(self):
        self.buf = np.zeros((0, 4, BLOCK), np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(4, 4) float64 holding exact integers: [:3, :3] = S2, [3, :3] = S1 of one HWC uint8 image."""
        import torch

        p = img.shape[0] * img.shape[1]
        full, c = p // BLOCK, -(-p // BLOCK)
        if len(self.buf) < c:
            self.buf = np.zeros((c + c // 4, 4, BLOCK), np.float32)
            self.buf[:, 3] = 1
        b = self.buf[:c]
        flat = img.reshape(-1)
        np.copyto(b[:full, :3], flat[:full * BLOCK * 3].reshape(full, BLOCK, 3).transpose(0, 2, 1))
        if c > full:  # the last block, zero-padded: zeros add nothing to S1 or S2
            r = p - full * BLOCK
            b[full, :3, :r] = flat[full * BLOCK * 3:].reshape(r, 3).T
            b[full, :3, r:] = 0
        t = torch.from_numpy(b)
        return torch.bmm(t, t.transpose(1, 2)).sum(0, dtype=torch.float64).numpy()  # (C, 4, 4) -> (4, 4)


def sum_images(images: list[np.ndarray], sums: _BlockSums | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """(pixels, S1 int64 (3,), S2 int64 (3, 3)) of HWC uint8 images, exact. `sums`: a reusable buffer (one per
    thread)."""
    sums = sums or _BlockSums()
    g, pixels = np.zeros((4, 4), np.int64), 0
    for img in images:
        g += sums(img).astype(np.int64)  # integers held exactly in float64: the cast loses nothing
        pixels += img.shape[0] * img.shape[1]
    return pixels, g[3, :3].copy(), g[:3, :3].copy()


def patch_sum(patches) -> np.ndarray:
    """int64 per-pixel sum of equal-shaped uint8 patches, exact: added in uint32 (exact up to 2**32 / 255, 16.8 M
    patches), ~0.04 ms per 256x256 patch, where an int64 accumulator takes twice that and torch's sum(0) 20x."""
    acc = np.zeros(np.shape(patches[0]), np.uint32)
    for p in patches:
        np.add(acc, p, out=acc)
    return acc.astype(np.int64)


def _batch_patch_sum(patches, k: int, device_id: int) -> np.ndarray:
    """`patch_sum` of the first k patches of a DALI batch; on the GPU summed there (only the sum comes back)."""
    from nvidia.dali.backend import TensorListGPU

    if not isinstance(patches, TensorListGPU):
        return patch_sum([np.asarray(patches[i]) for i in range(k)])
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dev, dense = torch.device("cuda", device_id), patches.as_tensor()  # (B, 256, 256, 3): equal shapes
    t = torch.empty(dense.shape(), dtype=torch.uint8, device=dev)
    feed_ndarray(dense, t, cuda_stream=torch.cuda.current_stream(dev))  # as DALIGenericIterator copies
    return t[:k].sum(0, dtype=torch.int64).cpu().numpy()


def central_view(img: np.ndarray, side: int = SHORTER_SIDE) -> np.ndarray:
    """The central side x side patch of an HWC image whose shorter side is `side`, as a view: top-left
    (floor((H - side) / 2), floor((W - side) / 2)), the pipelines' central square (`common.crop_offset`)."""
    y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return img[y:y + side, x:x + side]


def central_patch(img, resize: bool, side: int = SHORTER_SIDE):
    """DALI operators: `central_view` of an HWC image node (CPU or GPU), after resizing its shorter side to
    `side` when `resize`, as the pipelines resize (paper §2)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    from pipelines import common

    if resize:
        img = common.resize_shorter(img, side)
    start = (img.shape(dtype=types.INT32, device="cpu")[0:2] - side) // 2  # (y, x); integers: exact
    return fn.slice(img, start=start, shape=[side, side], axes=[0, 1])


def moments_graph(img):
    """DALI operators: per-sample S1 (3,) and S2 as (rr, rg, rb, gg, gb, bb), uint64, of an HWC uint8 image node
    (GPU or CPU). Used on the GPU; the tests run it on the CPU against numpy."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    u64 = types.UINT64
    x = fn.cast(img, dtype=types.UINT16)  # a product of two 8-bit values fits 16 bits: 255**2 = 65025
    s1 = fn.reductions.sum(img, axes=[0, 1], dtype=u64)
    s2 = fn.cat(fn.reductions.sum(x * x[:, :, 0:1], axes=[0, 1], dtype=u64),  # rr rg rb
                fn.reductions.sum(x[:, :, 1:] * x[:, :, 1:2], axes=[0, 1], dtype=u64),  # gg gb
                fn.reductions.sum(x[:, :, 2:] * x[:, :, 2:], axes=[0, 1], dtype=u64), axis=0)  # bb
    return s1, s2


_UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _s2_matrix(s2: np.ndarray) -> np.ndarray:
    """(B, 6) upper-triangle sums -> their total as a symmetric (3, 3) int64."""
    tot = s2.astype(np.int64).sum(0)
    m = np.zeros((3, 3), np.int64)
    for k, (i, j) in enumerate(_UPPER):
        m[i, j] = m[j, i] = tot[k]
    return m


# ---------------------------------------------------------------- the pass


def build_pipeline(sel: Selection, *, device: str = "cpu", batch_size: int = 64, threads: int = 2,
                   outputs: str = "images", device_id: int = 0, mean_image: bool = False):
    """The DALI pipeline of a pass: reader -> decoder (RGB) -> `outputs`: "images" (HWC uint8) or "moments"
    (`moments_graph`: S1, S2 and the image shape per sample). With `mean_image`, "moments" also gives each
    image's `central_patch`, last, and "images" the image resized to shorter side 256 where `sel.resize` (the
    CPU pass takes the `central_view` of the last output: a numpy view costs ~0.07 ms of CPU per image where
    DALI's slice and its output copy cost ~0.2). Built, not yet run."""
    from nvidia.dali import fn, pipeline_def

    from pipelines import common

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=2)
    def pipe():
        if sel.kind == "shards":
            jpg = fn.readers.webdataset(paths=list(sel.tars), index_paths=list(sel.indexes), ext=["jpg"],
                                        missing_component_behavior="error", name=READER)
        else:
            jpg, _ = fn.readers.file(files=list(sel.files), name=READER)
        img = common.decode(jpg, device)  # the pipelines' decoder: mixed (nvJPEG + hardware) or cpu, RGB
        if outputs == "images":
            return (img, *((common.resize_shorter(img, SHORTER_SIDE),) if mean_image and sel.resize else ()))
        s1, s2 = moments_graph(img)
        return s1, s2, img.shape(device="cpu"), *((central_patch(img, sel.resize),) if mean_image else ())

    p = pipe()
    try:
        p.build()
    except RuntimeError as e:
        raise StatsError(f"cannot build the DALI pipeline: {_dali_reason(e)}") from None
    size = p.reader_meta(READER)["epoch_size"]
    need = sum(sel.shard_images) if sel.kind == "shards" else len(sel.files)
    if size != need:
        raise StatsError(f"DALI's reader finds {size} samples where {need} are listed (first file "
                         f"{(sel.tars or sel.files)[0]}): the data changed after it was listed")
    return p


def _dali_reason(e: Exception) -> str:
    """One line from a DALI error: the file it could not read or decode, not the pipeline traceback."""
    text = str(e)
    for pat, what in ((r"Failed to decode sample #\d+ : (\S+)", "cannot be decoded"),
                      (r"File mapping failed: (\S+)", "cannot be read (an empty file?)")):
        m = re.search(pat, text)
        if m:
            return f"{m.group(1)}: {what}"
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Critical error", "Current pipeline", "File ", "Error in"))]
    return re.sub(r"\s*C\+\+ context:.*", "", lines[0] if lines else type(e).__name__)


def _runs(pipe, n: int, batch_size: int):
    """Yields (outputs, k) per run: k = how many of the batch's samples are new. The reader wraps around to
    fill the last batch; counting to n drops those repeats, so each image is counted exactly once."""
    seen = 0
    while seen < n:
        try:
            outs = pipe.run()
        except RuntimeError as e:
            raise StatsError(f"{_dali_reason(e)} (DALI stopped; `alexnet prepare` skips unreadable files)") from None
        k = min(batch_size, n - seen)
        yield outs, k
        seen += k


class StatsPass:
    """One pass over `sel`, its DALI pipeline built on construction (so a benchmark can time the pass alone).

    decode_only: read and decode, discard the images (the benchmark's reference). moments_in_pipeline: sum with
    DALI operators (`moments_graph`; always on the GPU) instead of the CPU block matmul."""

    def __init__(self, sel: Selection, *, device: str = "cpu", batch_size: int = 64, threads: int | None = None,
                 decode_only: bool = False, moments_in_pipeline: bool = False, device_id: int = 0):
        self.threads = len(os.sched_getaffinity(0)) if threads is None else threads
        if batch_size < 1 or self.threads < 1:
            raise StatsError(f"--batch-size and --threads must be >= 1, got {batch_size} and {self.threads}")
        if device not in ("cpu", "gpu"):
            raise StatsError(f"--device must be cpu or gpu, got {device!r}")
        if device == "gpu":
            from nvidia.dali.backend import GetCUDADeviceCount

            if GetCUDADeviceCount() == 0:
                raise StatsError("--device gpu: DALI sees no CUDA GPU; use --device cpu")
        self.sel, self.batch_size, self.decode_only, self.device_id = sel, batch_size, decode_only, device_id
        self.in_pipe = device == "gpu" or bool(moments_in_pipeline)  # GPU images never leave the GPU
        self.pipe = build_pipeline(sel, device=device, batch_size=batch_size, threads=self.threads,
                                   device_id=device_id, mean_image=not decode_only,
                                   outputs="moments" if self.in_pipe and not decode_only else "images")

    def run(self, progress: bool = False) -> Moments:
        import torch
        from tqdm import tqdm

        m, local = Moments(), threading.local()

        def work(images, patches):  # in a pool thread, with that thread's buffer
            if not hasattr(local, "sums"):
                local.sums = _BlockSums()
            return len(images), *sum_images(images, local.sums), patch_sum(patches)

        saved = torch.get_num_threads(), torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # never a reduced-precision (TF32/bf16) float32 matmul
        bar = tqdm(total=self.sel.images, desc="decode" if self.decode_only else "stats", unit="img",
                   disable=not progress, smoothing=0.05)
        try:
            # Parallel over images, one torch thread per worker: a worker left with the default OpenMP team
            # spins on the cores DALI's decoder needs (measured 7x slower on 2 cores).
            with ThreadPoolExecutor(self.threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                for outs, k in _runs(self.pipe, self.sel.images, self.batch_size):
                    if self.decode_only:
                        m.images += k
                    elif self.in_pipe:
                        s1, s2, shape = (o.as_cpu() if hasattr(o, "as_cpu") else o for o in outs[:3])
                        hw = shape.as_array()[:k, :2].astype(np.int64)
                        m.add(k, int((hw[:, 0] * hw[:, 1]).sum()), s1.as_array()[:k].astype(np.int64).sum(0),
                              _s2_matrix(s2.as_array()[:k]), _batch_patch_sum(outs[3], k, self.device_id))
                    else:
                        # Views of DALI's output buffers, valid until the next run(): summed before it.
                        imgs = [np.asarray(outs[0][i]) for i in range(k)]
                        patches = [central_view(np.asarray(outs[-1][i])) for i in range(k)]  # resized or not
                        parts = [(imgs[i::self.threads], patches[i::self.threads]) for i in range(min(self.threads, k))]
                        for r in pool.map(work, *zip(*parts)):
                            m.add(*r)
                    bar.update(k)
        finally:
            bar.close()
            torch.set_num_threads(saved[0])
            torch.set_float32_matmul_precision(saved[1])
        return m


# ---------------------------------------------------------------- from sums to stats.json


def eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of a symmetric 3x3 matrix, descending (round-off negatives clipped to 0), and unit eigenvectors
    as the columns of a matrix, each column's largest-magnitude component positive."""
    w, v = np.linalg.eigh(np.asarray(cov, np.float64))
    order = np.argsort(-w, kind="stable")  # ties (a constant image: all zero) keep eigh's order
    w, v = np.clip(w[order], 0, None), v[:, order]
    v = v * np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    return w, v


def derive(m: Moments) -> dict:
    """mean, std, cov, eigval, eigvec (lists, 0-255 scale) from exact sums, with Python integers throughout; and
    mean_image, float64 (256, 256, 3), each pixel's integer sum / images (correctly rounded), when summed."""
    if m.pixels == 0:
        raise StatsError("no pixels were summed")
    n = m.pixels
    s1 = [int(v) for v in m.s1]
    s2 = [[int(v) for v in row] for row in m.s2]
    mean = [s / n for s in s1]  # int / int: correctly rounded
    cov = [[(n * s2[i][j] - s1[i] * s1[j]) / (n * n) for j in range(3)] for i in range(3)]
    w, v = eigen(np.array(cov))
    return {"mean": mean, "std": [math.sqrt(cov[i][i]) for i in range(3)], "cov": cov,
            "eigval": w.tolist(), "eigvec": v.tolist(), "images": m.images, "pixels": n, "scale": SCALE,
            "pixel_sum": s1, "pixel_product_sum": s2,
            **({"mean_image": m.patch / m.images} if m.patch is not None else {})}


def default_device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def compute_stats(data: str | os.PathLike, *, max_images: int | None = None, seed: int = 0, device: str = "cpu",
                  batch_size: int = 64, threads: int | None = None, progress: bool = False,
                  device_id: int = 0) -> dict:
    """The stats.json record (see the module docstring) of DATA's training split: a `prepare` output or a raw
    class-folder tree. Raises DataError / StatsError with one line on bad input."""
    import nvidia.dali as dali

    _check_max_images(max_images)  # before scanning DATA, which may hold a million files
    split = open_split(data, "train")
    sel = select(split, max_images, seed)
    pas = StatsPass(sel, device=device, batch_size=batch_size, threads=threads, device_id=device_id)
    t0 = time.perf_counter()
    m = pas.run(progress)
    seconds = time.perf_counter() - t0
    if m.images != sel.images:
        raise StatsError(f"summed {m.images} images, expected {sel.images}")
    rec = derive(m)
    rec["source"] = {"data": str(Path(data).resolve()), "kind": split.kind, "split": "train",
                     "max_images": max_images, "seed": seed, "device": device, "dali": dali.__version__,
                     "batch_size": batch_size, "threads": pas.threads, "seconds": round(seconds, 3)}
    return rec


def mean_image_path(path: str | os.PathLike) -> Path:
    """Where the mean image of the stats file `path` lives: beside it, stats.json -> stats.mean_image.npy."""
    path = Path(path)
    return path.with_name(path.stem + MEAN_IMAGE_SUFFIX)


def _npy(mean_image: np.ndarray) -> tuple[bytes, str]:
    """The .npy bytes of a mean image (float64) and their sha256, which stats.json records."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(mean_image, np.float64), allow_pickle=False)
    return buf.getvalue(), hashlib.sha256(buf.getvalue()).hexdigest()


def same_stats(path: str | os.PathLike, rec: dict) -> bool:
    """Whether the stats file at `path` holds the statistics of `rec` (a file that cannot be read: no). A file
    without a mean image (written before it existed) counts as the same: replacing it only adds one."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    sha = _npy(rec["mean_image"])[1] if rec.get("mean_image") is not None else None
    return (all(old.get(k) == rec.get(k) for k in ("mean", "std", "eigval", "eigvec"))
            and old.get("mean_image_sha256") in (None, sha))


def write_stats(rec: dict, path: str | os.PathLike) -> Path:
    """Writes the record as JSON (indent 1), its mean image (if any) to `mean_image_path(path)`, each atomically,
    the image first; stats.json names it and records its sha256. Returns the path."""
    path = Path(path)
    out = {k: v for k, v in rec.items() if k != "mean_image"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if rec.get("mean_image") is not None:
            data, sha = _npy(rec["mean_image"])
            npy = atomic_write(mean_image_path(path), data)
            out.update(mean_image_file=npy.name, mean_image_sha256=sha)
        atomic_write(path, json.dumps(out, indent=1) + "\n")
    except OSError as e:
        raise StatsError(f"{e.filename or path}: cannot write ({e.strerror or e})") from None
    return path


def _numbers(x) -> bool:
    return isinstance(x, list) and all(_numbers(v) if isinstance(v, list) else
                                       isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)


def _array(rec: dict, key: str, shape: tuple[int, ...], where: Path) -> np.ndarray:
    try:
        a = np.array(rec[key], np.float64) if _numbers(rec[key]) else None
    except ValueError:  # ragged
        a = None
    if a is None or a.shape != shape:
        raise StatsError(f"{where}: '{key}' must be a list of numbers of shape {list(shape)}, got {rec[key]!r}")
    if not np.isfinite(a).all():
        raise StatsError(f"{where}: '{key}' holds a non-finite number")
    return a


def _load_mean_image(path: Path, rec: dict) -> np.ndarray | None:
    """The mean image stats.json names (float64 (256, 256, 3)), checked against its recorded sha256; None when it
    names none (a file from before the mean image existed)."""
    name, sha = rec.get("mean_image_file"), rec.get("mean_image_sha256")
    if name is None:
        return None
    if not isinstance(name, str) or Path(name).name != name or not isinstance(sha, str):
        raise StatsError(f"{path}: 'mean_image_file' must be a file name beside it, with 'mean_image_sha256'")
    npy = path.with_name(name)
    try:
        data = npy.read_bytes()
    except OSError as e:
        raise StatsError(f"{npy}: the mean image {path.name} names cannot be read ({e.strerror or e}); run "
                         f"`alexnet stats` again") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise StatsError(f"{npy}: not the mean image {path.name} was written with (sha256 differs); run "
                         f"`alexnet stats` again")
    try:
        m = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise StatsError(f"{npy}: not a .npy array ({e})") from None
    side = SHORTER_SIDE
    if m.shape != (side, side, 3) or not np.isfinite(m).all() or m.min() < 0 or m.max() > SCALE:
        raise StatsError(f"{npy}: a mean image must be ({side}, {side}, 3) values in 0..{SCALE}, got shape "
                         f"{list(m.shape)}")
    return m.astype(np.float64)


def load_stats(path: str | os.PathLike) -> dict:
    """A validated stats.json: the record with mean, std, eigval as float64 arrays (3,) and cov, eigvec as (3, 3)
    (eigvec[:, j] is eigenvector j), on the 0-255 scale, and mean_image, float64 (256, 256, 3) from the file it
    names, or None. Raises StatsError with one line naming the problem."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise StatsError(f"{path}: not found (run `alexnet stats DATA` to write it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StatsError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(rec, dict):
        raise StatsError(f"{path}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in (*VEC3, *MAT3, "images", "pixels", "scale") if k not in rec]
    if missing:
        raise StatsError(f"{path}: missing {', '.join(missing)} (not an `alexnet stats` output?)")
    if rec["scale"] != SCALE:
        raise StatsError(f"{path}: scale is {rec['scale']!r}; only {SCALE} (values on the 0-255 pixel scale) is "
                         f"supported")
    for k in ("images", "pixels"):
        if not isinstance(rec[k], int) or isinstance(rec[k], bool) or rec[k] < 1:
            raise StatsError(f"{path}: '{k}' must be a positive integer, got {rec[k]!r}")
    out = dict(rec)
    for k in VEC3:
        out[k] = _array(rec, k, (3,), path)
    for k in MAT3:
        out[k] = _array(rec, k, (3, 3), path)
    w, v = out["eigval"], out["eigvec"]
    if (w < 0).any() or (np.diff(w) > 0).any():
        raise StatsError(f"{path}: eigval must be non-negative and descending, got {w.tolist()}")
    if not np.allclose(v.T @ v, np.eye(3), atol=1e-6):
        raise StatsError(f"{path}: eigvec's columns are not orthonormal unit vectors")
    if (out["std"] < 0).any() or not ((out["mean"] >= 0) & (out["mean"] <= SCALE)).all():
        raise StatsError(f"{path}: mean must lie in 0..{SCALE} and std be >= 0")
    out["mean_image"] = _load_mean_image(path, rec)
    return out


def summary(rec: dict, path: str | os.PathLike) -> str:
    """The one line `alexnet stats` ends with."""
    src, f = rec["source"], " ".join
    return (f"stats: {rec['images']} images ({rec['pixels'] / 1e6:.1f} Mpx) in {src['seconds']:.1f} s "
            f"({rec['images'] / max(src['seconds'], 1e-9):.0f} img/s, {src['device']}); "
            f"mean [{f(f'{x:.2f}' for x in rec['mean'])}]; eigval [{f(f'{x:.1f}' for x in rec['eigval'])}] "
            f"-> {path}" + (f" + {mean_image_path(path).name}" if rec.get("mean_image") is not None else ""))
