"""The Inception-style training pipeline (AugmentConfig(augment="inception")): torchvision's RandomResizedCrop,
after Szegedy et al. 2015 ("Going deeper with convolutions" §6: patches of 8-100 % of the image's area, aspect
ratio 3/4-4/3), the augmentation of torchvision's and timm's ImageNet recipes, for models other than AlexNet.
One definition for the GPU and the CPU. The ops, in the order an image meets them:

  1. read     webdataset shards from `prepare` (or a raw class-folder tree), as pipelines/train.py
  2. window   torchvision's RandomResizedCrop.get_params, drawn in the graph from the header's (H, W): up to 10
              draws of (area share ~ U(scale), width / height ~ log-U(ratio)), the first window that fits; when
              none does, the whole image cut to the nearest ratio in range, centred
  3. decode   only that window (ROI decode, `fn.decoders.image_slice`; whether the GPU's hardware
              decoder takes window decodes is not measured yet)
  4. resize   window -> crop x crop, bilinear with antialiasing (torchvision's default)
  5. flip     horizontal, probability aug.flip_prob
  6+7. lighting + mean (and std)   one fused op, as in pipelines/train.py; none with dtype "uint8"
  -> NCHW (NHWC with output_layout="HWC"); labels as read. Evaluation: pipelines/eval.py at aug.eval_side.

On a prepare output the windows come from the stored images (shorter side 256): a small window is upsampled to
crop x crop, as with any loader that stores downscaled ImageNet.

Why not `fn.decoders.image_random_crop`, one operator: it draws the same area and aspect ratio, but when no draw
fits it places the fallback window at random rather than in the centre (dali/operators/image/crop/
random_crop_generator_util.cc), and DALI releases before 2024 drew the aspect ratio another way, so its crops
would depend on the DALI version. The window here is torchvision's on every version, for ~40 small per-image
arithmetic operators (docs/BENCHMARKS.md, "Inception crops").
"""

from __future__ import annotations

import math

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from pipelines import common
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split

ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params: 10 draws, then the centre fallback


def random_resized_window(hw, aug: AugmentConfig):
    """(anchor (y, x), size (h, w)): torchvision's RandomResizedCrop window in an image of extents `hw` (floats,
    shape [2]), integers as float32 [2] each. All draws are made at once and the first that fits is kept: the
    same distribution as drawing until one fits."""
    H, W = hw[0], hw[1]
    attempt = types.Constant(np.arange(ATTEMPTS, dtype=np.float32))
    area = fn.random.uniform(range=aug.scale, shape=[ATTEMPTS]) * (H * W)  # (10,) target areas in pixels
    log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    ratio = dmath.exp(fn.random.uniform(range=log_ratio, shape=[ATTEMPTS]))  # (10,) width / height
    w = dmath.floor(dmath.sqrt(area * ratio) + 0.5)  # torchvision: int(round(...)), ties aside
    h = dmath.floor(dmath.sqrt(area / ratio) + 0.5)
    fits = (w >= 1.0) & (w <= W) & (h >= 1.0) & (h <= H)
    first = fn.reductions.min(attempt + (1 - fits) * ATTEMPTS)  # the first attempt that fits; >= 10 when none
    chosen = attempt == first  # one-hot, or all False when none fits
    none = first >= ATTEMPTS
    # torchvision's fallback: the whole image, its longer side cut so that width / height is in `ratio`
    w_fallback = dmath.min(W, dmath.floor(H * aug.ratio[1] + 0.5))
    h_fallback = dmath.min(H, dmath.floor(W / aug.ratio[0] + 0.5))
    size = fn.stack(
        fn.reductions.sum(chosen * h) + none * h_fallback,
        fn.reductions.sum(chosen * w) + none * w_fallback,
    )
    span = hw - size  # valid anchors 0..span per axis
    anchor = common.uniform_anchor(span, axes=2)  # torchvision: randint(0, span + 1)
    return anchor + none * (dmath.floor(span / 2.0) - anchor), size  # the fallback: (H - h) // 2, (W - w) // 2


def decode_window(jpg, anchor, size, spec: RunSpec):
    """Decode only the window at `anchor` of `size` ((y, x) and (h, w) from `random_resized_window`)."""
    start, shape = fn.cast(anchor, dtype=types.INT32), fn.cast(size, dtype=types.INT32)
    return fn.decoders.image_slice(jpg, start=start, shape=shape, axis_names="HW", **common.decoder_kw(spec))


def build_inception_pipeline(
    split: Split,
    stats: PipelineStats,
    aug: AugmentConfig,
    spec: RunSpec,
    *,
    output_layout: str = "CHW",
    checkpoint: str | None = None,
):
    """A DALI pipeline yielding (images (3, crop, crop) float, or uint8 / channels last as `aug` and
    `output_layout` say; labels as read: `common.labels_from_digits` makes them int64), run as `spec` says;
    `checkpoint`: a saved position."""
    if aug.augment != "inception":
        raise ValueError(f"build_inception_pipeline takes augment='inception', got {aug.augment!r}")

    @pipeline_def(enable_checkpointing=True)
    def inception():
        jpg, label = common.read(split, spec, shuffle=True)  # 1
        anchor, size = random_resized_window(common.image_hw(jpg), aug)  # 2
        img = decode_window(jpg, anchor, size, spec)  # 3
        img = fn.resize(img, size=[aug.crop, aug.crop], antialias=True)  # 4: linear, antialiased
        mirror = fn.random.coin_flip(probability=aug.flip_prob)  # 5
        raw = aug.dtype == "uint8"
        out = fn.crop_mirror_normalize(  # 5-7 in one pass over the pixels
            img,
            mirror=mirror,
            mean=common.pca_lighting_mean(stats, aug.pca_std, channel_mean=not raw),
            std=list(stats.std_255) if aug.divide_std else [1.0, 1.0, 1.0],
            dtype=common.output_dtype(aug.dtype),
            output_layout=output_layout,
        )
        return out, label  # labels stay on the CPU: the loader parses them (common.labels_from_digits)

    return inception(**common.pipeline_kw(spec, checkpoint))
