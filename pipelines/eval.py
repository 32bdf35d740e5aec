"""Evaluation pipelines: read -> decode -> (resize to shorter side 256) -> crop(s) -> mean subtraction. With
AugmentConfig(augment="inception") the shorter side is round(crop / 0.875) instead (torchvision: 256 for 224).

centre   one central 227 crop per image -> (N, 3, 227, 227)
tencrop  paper §4.1: the four corner crops and the centre crop, each with its mirror -> (N, 10, 3, 227, 227),
         in the order TL, TR, BL, BR, C, then the same five mirrored; the trainer averages their softmax.
         With AugmentConfig(central_square=True) the corners are those of the central 256x256 patch (paper §2).
With AugmentConfig(mean="pixel") each view loses the same window of the mean image (mirrored with it).
"""

from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from pipelines import common
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split

# (crop_pos_x, crop_pos_y): anchor = round(pos * (extent - crop)) in crop_mirror_normalize
TEN_CROP_POSITIONS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))


def build_eval_pipeline(
    split: Split,
    stats: PipelineStats,
    aug: AugmentConfig,
    spec: RunSpec,
    *,
    ten_crop: bool = False,
    output_layout: str = "CHW",
    checkpoint: str | None = None,
):
    """A DALI pipeline yielding (images, labels as read: `common.labels_from_digits` makes them int64); images
    (3, crop, crop) or (10, 3, crop, crop), channels last with output_layout="HWC"; run as `spec` says, its
    samples in stored order (`spec.shuffle_seed` unused); `checkpoint`: a saved position."""

    @pipeline_def(enable_checkpointing=True)
    def evaluate():
        jpg, label = common.read(split, spec, shuffle=False)
        img = common.decode(jpg, spec)
        if common.needs_resize(split, aug.eval_side):  # eval_side: shorter_side, or inception's crop / 0.875
            img = common.resize_shorter(img, aug.eval_side)
        pixel = aug.mean == "pixel"
        std = list(stats.std_255) if aug.divide_std else [1.0, 1.0, 1.0]
        cmn = dict(
            crop=(aug.crop, aug.crop),
            mean=[0.0] * 3 if pixel or aug.dtype == "uint8" else list(stats.mean_255),
            std=std,
            output_layout=output_layout,
            dtype=types.FLOAT if pixel else common.output_dtype(aug.dtype),
        )
        positions, mirrors = (TEN_CROP_POSITIONS, (0, 1)) if ten_crop else (TEN_CROP_POSITIONS[4:], (0,))
        offsets = [None] * len(positions)
        if aug.central_square:  # paper §4.1: the corners (and the centre) of the central 256x256 patch (§2)
            resized = common.needs_resize(split, aug.shorter_side)
            hw = common.image_hw(jpg, aug.shorter_side if resized else None)
            span = aug.shorter_side - aug.crop
            offsets = [types.Constant(np.float32([int(y * span + 0.5), int(x * span + 0.5)])) for x, y in positions]
            poss = [common.crop_anchor_frac(hw, aug.crop, aug.shorter_side, k=k) for k in offsets]
            places = [(p[1], p[0]) for p in poss]  # (crop_pos_x, crop_pos_y)
        else:
            places = positions
        mean_img = common.mean_image(stats, aug, spec.device) if pixel else None
        views = []
        for m in mirrors:
            for (x, y), k in zip(places, offsets):
                v = fn.crop_mirror_normalize(img, crop_pos_x=x, crop_pos_y=y, mirror=m, **cmn)
                views.append(common.subtract_mean_window(v, mean_img, aug, k, m, std, output_layout) if pixel else v)
        out = fn.stack(*views) if ten_crop else views[0]  # (10, 3, crop, crop) or (3, crop, crop)
        return out, label  # labels stay on the CPU: the loader parses them (common.labels_from_digits)

    return evaluate(**common.pipeline_kw(spec, checkpoint))
