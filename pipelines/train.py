"""The training pipeline (paper §4.1), one definition for the GPU and the CPU. The ops, in the order an image
meets them:

  1. read        webdataset shards from `prepare` (or a raw class-folder tree), regrouped every epoch, sharded
  2. decode      JPEG -> RGB (nvJPEG + hardware decoder on the GPU; on the CPU the decoder also does step 4)
  3. resize      shorter side -> 256, skipped on prepare output (already 256)
  4. crop        random 227x227, anchor uniform over all valid positions (fn.roi_random_crop's integer draw), or
                 inside the central 256 square (one crop at a fixed position, then k / 29 positions in it)
  5. flip        horizontal, probability 0.5
  6+7. lighting + mean   subtract (mean - 255 eigvec @ (alpha * eigval_01)), alpha ~ N(0, 0.1): one fused op
       (AugmentConfig.mean="pixel", paper §2: the mean image is subtracted from the central square before the
       crop, on the GPU, so each crop loses the mean image's window under it; the fused op then adds the
       lighting offset only)
  -> NCHW float (NHWC with output_layout="HWC": the loader's channels-last batch); labels as ASCII digits (the
     loader makes int64 of them)

DALI runs a graph's CPU operators one after another, each ~0.3-0.5 ms a batch of 256 (docs/BENCHMARKS.md, "The
DALI graph"): the draws are written so that no crop arithmetic runs on the CPU. The GPU graph of the paper recipe
has 8 CPU operators (reader, label pad, two positions, flip, lighting draw, its transform and reshape), the
modern recipe's 6; `common.operators` lists them.

Raw images take a shortcut: the 227 window is chosen in resized coordinates, only that region of the original is
decoded (ROI decode) and resized straight to 227x227, instead of decoding and resizing the whole image (more CPU
arithmetic: the window is mapped back to the original's coordinates).

Data echoing (`echo` > 1, Choi et al. 2019, arXiv:1907.05550): steps 2-3 once, then 4-7 `echo` times with their
own draws, so one decode gives `echo` differently augmented copies (alexdata/echo.py puts them in different
batches). The whole image is then decoded, as on the GPU, where the decoder's cache (Tuning.gpu_cache_gb)
can keep it.
"""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from pipelines import common
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split
from pipelines.inception import build_inception_pipeline

ROI_MARGIN = 2  # original pixels decoded beyond the window: the resampling filter reaches past its edge


def roi_window(jpg, aug: AugmentConfig):
    """A random crop x crop window of the image resized to shorter side `aug.shorter_side`, mapped back to the
    original: ((box_start, box_end) the integer "WH" box to decode, (roi_start, roi_end) the exact fractional
    window inside that box in "HW" order, as `fn.resize` takes it), and the window's (y, x) offset from
    `common.crop_offset` (inside the central square: its place in the mean image)."""
    hw = common.image_hw(jpg)  # original (H, W)
    hw_r = common.resized_hw(hw, aug.shorter_side)  # after resize_shorter: the header is read once
    square = aug.shorter_side if aug.central_square else None
    lo, offset = common.crop_offset(hw_r, aug.crop, square)
    k = lo + offset  # (y, x) anchors in the resized image
    start, end = k * hw / hw_r, (k + aug.crop) * hw / hw_r  # resize maps output x to input x * w / wr
    return window_boxes(start[1], end[1], start[0], end[0], hw[1], hw[0]), offset


def window_boxes(x0, x1, y0, y1, w, h):
    bx0, by0 = dmath.max(dmath.floor(x0) - ROI_MARGIN, 0.0), dmath.max(dmath.floor(y0) - ROI_MARGIN, 0.0)
    bx1, by1 = dmath.min(dmath.ceil(x1) + ROI_MARGIN, w), dmath.min(dmath.ceil(y1) + ROI_MARGIN, h)
    box = lambda a, b: fn.cast(fn.stack(a, b), dtype=types.INT32)  # image_slice takes integer start/end
    return box(bx0, by0), box(bx1, by1), fn.stack(y0 - by0, x0 - bx0), fn.stack(y1 - by0, x1 - bx0)


