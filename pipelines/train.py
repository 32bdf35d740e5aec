"""The training pipeline (paper §4.1), one definition for the GPU and the CPU. The ops, in the order an image
meets them:

  1. read        webdataset shards from `prepare` (or a raw class-folder tree), shuffled, sharded per rank
  2. decode      JPEG -> RGB (nvJPEG + hardware decoder on the GPU)
  3. resize      shorter side -> 256, skipped on prepare output (already 256)
  4. crop        random 227x227, anchor uniform over all valid positions
  5. flip        horizontal, probability 0.5
  6+7. lighting + mean   subtract (mean - eigvec @ (alpha * eigval)), alpha ~ N(0, 0.1): one fused op
  -> NCHW float, int64 labels

Raw images take a shortcut: the 227 window is chosen in resized coordinates, only that region of the original is
decoded (ROI decode) and resized straight to 227x227, instead of decoding and resizing the whole image.
"""
from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from alexdata.dataset import Split
from pipelines import common
from pipelines.config import AugmentConfig, PipelineStats


def roi_window(jpg, aug: AugmentConfig):
    """(rel_start, rel_shape) in "WH" order of a random crop x crop window of the image resized to shorter side
    `aug.shorter_side`, as fractions of the original: relative coordinates survive the resize unchanged."""
    hwc = fn.peek_image_shape(jpg, dtype=types.FLOAT)
    h, w = hwc[0], hwc[1]
    scale = aug.shorter_side / fn.cast(fn.reductions.min(fn.stack(h, w)), dtype=types.FLOAT)
    wr, hr = w * scale, h * scale  # resized extent (fractional)
    x = common.uniform_offset_frac(fn.cast(wr, dtype=types.INT32), aug.crop) * (wr - aug.crop)
    y = common.uniform_offset_frac(fn.cast(hr, dtype=types.INT32), aug.crop) * (hr - aug.crop)
    start = fn.stack(x / wr, y / hr)
    shape = fn.stack(aug.crop / wr, aug.crop / hr)
    return start, shape


def roi_decode_crop(jpg, rel_start, rel_shape, crop: int, device: str, hw_decoder_load: float = 0.65):
    """Decode only the window (rel_start, rel_shape, "WH", fractions) and resize it to crop x crop."""
    kw = dict(rel_start=rel_start, rel_shape=rel_shape, axis_names="WH", output_type=types.RGB)
    if device == "gpu":
        img = fn.decoders.image_slice(jpg, device="mixed", hw_decoder_load=hw_decoder_load, **kw)
    else:
        img = fn.decoders.image_slice(jpg, device="cpu", **kw)
    return fn.resize(img, size=[crop, crop], antialias=True)


def build_train_pipeline(split: Split, stats: PipelineStats, aug: AugmentConfig = AugmentConfig(), *,
                         batch_size: int, num_threads: int, device: str = "cpu", seed: int = 0, shard_id: int = 0,
                         num_shards: int = 1, prefetch: int = 2, hw_decoder_load: float = 0.65,
                         device_id: int = 0, checkpoint: str | None = None):
    """A DALI pipeline yielding (images NCHW float, labels int64 [1]); device "cpu" (device_id=None) or "gpu"."""

    @pipeline_def(enable_checkpointing=True)
    def train():
        jpg, label = common.read(split, shuffle=True, shard_id=shard_id, num_shards=num_shards)  # 1
        mirror = fn.random.coin_flip(probability=aug.flip_prob)  # 5
        mean = common.pca_lighting_mean(stats, aug.pca_std)  # 6+7
        std = list(stats.std_255) if aug.divide_std else [1.0, 1.0, 1.0]
        cmn = dict(mirror=mirror, mean=mean, std=std, dtype=common.output_dtype(aug.dtype, device),
                   output_layout="CHW")
        if common.needs_resize(split, aug.shorter_side):  # raw images: ROI decode of the crop window (2-4)
            start, shape = roi_window(jpg, aug)
            img = roi_decode_crop(jpg, start, shape, aug.crop, device, hw_decoder_load)
            out = fn.crop_mirror_normalize(img, **cmn)
        else:
            img = common.decode(jpg, device, hw_decoder_load)  # 2 (3: already 256)
            hwc = fn.peek_image_shape(jpg, dtype=types.INT32)
            out = fn.crop_mirror_normalize(  # 4-7 in one pass over the pixels
                img, crop=(aug.crop, aug.crop), crop_pos_x=common.uniform_offset_frac(hwc[1], aug.crop),
                crop_pos_y=common.uniform_offset_frac(hwc[0], aug.crop), **cmn)
        return out, (label.gpu() if device == "gpu" else label)

    return train(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                 seed=seed, prefetch_queue_depth=prefetch, **({"checkpoint": checkpoint} if checkpoint else {}))
