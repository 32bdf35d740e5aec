"""Throughput data in seconds: prepare's output format (shards + manifest.json) and a stats.json, written directly
from a few hundred random textures, for measuring the loader and the trainer where a minute of machine time is
precious (a lent GPU: docs/GPU.md). `alexnet synth --shards` writes it.

What `prepare` would have written from real photos, at the sizes that set a decoder's speed: shorter side 256,
longer side 256-384 (ImageNet's 4:3 and 3:4 after the resize), JPEG quality 90 with 4:2:0 chroma, ~30 KB a
file, as on the ILSVRC-2012 shards. `distinct` different JPEGs are encoded (smooth colour fields with grain:
an entropy close to a photo's) and each sample is one of them, so the writing costs a few seconds at any
image count. Class c is textures c, c + classes, ...: a net can learn it (the check's paper-init stage), and
nothing about accuracy is meant by it.

The statistics are not computed (no stats pass): stats.json holds ImageNet's published figures (fb.resnet.torch:
mean, std and the covariance's eigen-decomposition, scaled to 0-255), and the mean image is the mean colour;
its `source` says so. For correctness tests use `alexnet synth` -> `prepare` -> `stats`, which go through every
real code path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from alexdata.errors import ConfigError
from alexdata.files import atomic_write
from alexdata.shards import ShardWriter, index_path, make_manifest, shard_name, write_manifest
from alexdata.statsfile import write_stats
from pipelines.config import SHORTER_SIDE

# ImageNet's RGB statistics as fb.resnet.torch publishes them (0-1 scale; eigval are the variances along
# the eigenvectors, which are its columns here), scaled to stats.json's 0-255
IMAGENET_MEAN_01 = (0.485, 0.456, 0.406)
IMAGENET_STD_01 = (0.229, 0.224, 0.225)
IMAGENET_EIGVAL_01 = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def texture_jpeg(rng: np.random.Generator, quality: int = 90) -> bytes:
    """One JPEG of shorter side 256 and longer side 256-384 (either orientation): a smooth random colour field
    with grain, which JPEG-encodes to ~30 KB at quality 90."""
    long_side = int(rng.integers(SHORTER_SIDE, 385))
    w, h = (long_side, SHORTER_SIDE) if rng.random() < 0.5 else (SHORTER_SIDE, long_side)
    coarse = rng.uniform(0, 255, (int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    grain = rng.normal(0, float(rng.uniform(6, 14)), (h, w, 1)) + rng.normal(0, 4, (h, w, 3))
    img = np.clip(field + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_split(out: Path, split: str, images: int, jpegs: list[bytes], classes: int, shard_size: int, rng) -> list:
    order = rng.integers(0, len(jpegs), images)  # which texture each sample is
    records = []
    for s, start in enumerate(range(0, images, shard_size)):
        shard = ShardWriter()
        for i in range(start, min(images, start + shard_size)):
            j = int(order[i])
            shard.add(f"{split}_{i:08d}", jpegs[j], j % classes)
        data, idx, facts = shard.finish()
        tar = out / f"{shard_name(split, s)}.tar"
        atomic_write(index_path(tar), idx)
        atomic_write(tar, data)
        empty = {"skipped": [], "upscaled": [], "renamed": [], "decoder_warnings": []}
        records.append((split, {"file": tar.name, "images": shard.images, **empty, **facts}))
    return records


def make_throughput_data(
    out: str | os.PathLike,
    *,
    classes: int = 100,
    train_images: int = 20_000,
    val_images: int = 1_000,
    distinct: int = 512,
    shard_size: int = 1024,
    seed: int = 0,
    quality: int = 90,
) -> dict:
    """Writes the prepare output `out` (module docstring) and returns its manifest. ConfigError on bad counts."""
    for name, v, least in (("classes", classes, 1), ("train_images", train_images, 1), ("val_images", val_images, 0)):
        if not (isinstance(v, int) and v >= least):
            raise ConfigError(f"{name}={v!r}: expected a whole number >= {least}")
    if not (isinstance(distinct, int) and distinct >= classes):
        raise ConfigError(f"distinct={distinct!r}: expected at least one texture per class ({classes})")
    out = Path(out)
    if (out / "manifest.json").exists():
        raise ConfigError(f"{out}: already holds a prepare output (manifest.json); give an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    jpegs = [texture_jpeg(rng, quality) for _ in range(distinct)]
    records = _write_split(out, "train", train_images, jpegs, classes, shard_size, rng)
    if val_images:
        records += _write_split(out, "val", val_images, jpegs, classes, shard_size, rng)
    names = [f"t{c:04d}" for c in range(classes)]
    params = dict(shorter_side=SHORTER_SIDE, quality=quality, shard_size=shard_size, seed=seed, textures=distinct)
    manifest = make_manifest(names, params, records, [])
    write_stats(imagenet_stats_record(out), out / "stats.json")
    write_manifest(out, manifest)  # last: its presence means the output is whole
    manifest["mean_jpeg_bytes"] = float(np.mean([len(j) for j in jpegs]))
    return manifest


def imagenet_stats_record(out: Path) -> dict:
    """A stats.json record of ImageNet's published statistics (module docstring), on the 0-255 scale."""
    u, _, vt = np.linalg.svd(np.array(IMAGENET_EIGVEC, np.float64))
    vec = u @ vt  # the nearest orthonormal matrix: the published one is rounded to 4 digits
    vec *= np.sign(vec[np.abs(vec).argmax(0), range(3)])  # each column's largest component positive, as `stats`
    val_255 = np.array(IMAGENET_EIGVAL_01, np.float64) * 255**2
    mean_255 = np.array(IMAGENET_MEAN_01) * 255
    return {
        "scale": 255,
        "mean": mean_255.tolist(),
        "std": (np.array(IMAGENET_STD_01) * 255).tolist(),
        "cov": (vec @ np.diag(val_255) @ vec.T).tolist(),
        "eigval": val_255.tolist(),
        "eigvec": vec.tolist(),
        "mean_image": np.broadcast_to(mean_255, (SHORTER_SIDE, SHORTER_SIDE, 3)).copy(),
        "source": {"data": str(out), "kind": "published ImageNet statistics (fb.resnet.torch), not computed"},
    }