def roi_decode_crop(jpg, window, crop: int, spec: RunSpec):
    """Decode only the box of `window` (from `roi_window`) and resample its exact window to crop x crop."""
    box_start, box_end, roi_start, roi_end = window
    img = fn.decoders.image_slice(jpg, start=box_start, end=box_end, axis_names="WH", **common.decoder_kw(spec))
    return fn.resize(img, size=[crop, crop], roi_start=roi_start, roi_end=roi_end, roi_relative=False, antialias=True)


def draws(stats: PipelineStats, aug: AugmentConfig, output_layout: str, *, mean_after: bool = False) -> dict:
    """5-7's random draws for one augmented image, as crop_mirror_normalize's arguments: a coin flip (5) and the
    vector mean - lighting offset, alpha ~ N(0, pca_std) (6+7; without the mean with AugmentConfig.mean="pixel").
    mean_after: the mean image's window is subtracted after crop_mirror_normalize (`minus_mean_window`), so it
    hands out float32; otherwise the mean image is already off the image it gets (`minus_mean_image`)."""
    mirror = fn.random.coin_flip(probability=aug.flip_prob)  # 5
    pixel = aug.mean == "pixel"
    # 6+7; dtype uint8 hands out the pixels as decoded
    mean = common.pca_lighting_mean(stats, aug.pca_std, channel_mean=not pixel and aug.dtype != "uint8")
    std = list(stats.std_255) if aug.divide_std else [1.0, 1.0, 1.0]
    # float32 before the mean image's window is subtracted: a float16 difference of float16s loses levels
    dtype = types.FLOAT if mean_after else common.output_dtype(aug.dtype)
    return dict(mirror=mirror, mean=mean, std=std, dtype=dtype, output_layout=output_layout)


def minus_mean_window(out, offset, cmn: dict, stats: PipelineStats, aug: AugmentConfig, spec: RunSpec):
    """6 with AugmentConfig.mean="pixel" on raw images' ROI-decoded crops: minus the mean image's window at the
    crop's offset, mirrored with it."""
    if aug.mean != "pixel":
        return out
    mean_img = common.mean_image(stats, aug, spec.device)
    return common.subtract_mean_window(out, mean_img, aug, offset, cmn["mirror"], cmn["std"], cmn["output_layout"])


def minus_mean_image(sq, stats: PipelineStats, aug: AugmentConfig, spec: RunSpec):
    """6 with central_square: the central shorter_side square `sq` minus the mean image with mean="pixel" (paper
    §2; float32, on the image's device): the window every crop of it then takes is the mean image's window at the
    same place, so the crop needs no offset arithmetic."""
    return sq - common.mean_image(stats, aug, spec.device) if aug.mean == "pixel" else sq


def augment_decoded(img, shape, stats: PipelineStats, aug: AugmentConfig, spec: RunSpec, output_layout: str):
    """4-7 on a decoded image `img` with draws of its own at every call (data echoing calls it once per copy):
    with central_square `img` is already the square (`minus_mean_image`'s output) and the window's offset in it
    is drawn from the fixed span; otherwise `shape` (int32 (H, W, C)) places a window anywhere in the image. On
    the GPU `fn.slice` cuts it out (a copy on the GPU, no CPU operator); on the CPU crop_mirror_normalize does,
    from crop_pos = anchor / span, which saves the copy for three small operators (`span_inverse` is computed
    once per image)."""
    cmn = draws(stats, aug, output_layout)
    c = aug.crop
    if aug.central_square:
        pos_x, pos_y = common.square_positions(aug)  # 4
        return fn.crop_mirror_normalize(img, crop=(c, c), crop_pos_x=pos_x, crop_pos_y=pos_y, **cmn)
    if spec.device == "gpu":
        window = fn.slice(img, start=common.random_anchor(shape, c), shape=[c, c, 3], axis_names="HWC")  # 4
        return fn.crop_mirror_normalize(window, **cmn)
    shape, inverse = shape
    pos = common.random_anchor_int64(shape, c) * inverse  # 4: rounds back to the anchor (crop_attr.h: roundf)
    return fn.crop_mirror_normalize(img, crop=(c, c), crop_pos_x=pos[1], crop_pos_y=pos[0], **cmn)


