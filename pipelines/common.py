"""Pieces every pipeline shares: the readers, ASCII label parsing, decoding, crop-window arithmetic and the
pipeline's run arguments.

All of it runs inside a DALI graph (the functions take and return DataNodes), so it builds for the CPU
(`device_id=None`) and the GPU (decoder on device "mixed": nvJPEG, with the A100/H100/H200 hardware decoder)."""

from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types

from pipelines.config import MAX_LABEL_DIGITS, SHUFFLE_BUFFER, RunSpec, Split

READER = "reader"  # every reader's name, which the iterator and the stats pass ask for epoch size and padding


def pipeline_kw(spec: RunSpec, checkpoint: str | None = None) -> dict:
    """The arguments a `pipeline_def` function takes from `spec`; `checkpoint`: a saved position to resume from."""
    return dict(
        batch_size=spec.batch_size,
        num_threads=spec.threads,
        device_id=spec.device_id,
        seed=spec.seed,
        prefetch_queue_depth=spec.tuning.prefetch,
        **({"checkpoint": checkpoint} if checkpoint else {}),
    )


# Files are read with read(2), not mapped: a shard (or raw file) cut short while a run reads it (a copy still in
# progress, a full disk) is then DALI's one-line error naming the file, where a mapped page past the end kills the
# process with SIGBUS. The cost is one copy of each JPEG from the page cache (docs/BENCHMARKS.md: the same
# images/s within the noise on 2 cores).
NO_MMAP = True


def read(split: Split, spec: RunSpec, *, shuffle: bool):
    """(encoded image, label) of one sample: the label as `ascii_digits` (shards) or int64 [1] (raw tree), both
    on the CPU; `labels_from_digits` makes int64 labels of either.

    Shuffling, so that every epoch groups the samples into batches afresh:
      shards    the shard order is redrawn every epoch (`shuffle_after_epoch`: DALI keeps each shard's samples
                in their stored order), and on top of it the reader draws each sample at random from a buffer
                of the next SHUFFLE_BUFFER samples of the epoch (`random_shuffle` + `initial_fill`; DALI's
                loader never mixes two epochs in that buffer, so an epoch still reads each sample once). prepare
                stored the samples in a seeded global permutation, so the window is a random draw of the split.
      raw tree  `fn.readers.file` redraws a permutation of the whole file list every epoch (epoch 0 too: the
                list is permuted here, as it is sorted by class on disk).
    The shard order and file permutations depend only on `spec.shuffle_seed`, the same on every rank, so the
    ranks' shards stay disjoint; the buffer's draws follow the pipeline seed (each rank's own, which is fine: they
    only reorder that rank's own samples). DALI checkpoints the buffer, so a mid-epoch resume is exact.
    Sharding: shards are padded to equal length (the last sample repeated) so every data-parallel rank runs the
    same number of batches; the iterator drops the padding, so one epoch over all shards sees each image once."""
    common = dict(
        shard_id=spec.shard_id,
        num_shards=spec.num_shards,
        pad_last_batch=True,
        name=READER,
        shuffle_after_epoch=shuffle,
        **({"shuffle_after_epoch_seed": spec.shuffle_seed} if shuffle else {}),
    )
    if split.prepared:
        if shuffle:
            common.update(random_shuffle=True, initial_fill=min(SHUFFLE_BUFFER, split.images))
        jpg, cls = fn.readers.webdataset(
            paths=list(split.tars),
            index_paths=list(split.indexes),
            ext=["jpg", "cls"],
            missing_component_behavior="error",
            dont_use_mmap=NO_MMAP,
            **common,
        )
        return jpg, ascii_digits(cls)
    files, labels = list(split.files), list(split.labels)
    if shuffle:  # files are sorted by class on disk: epoch 0 must not be
        order = np.random.default_rng(spec.shuffle_seed).permutation(len(files))
        files, labels = [files[i] for i in order], [labels[i] for i in order]
    jpg, label = fn.readers.file(files=files, labels=labels, dont_use_mmap=NO_MMAP, **common)
    return jpg, fn.cast(label, dtype=types.INT64)


def ascii_digits(cls):
    """A `.cls` component (ASCII digits) padded with zero bytes to MAX_LABEL_DIGITS: one cheap operator. The
    loader turns these into int64 labels (`labels_from_digits`) on whole batches in torch; parsing inside the
    graph took ten per-sample DALI operators, a core's worth of CPU at tens of thousands of images/s
    (docs/BENCHMARKS.md, "The loader")."""
    return fn.pad(cls, axes=[0], shape=[MAX_LABEL_DIGITS], fill_value=0)


