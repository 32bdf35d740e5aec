"""Benchmarks of the data stages (`alexnet bench prepare|stats|loader`). They report ratios measured side by side
in one run, on the same files and machine: shared machines are noisy, ratios much less so. Figures go to
docs/BENCHMARKS.md with their command, machine and date."""

from __future__ import annotations

import io
import os
import time
from dataclasses import asdict, replace

import numpy as np
from PIL import Image

from alexdata import host
from alexdata.errors import ConfigError
from alexdata.prepare import FORMATS
from pipelines.config import Tuning


def plain_pil(data: bytes, shorter_side: int = 256, quality: int = 90) -> bytes:
    """What a user would write without `prepare`'s DCT-domain draft: full decode, resize, encode."""
    im = Image.open(io.BytesIO(data), formats=FORMATS).convert("RGB")
    w, h = im.size
    s = shorter_side / min(w, h)
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _rate(fn, blobs: list[bytes]) -> float:
    t0 = time.perf_counter()
    for b in blobs:
        fn(b)
    return len(blobs) / (time.perf_counter() - t0)


def bench_prepare(src: str, images: int = 300, rounds: int = 3, seed: int = 0) -> dict:
    """Single-core images/s of prepare's per-image work vs a plain PIL open/resize/save loop, same files in
    memory (disk excluded), alternating rounds; reports the median of each."""
    from alexdata.prepare import resize_to_jpeg
    from alexdata.sources import scan
    from pipelines.config import SHORTER_SIDE

    _, train, _, _ = scan(src)
    pick = np.random.default_rng(seed).permutation(len(train))
    blobs = []
    for i in pick:  # readable images only: both loops must do the same work
        b = train[i].read()
        try:
            plain_pil(b)
        except Exception:
            continue
        blobs.append(b)
        if len(blobs) == images:
            break
    ours, base = [], []
    for _ in range(rounds):
        ours.append(_rate(lambda b: resize_to_jpeg(b, SHORTER_SIDE, 90), blobs))
        base.append(_rate(plain_pil, blobs))
    o, p = float(np.median(ours)), float(np.median(base))
    return {
        "images": len(blobs),
        "mean_input_kb": sum(map(len, blobs)) / len(blobs) / 1e3,
        "prepare_per_core": o,
        "plain_pil_per_core": p,
        "speedup": o / p,
        "machine": host.machine(),
    }


# ---------------------------------------------------------------- the loader


def random_resized_window(h: int, w: int, rng, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, height, width): torchvision's RandomResizedCrop.get_params with a numpy Generator."""
    log_ratio = np.log(ratio)
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        r = np.exp(rng.uniform(*log_ratio))
        cw, ch = round(np.sqrt(area * r)), round(np.sqrt(area / r))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    cw, ch = min(w, round(h * ratio[1])), min(h, round(w / ratio[0]))  # the whole image cut to the ratio range
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class PilAugmentDataset:
    """The baseline users would otherwise write: a torch Dataset doing the train pipeline's work with PIL and
    numpy (decode, resize unless prepared, random 227 crop, flip, PCA lighting + mean), read from the same data.
    aug.augment "inception": decode, torchvision's RandomResizedCrop window resized to crop x crop (bilinear,
    antialiased), flip, lighting + mean."""

    def __init__(self, split, stats, aug, seed: int = 0):
        from alexdata.shards import read_samples
        from pipelines.common import needs_resize

        self.split, self.stats, self.aug, self.seed = split, stats, aug, seed
        self.resize = aug.augment == "paper" and needs_resize(split, aug.shorter_side)
        self.entries = []  # (tar path, offset, size, label) or (file, -1, -1, label)
        if split.prepared:
            self.entries = [(tar, *sample) for tar in split.tars for sample in read_samples(tar)]
        else:
            self.entries = [(f, -1, -1, lab) for f, lab in zip(split.files, split.labels)]
        self.mean = np.array(stats.mean_255, np.float32)
        if aug.pca_std:
            self.eigvec, self.eigval = np.array(stats.eigvec, np.float32), np.array(stats.eigval_255, np.float32)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        import torch

        path, off, size, label = self.entries[i]
        with open(path, "rb") as fh:
            data = os.pread(fh.fileno(), size, off) if off >= 0 else fh.read()
        rng = np.random.default_rng((self.seed, i, time.perf_counter_ns()))
        im = Image.open(io.BytesIO(data), formats=FORMATS).convert("RGB")
        a = self.aug
        if self.resize:
            w, h = im.size
            s = a.shorter_side / min(w, h)
            im = im.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
        w, h = im.size
        if a.augment == "inception":
            y, x, ch, cw = random_resized_window(h, w, rng, a.scale, a.ratio)
            im = im.resize((a.crop, a.crop), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        else:
            x, y = int(rng.integers(0, w - a.crop + 1)), int(rng.integers(0, h - a.crop + 1))
            im = im.crop((x, y, x + a.crop, y + a.crop))
        if rng.random() < a.flip_prob:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        offset = 0.0
        if a.pca_std:  # see common.py
            offset = self.eigvec @ (rng.normal(0, a.pca_std, 3).astype(np.float32) * self.eigval / 255)
        arr = np.asarray(im, np.float32) - (self.mean - offset)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), label


