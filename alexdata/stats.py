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
       DALI CPU operators (the gpu graph) is slower, and padding a batch to one size (to sum it with one matmul)
       wastes most of the work when portrait and landscape images share a batch. The central patch is a numpy
       view of the decoded (or, on a raw tree, DALI-resized) image, added into a uint32 accumulator per thread
       and batch (`patch_sum`).
  gpu  the mixed (nvJPEG) decoder, then the products (uint16: 255**2 < 2**16) and uint64 sums as DALI GPU
       operators inside the pipeline: only 9 integers per image leave the GPU. The central patches
       (`central_patch`, DALI operators) are summed over the batch by torch on the GPU: one int64 image per
       batch leaves it.
The pipeline of the pass is pipelines/stats.py's; its speed against decoding alone, and the ways of summing
tried, are in docs/BENCHMARKS.md ("stats").

The record is written to stats.json by alexdata/statsfile.py, which describes its fields.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from alexdata import host
from alexdata.dataset import image_problem, open_split
from alexdata.errors import StatsError, dali_reason
from alexdata.statsfile import SCALE, mean_image_path
from pipelines.common import READER
from pipelines.config import DEVICES, SHORTER_SIDE, RunSpec, Split
from pipelines.stats import build_stats_pipeline

BLOCK = 256  # pixels per float32 block: 256 * 255**2 = 16_646_400 < 2**24, so block sums are exact


# ---------------------------------------------------------------- which images


def _check_max_images(max_images: int | None) -> None:
    if max_images is not None and max_images < 1:
        raise StatsError(f"--max-images must be >= 1, got {max_images}")


def select(split: Split, max_images: int | None = None, seed: int = 0) -> Split:
    """All of `split`, or a seeded uniform sample of `max_images` of its images: the first `images` samples of
    the returned split's shards, read in their order, or its files.

    Raw files: `max_images` indices drawn uniformly without replacement (read in sorted order, for locality).
    Shards: whole shards in a seeded random order until `max_images` are covered, the last one only partly.
    `prepare` wrote the training samples in a uniformly shuffled order (a seeded permutation of all of them,
    then cut into shards), so the samples at any set of positions chosen without looking at them are a uniform
    sample of the training set; reading whole shards keeps the reads sequential."""
    _check_max_images(max_images)
    n = split.images if max_images is None else min(max_images, split.images)
    rng = np.random.default_rng(seed)
    if split.kind == "files":
        if n == len(split.files):
            return split
        keep = np.sort(rng.choice(len(split.files), n, replace=False))
        return replace(
            split, images=n, files=tuple(split.files[i] for i in keep), labels=tuple(split.labels[i] for i in keep)
        )
    order = range(len(split.tars)) if n == split.images else rng.permutation(len(split.tars))
    picked, covered = [], 0
    for i in order:
        if covered >= n:
            break
        if split.shard_images[i]:
            picked.append(int(i))
            covered += split.shard_images[i]
    return replace(
        split,
        images=n,
        tars=tuple(split.tars[i] for i in picked),
        indexes=tuple(split.indexes[i] for i in picked),
        shard_images=tuple(split.shard_images[i] for i in picked),
    )


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
        np.copyto(b[:full, :3], flat[: full * BLOCK * 3].reshape(full, BLOCK, 3).transpose(0, 2, 1))
        if c > full:  # the last block, zero-padded: zeros add nothing to S1 or S2
            r = p - full * BLOCK
            b[full, :3, :r] = flat[full * BLOCK * 3 :].reshape(r, 3).T
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
    patches), faster than an int64 accumulator or torch's sum(0) (docs/BENCHMARKS.md, "stats")."""
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

    dev, dense = host.torch_device("gpu", device_id), patches.as_tensor()  # (B, 256, 256, 3): equal shapes
    t = torch.empty(dense.shape(), dtype=torch.uint8, device=dev)
    feed_ndarray(dense, t, cuda_stream=torch.cuda.current_stream(dev))  # as DALIGenericIterator copies
    return t[:k].sum(0, dtype=torch.int64).cpu().numpy()