def labels_from_digits(digits):
    """(B, MAX_LABEL_DIGITS) uint8 from `ascii_digits` -> (B,) int64, or (B,) int64 when the reader gave integer
    labels (a raw tree). Raises ValueError naming the first malformed label."""
    import torch

    if digits.dtype != torch.uint8 or digits.numel() == 0:  # integer labels, or an empty batch
        return digits.reshape(-1).to(torch.long, copy=True)  # never a view of DALI's (reused) output buffer
    if digits.dim() != 2 or digits.shape[1] != MAX_LABEL_DIGITS:  # fn.pad only widens: a longer .cls stays long
        raise ValueError(f"a .cls label is longer than {MAX_LABEL_DIGITS} characters")
    d = digits.long()
    given = d != 0
    bad = (given & ((d < 48) | (d > 57))).any(1) | ~given[:, 0] | (given[:, 1:] & ~given[:, :-1]).any(1)
    if bad.any():
        raw = bytes(d[bad.nonzero()[0, 0]].tolist()).rstrip(b"\0")
        raise ValueError(f"a .cls label is {raw!r}, not a class index in ASCII digits")
    value = torch.zeros(d.shape[0], dtype=torch.long, device=d.device)
    for j in range(d.shape[1]):
        value = torch.where(given[:, j], value * 10 + d[:, j] - 48, value)
    return value


def peek_shape(jpg):
    """int32 (H, W, C) of an encoded image from its header, as stored: EXIF orientation is not applied, here or by
    the decoders (`decoder_kw`), since prepare (PIL) and `model.preprocess` keep ImageNet's files as they were
    shot; DALI's default would turn some raw-tree and predict images a quarter round."""
    return fn.peek_image_shape(jpg, dtype=types.INT32, adjust_orientation=False)


def decoder_kw(spec: RunSpec) -> dict:
    """The arguments every decoder here takes: RGB out; on "mixed" (the GPU) also the hardware decoder's share,
    the size in pixels above which nvJPEG's hybrid Huffman decoder takes an image (0: every image), and with
    `preallocate_hw` = (height, width) of the largest image, the hardware decoder's buffers allocated up front
    (`preallocate_{height,width}_hint`, DALI docs fn.decoders.image)."""
    if spec.device == "gpu":
        kw = dict(
            output_type=types.RGB,
            adjust_orientation=False,  # `peek_shape`: images as stored, as prepare and PIL read them
            device="mixed",
            hw_decoder_load=spec.tuning.hw_decoder_load,
            hybrid_huffman_threshold=spec.tuning.hybrid_huffman_threshold,
        )
        if spec.preallocate_hw:
            kw.update(preallocate_height_hint=spec.preallocate_hw[0], preallocate_width_hint=spec.preallocate_hw[1])
        return kw
    return dict(output_type=types.RGB, adjust_orientation=False, device="cpu")


def cache_kw(spec: RunSpec) -> dict:
    """The GPU decoder's cache of decoded images (fn.decoders.image, "mixed" only; DALI docs: `cache_size` in MB,
    `cache_type`): "threshold" with threshold 0 keeps every image it decodes until the cache is full, so the
    first epoch fills it and later epochs decode only the rest (DALI's "largest" warms up over two epochs). DALI
    caches whole images only: the ROI decoders (image_crop, image_slice) take no cache (dali/operators/imgcodec/
    image_decoder.h: "we do not allow caching ROIs"). Images are keyed by the reader's source info (tar, offset,
    member name). The reader still reads a cached image's bytes (`skip_cached_images` off): they are memory-mapped
    and cheap, and `peek_image_shape` needs them to place the crop (it fails on the empty sample a skipping
    reader gives)."""
    if not spec.tuning.gpu_cache_mb:
        return {}
    return dict(cache_size=spec.tuning.gpu_cache_mb, cache_type="threshold", cache_threshold=0)


def decode(jpg, spec: RunSpec, crop=None):
    """RGB HWC uint8; on the GPU the mixed decoder splits work between nvJPEG's CUDA path and, on A100/H100/H200,
    the hardware JPEG decoder (`decoder_kw`: spec's tuning). crop = (size, (pos_y, pos_x)) decodes only that
    window (`decoders.image_crop`, same anchor rounding as crop_mirror_normalize). A whole-image decode on the GPU
    keeps `spec.tuning.gpu_cache_gb` of decoded images (`cache_kw`)."""
    kw = decoder_kw(spec)
    if crop is None:
        return fn.decoders.image(jpg, **kw, **cache_kw(spec))
    size, pos = crop
    return fn.decoders.image_crop(jpg, crop=(size, size), crop_pos_x=pos[1], crop_pos_y=pos[0], **kw)


def needs_resize(split: Split, shorter_side: int) -> bool:
    """A prepare output already stores shorter-side-`shorter_side` images: resizing them again is wasted work
    (docs/BENCHMARKS.md, "The loader")."""
    return not (split.prepared and split.shorter_side == shorter_side)


