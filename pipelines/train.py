"""The training pipeline (paper §4.1), one definition for the GPU and the CPU. The ops, in the order an image
meets them:

  1. read        webdataset shards from `prepare` (or a raw class-folder tree), regrouped every epoch, sharded
  2. decode      JPEG -> RGB (nvJPEG + hardware decoder on the GPU; on the CPU the decoder also does step 4)
  3. resize      shorter side -> 256, skipped on prepare output (already 256)
  4. crop        random 227x227, anchor uniform over all valid positions (or inside the central 256 square)
  5. flip        horizontal, probability 0.5
  6+7. lighting + mean   subtract (mean - 255 eigvec @ (alpha * eigval_01)), alpha ~ N(0, 0.1): one fused op
       (AugmentConfig.mean="pixel", paper §2: the mean image's window under the crop, cropped and flipped with
       it, is subtracted apart; the fused op then adds the lighting offset only)
  -> NCHW float (NHWC with output_layout="HWC": the loader's channels-last batch); labels as ASCII digits (the
     loader makes int64 of them)

Raw images take a shortcut: the 227 window is chosen in resized coordinates, only that region of the original is
decoded (ROI decode) and resized straight to 227x227, instead of decoding and resizing the whole image.
"""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from pipelines import common
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split

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


def build_train_pipeline(
    split: Split,
    stats: PipelineStats,
    aug: AugmentConfig,
    spec: RunSpec,
    *,
    output_layout: str = "CHW",
    checkpoint: str | None = None,
):
    """A DALI pipeline yielding (images NCHW float, or NHWC with output_layout="HWC"; labels as read:
    `common.labels_from_digits` makes them int64), run as `spec` says; `checkpoint`: a saved position."""

    @pipeline_def(enable_checkpointing=True)
    def train():
        jpg, label = common.read(split, spec, shuffle=True)  # 1
        mirror = fn.random.coin_flip(probability=aug.flip_prob)  # 5
        pixel = aug.mean == "pixel"
        mean = common.pca_lighting_mean(stats, aug.pca_std, channel_mean=not pixel)  # 6+7
        std = list(stats.std_255) if aug.divide_std else [1.0, 1.0, 1.0]
        # float32 before the mean image's window is subtracted: a float16 difference of float16s loses levels
        cmn = dict(
            mirror=mirror,
            mean=mean,
            std=std,
            dtype=types.FLOAT if pixel else common.output_dtype(aug.dtype),
            output_layout=output_layout,
        )
        if common.needs_resize(split, aug.shorter_side):  # raw images: ROI decode of the crop window (2-4)
            window, offset = roi_window(jpg, aug)
            img = roi_decode_crop(jpg, window, aug.crop, spec)
            out = fn.crop_mirror_normalize(img, **cmn)
        else:
            square = aug.shorter_side if aug.central_square else None
            hw = common.image_hw(jpg)
            offset = common.crop_offset(hw, aug.crop, square)[1]
            pos = common.crop_anchor_frac(hw, aug.crop, square, k=offset)  # (y, x)
            if spec.device == "cpu":
                # 2+4: the decoder emits the crop, so crop_mirror_normalize reads a small contiguous image
                # (+6-9 % images/s on 2 CPU cores, docs/BENCHMARKS.md)
                img = common.decode(jpg, spec, crop=(aug.crop, pos))
                out = fn.crop_mirror_normalize(img, **cmn)  # 5-7 in one pass over the pixels
            else:
                # 2, then 4-7 in one GPU pass: keep the plain decode, which the hardware JPEG decoder serves
                img = common.decode(jpg, spec)
                out = fn.crop_mirror_normalize(
                    img, crop=(aug.crop, aug.crop), crop_pos_x=pos[1], crop_pos_y=pos[0], **cmn
                )
        if pixel:  # 6: minus the mean image's window at the crop's offset, mirrored with the crop
            mean_img = common.mean_image(stats, aug, spec.device)
            out = common.subtract_mean_window(out, mean_img, aug, offset, mirror, std, output_layout)
        return out, label  # labels stay on the CPU: the loader parses them (common.labels_from_digits)

    return train(**common.pipeline_kw(spec, checkpoint))