def span_inverse(shape, crop: int):
    """1 / max(extent - crop, 1) per axis of an int32 (H, W, C) shape, float32: anchor * this is crop_pos."""
    return 1.0 / dmath.max(shape - crop, 1)


def build_train_pipeline(
    split: Split,
    stats: PipelineStats,
    aug: AugmentConfig,
    spec: RunSpec,
    *,
    output_layout: str = "CHW",
    checkpoint: str | None = None,
    echo: int = 1,
):
    """A DALI pipeline yielding (images NCHW float, or NHWC with output_layout="HWC"; labels as read:
    `common.labels_from_digits` makes them int64), run as `spec` says; `checkpoint`: a saved position.

    echo > 1 (data echoing, Choi et al. 2019; alexdata/echo.py hands the copies out): each image is decoded once
    and augmented `echo` times with independent draws; the pipeline yields `echo` image outputs, then the labels.
    aug.augment "inception": torchvision's RandomResizedCrop instead (pipelines/inception.py; echo 1 only)."""
    if aug.augment == "inception":
        if echo != 1:
            raise ValueError("echo > 1 takes augment='paper': the inception pipeline decodes only each crop's window")
        return build_inception_pipeline(split, stats, aug, spec, output_layout=output_layout, checkpoint=checkpoint)
    if not (isinstance(echo, int) and echo >= 1):
        raise ValueError(f"echo must be an int >= 1 (augmented copies of each decoded image), got {echo!r}")
    resize = common.needs_resize(split, aug.shorter_side)
    # The whole image is decoded once: to echo it; on the GPU, where the hardware JPEG decoder serves a plain
    # decode, and the decoder's cache keeps whole images only (common.cache_kw)
    whole = echo > 1 or (spec.device == "gpu" and (not resize or spec.tuning.gpu_cache_mb > 0))
    c = aug.crop

    @pipeline_def(enable_checkpointing=True)
    def train():
        jpg, label = common.read(split, spec, shuffle=True)  # 1
        if whole:
            img = common.decode(jpg, spec)  # 2
            if resize:
                img = common.resize_shorter(img, aug.shorter_side)  # 3
            if aug.central_square:
                img, shape = minus_mean_image(common.central_square(img, aug.shorter_side), stats, aug, spec), None
            else:  # the header gives a prepared image's shape before it is decoded; a resized one's is known after
                shape = img.shape(dtype=types.INT32, device="cpu") if resize else common.peek_shape(jpg)
                shape = shape if spec.device == "gpu" else (shape, span_inverse(shape, c))
            copies = [augment_decoded(img, shape, stats, aug, spec, output_layout) for _ in range(echo)]  # 4-7 each
            return (*copies, label)  # labels stay on the CPU: the loader parses them (common.labels_from_digits)
        if resize:  # raw images: ROI decode of the crop window (2-4)
            cmn = draws(stats, aug, output_layout, mean_after=aug.mean == "pixel")  # 5-7
            window, offset = roi_window(jpg, aug)
            img = roi_decode_crop(jpg, window, c, spec)
            out = fn.crop_mirror_normalize(img, **cmn)  # 5-7 in one pass over the pixels
            return minus_mean_window(out, offset, cmn, stats, aug, spec), label
        # CPU, prepared images: the decoder emits only the region the crop needs, so crop_mirror_normalize reads
        # a small contiguous image (+6-9 % images/s on 2 CPU cores, docs/BENCHMARKS.md)
        if aug.central_square:
            sq = common.decode(jpg, spec, crop=(aug.shorter_side, (common.FLOOR_HALF, common.FLOOR_HALF)))  # 2+4
            return augment_decoded(minus_mean_image(sq, stats, aug, spec), None, stats, aug, spec, output_layout), label
        start = common.random_anchor(common.peek_shape(jpg)[0:2], c, dims=2)  # 4; the decoders' slice takes (y, x)
        img = fn.decoders.image_slice(jpg, start=start, shape=[c, c], axis_names="HW", **common.decoder_kw(spec))
        return fn.crop_mirror_normalize(img, **draws(stats, aug, output_layout)), label  # 5-7

    return train(**common.pipeline_kw(spec, checkpoint))