def _timed(batches, seconds: float, warmup: int = 3, cpu: list | None = None) -> float:
    """Images/s over `seconds` after `warmup` batches; `batches` is an endless iterator of batch sizes. `cpu`: a
    list to append this process's CPU microseconds per image of the timed window to (all its threads)."""
    for _ in range(warmup):
        next(batches)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        n += next(batches)
    if cpu is not None:
        cpu.append((time.process_time() - c0) / max(n, 1) * 1e6)
    return n / (time.perf_counter() - t0)


def endless(loader, sync, to_gpu: bool = False):
    """Batch sizes of an endless pass over `loader` (epochs chained), each batch finished (`sync`) on arrival."""
    while True:
        for x, y in loader:
            if to_gpu:  # the baseline's batches end where the pipeline's do: on the GPU
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            sync()
            yield len(y)


def loader_rate(data: str, seconds: float, *, device: str, stats, opened=None, warmup: int = 3, **loader_kw) -> float:
    """Images/s of the train pipeline through the Loader with `loader_kw` (batch_size, threads, prefetch,
    hw_decoder_load, ...), timed `seconds` after `warmup` batches; the pipeline is built outside the timing."""
    import gc

    from alexdata.loader import Loader

    loader = Loader(data, stats=stats, device=device, opened=opened, **loader_kw)
    try:
        return _timed(endless(loader, host.synchronizer(device)), seconds, warmup)
    finally:
        del loader
        gc.collect()  # frees the DALI pipeline (its threads and device buffers) before the next one is built


def decode_only_pipeline(split, device: str, batch_size: int, threads: int, tuning: Tuning = Tuning(), **spec_kw):
    """DALI's read and decode alone, the ceiling of every pipeline here (pipelines/stats.py), with the DALI knobs
    `tuning`; `spec_kw`: RunSpec's other fields (preallocate_hw)."""
    from alexdata.loader import run_spec
    from pipelines.stats import build_decode_pipeline

    spec = run_spec(
        batch_size=batch_size,
        threads=threads,
        device=device,
        device_id=host.dali_device_id(device),
        tuning=tuning,
        **spec_kw,
    )
    return build_decode_pipeline(split, spec)


def pipe_batches(pipe, sync):
    """Batch sizes of an endless run of a DALI pipeline, each batch finished (`sync`) on arrival."""
    pipe.build()
    while True:
        out = pipe.run()
        sync()
        yield len(out[1])