def resize_shorter(img, shorter_side: int):
    return fn.resize(img, resize_shorter=shorter_side, antialias=True)


def uniform_anchor(span, axes: int | None = None):
    """An integer (as float) uniform over 0..span per sample; `axes` = n draws at once for a span of shape [n]."""
    u = fn.random.uniform(range=(0.0, 1.0), **({"shape": [axes]} if axes else {}))
    k = dmath.floor(u * (span + 1.0))
    return dmath.min(k, span)  # u < 1, but float rounding of u * (span + 1) could reach span + 1


def image_hw(jpg, shorter_side: int | None = None):
    """(H, W) as floats, shape [2], from the encoded image's header; with `shorter_side`, the extents after
    `resize_shorter` (rounded as fn.resize rounds them)."""
    hw = fn.cast(peek_shape(jpg)[0:2], dtype=types.FLOAT)
    return hw if shorter_side is None else resized_hw(hw, shorter_side)


def resized_hw(hw, shorter_side: int):
    """Extents `hw` (floats, shape [2]) after `resize_shorter` to `shorter_side`, rounded as fn.resize rounds."""
    return dmath.floor(hw * shorter_side / fn.reductions.min(hw) + 0.5)


def crop_offset(hw, crop: int, square: int | None, k=None):
    """(lo, offset): a crop x crop window at lo + offset (y, x; integers as floats) in extents `hw` (floats,
    shape [2]). Offsets are uniform over every valid position (lo = 0), or with `square` over the positions
    inside the central square x square patch (paper §2; lo its top-left, so offset is also the window's place in
    the mean image); `k` (shape [2]) fixes the offsets inside the allowed range instead of drawing them."""
    lo, span = 0.0, hw - crop
    if square:
        lo, span = dmath.floor((hw - square) / 2.0), float(square - crop)  # the central square's top-left
    return lo, (uniform_anchor(span, axes=2) if k is None else k)


def crop_anchor_frac(hw, crop: int, square: int | None, k=None):
    """crop_pos (y, x) for `crop_mirror_normalize` (which rounds pos * (extent - crop) to the anchor) of the
    window `crop_offset` places; pass its offset as `k` to crop at the same place."""
    lo, offset = crop_offset(hw, crop, square, k)
    return (lo + offset) / dmath.max(hw - crop, 1.0)


def pca_lighting_mean(stats, pca_std: float, channel_mean: bool = True):
    """Per-sample vector to subtract: mean - eigvec @ (alpha * eigval_01) * 255, alpha ~ N(0, pca_std); mean is
    the per-channel mean, or 0 with channel_mean=False (AugmentConfig.mean="pixel", subtracted apart).

    Paper §4.1 adds [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel. That formula is not scale-free: l are
    variances, so it only means what the paper meant on the 0-1 pixel scale (as in fb.resnet.torch and its
    descendants, l ~ 0.22 on ImageNet: a shift of ~5 levels of 255). On our 0-255 statistics this is
    eigvec @ (alpha * eigval_255 / 255); using eigval_255 directly would shift colours by ~300 levels.
    Subtracting the vector in crop_mirror_normalize adds the lighting offset and removes the mean in one pass.
    The vector is affine in alpha, so one coord_transform makes it (M = -eigvec diag(eigval_255 / 255),
    T = mean), and a reshape gives crop_mirror_normalize the (3,) it takes: three CPU operators with the draw,
    none without lighting (a constant argument)."""
    mean = np.array(stats.mean_255 if channel_mean else (0.0, 0.0, 0.0), np.float32)
    if pca_std == 0:
        return mean.tolist()
    if stats.eigvec is None:
        raise ValueError(lighting_problem(stats, pca_std))
    alpha = fn.random.normal(shape=[1, 3], stddev=pca_std, dtype=types.FLOAT)  # one draw per image
    m = -np.array(stats.eigvec, np.float64) * (np.array(stats.eigval_255, np.float64) / 255.0)[None, :]
    vector = fn.coord_transform(alpha, M=m.astype(np.float32).reshape(-1).tolist(), T=mean.tolist())  # (1, 3)
    return fn.reshape(vector, shape=[3])


def random_anchor(shape, crop: int, dims: int = 3):
    """int32 top-left of a crop x crop window drawn uniformly over every valid position of an image of `shape`
    (int32 (H, W, C), e.g. `peek_shape`, giving (y, x, 0); or (H, W), giving (y, x)), both ends included.
    `fn.roi_random_crop` draws std::uniform_int_distribution(0, extent - crop) per axis when the region of
    interest is the whole image (dali/operators/segmentation/roi_random_crop.cc): two operators with the cast
    that `fn.slice` and the decoders' slice want, where the same draw written as arithmetic took eleven."""
    return fn.cast(random_anchor_int64(shape, crop, dims), dtype=types.INT32)