def central_view(img: np.ndarray, side: int = SHORTER_SIDE) -> np.ndarray:
    """The central side x side patch of an HWC image whose shorter side is `side`, as a view: top-left
    (floor((H - side) / 2), floor((W - side) / 2)), the pipelines' central square (`common.crop_offset`)."""
    y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return img[y : y + side, x : x + side]


_UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _s2_matrix(s2: np.ndarray) -> np.ndarray:
    """(B, 6) upper-triangle sums -> their total as a symmetric (3, 3) int64."""
    tot = s2.astype(np.int64).sum(0)
    m = np.zeros((3, 3), np.int64)
    for k, (i, j) in enumerate(_UPPER):
        m[i, j] = m[j, i] = tot[k]
    return m


# ---------------------------------------------------------------- the pass


def build_pipeline(
    sel: Split,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    threads: int = 2,
    outputs: str = "images",
    device_id: int = 0,
    mean_image: bool = False,
):
    """pipelines/stats.py's pipeline of a pass over `sel` (`outputs`, `mean_image`: see `build_stats_pipeline`),
    built, and its reader checked to find the samples `sel` lists. Not yet run."""
    spec = RunSpec(batch_size, threads, device, host.dali_device_id(device, device_id))
    p = build_stats_pipeline(sel, spec, outputs=outputs, mean_image=mean_image)
    try:
        p.build()
    except RuntimeError as e:
        raise StatsError(f"cannot build the DALI pipeline: {_dali_reason(e)}") from None
    size = p.reader_meta(READER)["epoch_size"]
    need = sum(sel.shard_images) if sel.kind == "shards" else len(sel.files)
    if size != need:
        raise StatsError(
            f"DALI's reader finds {size} samples where {need} are listed (first file "
            f"{(sel.tars or sel.files)[0]}): the data changed after it was listed"
        )
    return p


def _dali_reason(e: Exception) -> str:
    """One line from a DALI error: the file it could not read or decode, whole, not the pipeline traceback."""
    place, why = dali_reason(e)
    return f"{place}: {why}" if place else why


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

    def __init__(
        self,
        sel: Split,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
        decode_only: bool = False,
        moments_in_pipeline: bool = False,
        device_id: int = 0,
    ):
        self.threads = host.cores() if threads is None else threads
        if batch_size < 1 or self.threads < 1:
            raise StatsError(f"--batch-size and --threads must be >= 1, got {batch_size} and {self.threads}")
        if device not in DEVICES:
            raise StatsError(f"--device must be cpu or gpu, got {device!r}")
        if device == "gpu" and not host.has_gpu():
            raise StatsError("--device gpu: torch sees no CUDA GPU; use --device cpu")
        self.sel, self.batch_size, self.decode_only, self.device_id = sel, batch_size, decode_only, device_id
        self.in_pipe = device == "gpu" or bool(moments_in_pipeline)  # GPU images never leave the GPU
        self.pipe = build_pipeline(
            sel,
            device=device,
            batch_size=batch_size,
            threads=self.threads,
            device_id=device_id,
            mean_image=not decode_only,
            outputs="moments" if self.in_pipe and not decode_only else "images",
        )

    def run(self, progress: bool = False) -> Moments:
        import torch

        m, local = Moments(), threading.local()

        def work(images, patches):  # in a pool thread, with that thread's buffer
            if not hasattr(local, "sums"):
                local.sums = _BlockSums()
            return len(images), *sum_images(images, local.sums), patch_sum(patches)

        saved = torch.get_num_threads(), torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # never a reduced-precision (TF32/bf16) float32 matmul
        bar = host.progress_bar(
            total=self.sel.images,
            desc="decode" if self.decode_only else "stats",
            unit="img",
            enabled=progress,
            smoothing=0.05,
        )
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
                        m.add(
                            k,
                            int((hw[:, 0] * hw[:, 1]).sum()),
                            s1.as_array()[:k].astype(np.int64).sum(0),
                            _s2_matrix(s2.as_array()[:k]),
                            _batch_patch_sum(outs[3], k, self.device_id),
                        )
                    else:
                        # Views of DALI's output buffers, valid until the next run(): summed before it.
                        imgs = [np.asarray(outs[0][i]) for i in range(k)]
                        patches = [central_view(np.asarray(outs[-1][i])) for i in range(k)]  # resized or not
                        parts = [
                            (imgs[i :: self.threads], patches[i :: self.threads]) for i in range(min(self.threads, k))
                        ]
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
    return {
        "mean": mean,
        "std": [math.sqrt(cov[i][i]) for i in range(3)],
        "cov": cov,
        "eigval": w.tolist(),
        "eigvec": v.tolist(),
        "images": m.images,
        "pixels": n,
        "scale": SCALE,
        "pixel_sum": s1,
        "pixel_product_sum": s2,
        **({"mean_image": m.patch / m.images} if m.patch is not None else {}),
    }