def hw_decoder_check(data: str, seconds: float, *, batch_size: int, threads: int, opened=None) -> dict:
    """Is the GPU's hardware JPEG decoder (NVJPG) really used? Decode-only images/s and process CPU time per image
    at hw_decoder_load 0 (nvJPEG's CUDA path, Huffman decoding on the CPU) and 1 (every image the hardware takes).
    Where the GPU shows no NVJPG engine (some VMs) DALI falls back to the CUDA path without a word, and the two
    agree; with it, the Huffman decoding leaves the CPU (NVIDIA's blog on the A100 JPEG decoder, linked from the
    fn.decoders.image docs), so the CPU time per image drops, and usually the time per image with it."""
    import gc

    from alexdata.dataset import open_split

    split = opened if opened is not None else open_split(data, "train")
    res = {}
    for name, load in (("load0", 0.0), ("load1", 1.0)):
        batches = pipe_batches(
            decode_only_pipeline(split, "gpu", batch_size, threads, Tuning(hw_decoder_load=load)),
            host.device_synchronizer("gpu"),
        )
        for _ in range(3):  # warm-up: buffers, the decoder's own start
            next(batches)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            n += next(batches)
        res[name] = n / (time.perf_counter() - t0)
        res[name + "_cpu_us_per_img"] = (time.process_time() - c0) / n * 1e6
        batches.close()
        gc.collect()  # the pipeline's device buffers go before the next one is built
    speed, cpu = res["load1"] / res["load0"], res["load1_cpu_us_per_img"] / res["load0_cpu_us_per_img"]
    res["used"] = speed > 1.1 or cpu < 0.7  # beyond the ~5 % a shared machine moves between two runs
    res["why"] = f"at hw_decoder_load 1: {speed:.2f}x the images/s and {cpu:.2f}x the CPU time per image of load 0" + (
        ": the hardware decoder took the work"
        if res["used"]
        else ": no sign of the hardware decoder (DALI falls back to CUDA silently: no NVJPG here?)"
    )
    return res


CONTENDERS = ("decode_only", "pipeline", "baseline")


def bench_loader(
    data: str,
    device: str | None = None,
    batch_size: int = 128,
    seconds: float = 10.0,
    threads: int | None = None,
    stats=None,
    rounds: int = 3,
    *,
    tuning: Tuning | dict | None = None,
    contenders: tuple[str, ...] = CONTENDERS,
    echoes: tuple[int, ...] = (1,),
    aug=None,
) -> dict:
    """Images/s, side by side on the same data and thread count: DALI decode only, the train pipeline through
    the Loader (torch tensors out), and a torch DataLoader + PIL implementation of the same augmentations.
    Each is timed `seconds` per round over interleaved `rounds`; the medians are reported. `tuning` (a Tuning,
    or a dict of its fields; default Tuning()): the DALI knobs of both DALI contenders (the decoded-image cache
    the pipeline's only); `contenders`: some of CONTENDERS. `echoes`: the pipeline once per
    data-echoing factor (alexdata/echo.py; images/s counts every copy handed out): "pipeline" is echo 1,
    "pipeline_echoN" echo N, and "echoN_vs_echo1" their ratio. `aug`: the augmentation of the pipeline and the
    baseline alike, an AugmentConfig or a dict of its fields (default: the paper's, AugmentConfig())."""
    import torch

    from alexdata.dataset import open_split
    from alexdata.loader import Loader, augment_config, resolve_stats, tuning_of
    from pipelines.config import AugmentConfig

    aug = augment_config(AugmentConfig() if aug is None else aug)
    tuning = tuning_of(tuning, {})
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown or not contenders:
        raise ConfigError(f"contenders {list(contenders)}: expected some of {', '.join(CONTENDERS)}")
    threads = threads or host.cores()
    device = device or host.default_device()
    split = open_split(data, "train")
    st = resolve_stats(stats, data)
    sync = host.synchronizer(device)

    def baseline():
        ds = PilAugmentDataset(split, st, aug)
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=threads,
            persistent_workers=True,
            pin_memory=device == "gpu",
        )
        return endless(dl, sync, to_gpu=device == "gpu")

    res = {
        "data": str(data),
        "kind": split.kind,
        "images": split.images,
        "device": device,
        "batch_size": batch_size,
        "threads": threads,
        **asdict(tuning),
        "seconds": seconds,
        "rounds": rounds,
        "augment": aug.augment,
        "crop": aug.crop,
    }

    def pipeline(echo: int):
        loader = Loader(
            data,
            stats=st,
            batch_size=batch_size,
            device=device,
            threads=threads,
            tuning=tuning,
            opened=split,
            echo=echo,
            aug=aug,
        )
        return lambda: endless(loader, sync)

    pipelines = {}  # the Loaders first: they check echo against the augmentation
    if "pipeline" in contenders:
        res["echoes"] = list(echoes)
        pipelines = {("pipeline" if e == 1 else f"pipeline_echo{e}"): pipeline(e) for e in echoes}
    make = {
        "decode_only": lambda: pipe_batches(
            decode_only_pipeline(split, device, batch_size, threads, replace(tuning, gpu_cache_gb=0.0)),
            host.device_synchronizer(device),
        ),
        **pipelines,
        "baseline": baseline,
    }
    contenders = tuple(k for k in make if k in contenders or k.startswith("pipeline_echo"))
    made = {k: make[k]() for k in contenders}
    # Each contender's queue fills while the others are timed: the DataLoader's workers hold up to
    # workers * prefetch_factor (2) finished batches, DALI prefetch (2) batches. Warm-up batches drain that
    # backlog, so every timed window starts from the steady state rather than from a head start.
    warmup = {"decode_only": 3, "baseline": 3 + 2 * threads}
    rates = {k: [] for k in contenders}
    # CPU time per image of the DALI contenders (this process's threads; the baseline's workers are processes of
    # their own): what a contender costs, steadier than its images/s when other jobs share the cores
    cpu = {k: [] for k in contenders if k != "baseline"}
    for _ in range(rounds):  # interleaved rounds: drift on a shared machine hits every contender alike
        for k in contenders:
            rates[k].append(_timed(made[k], seconds, warmup.get(k, 3), cpu.get(k)))
    for k, v in rates.items():
        res[k] = float(np.median(v))
        res[k + "_rounds"] = [round(x, 1) for x in v]
    for k, v in cpu.items():
        res[k + "_cpu_us_per_img"] = float(np.median(v))
    if "baseline" in res and "pipeline" in res:
        res["pipeline_vs_baseline"] = res["pipeline"] / res["baseline"]
    if "decode_only" in res and "pipeline" in res:
        res["pipeline_vs_decode_only"] = res["pipeline"] / res["decode_only"]
    for e in echoes:
        if e != 1 and "pipeline" in res and f"pipeline_echo{e}" in res:
            res[f"echo{e}_vs_echo1"] = res[f"pipeline_echo{e}"] / res["pipeline"]
            res[f"echo{e}_vs_echo1_cpu"] = res["pipeline_cpu_us_per_img"] / res[f"pipeline_echo{e}_cpu_us_per_img"]
    res["machine"] = host.machine()
    res["torch"] = torch.__version__
    return res


