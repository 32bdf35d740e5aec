"""Benchmarks of the data stages (`alexnet bench prepare|stats|loader`). They report ratios measured side by side
in one run, on the same files and machine: shared machines are noisy, ratios much less so. Figures go to
docs/BENCHMARKS.md with their command, machine and date."""
from __future__ import annotations

import io
import os
import platform
import time

import numpy as np
from PIL import Image


def machine() -> dict:
    import PIL

    info = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "pillow": PIL.__version__, "numpy": np.__version__}
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:
        pass
    return info


def plain_pil(data: bytes, shorter_side: int = 256, quality: int = 90) -> bytes:
    """What a user would write without `prepare`'s DCT-domain draft: full decode, resize, encode."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
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
    from alexdata.prepare import SHORTER_SIDE, resize_to_jpeg, scan

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
    return {"images": len(blobs), "mean_input_kb": sum(map(len, blobs)) / len(blobs) / 1e3,
            "prepare_per_core": o, "plain_pil_per_core": p, "speedup": o / p, "machine": machine()}