def check_files(files: tuple[str, ...], threads: int | None = None) -> None:
    """Stops with one line at a raw file that is not a whole image (alexdata/dataset.py `image_problem`, strict):
    DALI would stop at it, or, for a JPEG whose decoder warns of missing or corrupt data, decode it as grey without
    an error, which would bias the mean (prepare leaves such files out of its shards)."""
    with ThreadPoolExecutor(threads or host.cores()) as pool:  # simplejpeg decodes without the GIL
        for path, why in zip(files, pool.map(lambda p: image_problem(p, strict=True), files)):
            if why:
                raise StatsError(f"{path}: {why} (`alexnet prepare` leaves such files out)")


def compute_stats(
    data: str | os.PathLike,
    *,
    max_images: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    threads: int | None = None,
    progress: bool = False,
    device_id: int = 0,
) -> dict:
    """The stats.json record (its fields: alexdata/statsfile.py) of DATA's training split: a `prepare` output or a
    raw class-folder tree. Raises DataError / StatsError with one line on bad input."""
    import nvidia.dali as dali

    _check_max_images(max_images)  # before scanning DATA, which may hold a million files
    split = open_split(data, "train")
    sel = select(split, max_images, seed)
    if sel.kind == "files":
        check_files(sel.files, threads)
    pas = StatsPass(sel, device=device, batch_size=batch_size, threads=threads, device_id=device_id)
    t0 = time.perf_counter()
    m = pas.run(progress)
    seconds = time.perf_counter() - t0
    if m.images != sel.images:
        raise StatsError(f"summed {m.images} images, expected {sel.images}")
    rec = derive(m)
    rec["source"] = {
        "data": str(Path(data).resolve()),
        "kind": split.kind,
        "split": "train",
        "max_images": max_images,
        "seed": seed,
        "device": device,
        "dali": dali.__version__,
        "batch_size": batch_size,
        "threads": pas.threads,
        "seconds": round(seconds, 3),
    }
    return rec


def summary(rec: dict, path: str | os.PathLike) -> str:
    """The one line `alexnet stats` ends with."""
    src, f = rec["source"], " ".join
    return (
        f"stats: {rec['images']} images ({rec['pixels'] / 1e6:.1f} Mpx) in {src['seconds']:.1f} s "
        f"({rec['images'] / max(src['seconds'], 1e-9):.0f} img/s, {src['device']}); "
        f"mean [{f(f'{x:.2f}' for x in rec['mean'])}]; eigval [{f(f'{x:.1f}' for x in rec['eigval'])}] "
        f"-> {path}" + (f" + {mean_image_path(path).name}" if rec.get("mean_image") is not None else "")
    )
