"""The statistics pass's pipeline and the decode-only pipeline, the reference every benchmark measures against.

stats        read (stored order, images only) -> decode (RGB) -> the images (the CPU sums them: alexdata/stats.py),
             or on the GPU the per-image sums as DALI operators (`moments_graph`), and each image's central
             256x256 patch for the mean image (paper §2)
decode_only  the training reader (shuffled, with its labels) -> decode: the ceiling of every pipeline here
"""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from pipelines import common
from pipelines.config import SHORTER_SIDE, RunSpec, Split


def read_images(split: Split):
    """The encoded images of `split` in stored order, each once an epoch (no shuffling, sharding or padding)."""
    if split.prepared:
        return fn.readers.webdataset(
            paths=list(split.tars),
            index_paths=list(split.indexes),
            ext=["jpg"],
            missing_component_behavior="error",
            dont_use_mmap=common.NO_MMAP,
            name=common.READER,
        )
    jpg, _ = fn.readers.file(files=list(split.files), dont_use_mmap=common.NO_MMAP, name=common.READER)
    return jpg


def central_patch(img, resize: bool, side: int = SHORTER_SIDE):
    """The central side x side patch of an HWC image node (CPU or GPU), top-left (floor((H - side) / 2),
    floor((W - side) / 2)): the pipelines' central square (`common.crop_offset`), after resizing its shorter side
    to `side` when `resize`, as the pipelines resize (paper §2)."""
    if resize:
        img = common.resize_shorter(img, side)
    start = (img.shape(dtype=types.INT32, device="cpu")[0:2] - side) // 2  # (y, x); integers: exact
    return fn.slice(img, start=start, shape=[side, side], axes=[0, 1])


def moments_graph(img):
    """Per-sample S1 (3,) and S2 as (rr, rg, rb, gg, gb, bb), uint64, of an HWC uint8 image node (GPU or CPU).
    Used on the GPU; the tests run it on the CPU against numpy."""
    u64 = types.UINT64
    x = fn.cast(img, dtype=types.UINT16)  # a product of two 8-bit values fits 16 bits: 255**2 = 65025
    s1 = fn.reductions.sum(img, axes=[0, 1], dtype=u64)
    s2 = fn.cat(
        fn.reductions.sum(x * x[:, :, 0:1], axes=[0, 1], dtype=u64),  # rr rg rb
        fn.reductions.sum(x[:, :, 1:] * x[:, :, 1:2], axes=[0, 1], dtype=u64),  # gg gb
        fn.reductions.sum(x[:, :, 2:] * x[:, :, 2:], axes=[0, 1], dtype=u64),
        axis=0,
    )  # bb
    return s1, s2


def build_stats_pipeline(split: Split, spec: RunSpec, *, outputs: str = "images", mean_image: bool = False):
    """reader -> decoder (RGB) -> `outputs`: "images" (HWC uint8) or "moments" (`moments_graph`: S1, S2 and the
    image shape per sample). With `mean_image`, "moments" also gives each image's `central_patch`, last, and
    "images" the image resized to shorter side 256 where the split is not stored at that size (the CPU pass takes
    the central view of the last output in numpy, cheaper than DALI's slice and its output copy). Not built."""
    resize = common.needs_resize(split, SHORTER_SIDE)

    @pipeline_def(**common.pipeline_kw(spec))
    def pipe():
        jpg = read_images(split)
        img = common.decode(jpg, spec)  # the pipelines' decoder: mixed (nvJPEG + hardware) or cpu, RGB
        if outputs == "images":
            return (img, *((common.resize_shorter(img, SHORTER_SIDE),) if mean_image and resize else ()))
        s1, s2 = moments_graph(img)
        return s1, s2, img.shape(device="cpu"), *((central_patch(img, resize),) if mean_image else ())

    return pipe()


def build_decode_pipeline(split: Split, spec: RunSpec):
    """DALI's read and decode alone, as the training pipeline reads and decodes (decoder tuning included):
    (images, labels as read)."""

    @pipeline_def(**common.pipeline_kw(spec))
    def decode_only():
        jpg, label = common.read(split, spec, shuffle=True)
        return common.decode(jpg, spec), label

    return decode_only()