def bench_stats(
    data: str,
    device: str | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    max_images: int | None = None,
    rounds: int = 3,
) -> dict:
    """images/s of the stats pass vs DALI decode alone (same reader, decoder, images, batch size and threads; the
    decoded images discarded), alternating rounds, medians; and process CPU time per image, steadier than wall
    time on a shared machine. Pipeline construction is left out of both timings."""
    from alexdata.dataset import open_split
    from alexdata.errors import StatsError
    from alexdata.stats import StatsPass, select

    if rounds < 1:
        raise StatsError(f"--rounds must be >= 1, got {rounds}")
    device = device or host.default_device()
    threads = host.cores() if threads is None else threads
    sel = select(open_split(data, "train"), max_images)
    runs: dict[str, list[tuple[float, float]]] = {"decode": [], "stats": []}
    for _ in range(rounds):
        for name in runs:
            p = StatsPass(sel, device=device, batch_size=batch_size, threads=threads, decode_only=name == "decode")
            t0, c0 = time.perf_counter(), time.process_time()
            p.run()
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
            del p
    (dec_s, dec_cpu), (st_s, st_cpu) = ([float(np.median([r[i] for r in runs[k]])) for i in (0, 1)] for k in runs)
    n = sel.images
    return {
        "data": str(data),
        "images": n,
        "device": device,
        "batch_size": batch_size,
        "threads": threads,
        "rounds": rounds,
        "decode_img_s": n / dec_s,
        "stats_img_s": n / st_s,
        "ratio": dec_s / st_s,
        "ratio_pct": 100 * dec_s / st_s,
        "decode_cpu_us_per_img": dec_cpu / n * 1e6,
        "stats_cpu_us_per_img": st_cpu / n * 1e6,
        "machine": host.machine(),
    }