def random_anchor_int64(shape, crop: int, dims: int = 3):
    """`random_anchor` as fn.roi_random_crop hands it out, int64; `dims`: 3 for an (H, W, C) `shape`, 2 for an
    (H, W) one."""
    crop_shape = [crop, crop, 3][:dims]
    return fn.roi_random_crop(crop_shape=crop_shape, roi_start=[0] * dims, roi_end=shape)


# crop_pos that places a window at floor((extent - size) / 2), the central square's top-left (pipelines/stats.py):
# the crop operators round crop_pos * (extent - size) to nearest (dali/operators/image/crop/crop_attr.h, roundf),
# and 0.5 - 2^-16 stays below every .5 for extents up to 32,767 px past the size (tests/test_pipelines.py)
FLOOR_HALF = 0.5 - 2.0**-16


def central_square(img, side: int):
    """The central side x side patch of a decoded HWC image node (top-left floor((H - side) / 2), ...): one crop
    operator on the image's device, no arithmetic on the CPU."""
    return fn.crop(img, crop=(side, side), crop_pos_x=FLOOR_HALF, crop_pos_y=FLOOR_HALF)


def square_positions(aug):
    """(crop_pos_x, crop_pos_y) of a crop x crop window at an offset drawn uniformly from 0..span (span =
    shorter_side - crop, both ends included) of a shorter_side square: crop_pos k / span rounds back to exactly
    k (tests/test_pipelines.py). The span is fixed, so the draw needs no image shape: one operator per axis."""
    span = aug.shorter_side - aug.crop
    values = [k / span for k in range(span + 1)] if span else [0.0]
    return fn.random.uniform(values=values), fn.random.uniform(values=values)


def lighting_problem(stats, pca_std: float) -> str | None:
    """Why `stats` cannot serve PCA lighting of strength `pca_std`, in one line; None when it can."""
    if pca_std == 0 or stats.eigvec is not None:
        return None
    return (
        f"PCA lighting (pca_std {pca_std:g}) needs the statistics' eigenvalues and eigenvectors, and these have "
        f"the mean and std only: give statistics from `alexnet stats`, or pca_std=0"
    )


def mean_image_problem(stats, aug) -> str | None:
    """Why `stats` cannot serve `aug`'s mean image (AugmentConfig.mean="pixel"), in one line; None when it can."""
    m, side = stats.mean_image_255, aug.shorter_side
    if aug.mean != "pixel":
        return None
    if m is None:
        return (
            "mean='pixel' needs the training set's mean image, and these statistics have none (a stats.json "
            "from before it existed?): run `alexnet stats DATA` again"
        )
    if m.shape != (side, side, 3):
        return (
            f"the mean image is {m.shape[0]}x{m.shape[1]}, the central square of shorter_side {side} needs "
            f"{side}x{side}"
        )
    return None


def mean_image(stats, aug, device: str):
    """The mean image (AugmentConfig.mean="pixel", paper §2) as a DALI constant HWC float32, on the GPU when the
    pipeline's images are. ValueError with one line when the stats have none, or one of another size."""
    problem = mean_image_problem(stats, aug)
    if problem:
        raise ValueError(problem)
    return types.Constant(stats.mean_image_255, layout="HWC", device=device)


def subtract_mean_window(out, mean_img, aug, offset, mirror, std, layout: str):
    """`out` (float32 crops from crop_mirror_normalize with this `mirror`, `std` and `layout`) minus the window
    of `mean_img` at `offset` (y, x; from `crop_offset`), cropped and mirrored by the same operator, then cast
    to aug.dtype's output type. The anchor pos * (side - crop) rounds back to exactly `offset`."""
    pos = offset / float(max(aug.shorter_side - aug.crop, 1))
    window = fn.crop_mirror_normalize(
        mean_img,
        crop=(aug.crop, aug.crop),
        crop_pos_y=pos[0],
        crop_pos_x=pos[1],
        mirror=mirror,
        std=std,
        dtype=types.FLOAT,
        output_layout=layout,
    )
    out = out - window
    dtype = output_dtype(aug.dtype)
    return out if dtype == types.FLOAT else fn.cast(out, dtype=dtype)


def output_dtype(dtype: str):
    """DALI has no bfloat16: it emits float32 and the loader casts on the device."""
    if dtype == "float16":
        return types.FLOAT16
    if dtype == "uint8":
        return types.UINT8
    return types.FLOAT


def operators(pipe) -> list[tuple[str, str]]:
    """(device, operator) of every operator in `pipe`'s graph, defined but not built, so a GPU pipeline can be
    inspected on a machine without one: DALI runs a graph's CPU operators one after another, so their count is
    the chain every batch waits for on the CPU (docs/BENCHMARKS.md, "The DALI graph")."""
    pipe._build_graph()
    return [(op._op.device, op._op.schema_name) for op in pipe._ops]
