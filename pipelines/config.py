"""What the pipelines need to know: the samples to read (`Split`), the augmentation (defaults from the paper), the
dataset statistics, and how a pipeline runs (`RunSpec`: batch, threads, device, shard, decoder tuning)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CROP = 227  # paper §3.5 says 224; the layer arithmetic (55 = (227 - 11) / 4 + 1) needs 227
SHORTER_SIDE = 256  # paper §2: rescale so the shorter side is 256, then crop
MAX_LABEL_DIGITS = 6  # a `.cls` label holds the class index in ASCII: up to 999,999 classes
# Samples the shard reader draws each training sample from at random (DALI's `initial_fill`): four of ImageNet's
# 1024-image shards (pipelines/common.py `read`). The buffered samples are views of the memory-mapped shards, so
# the buffer costs little memory and no time (docs/BENCHMARKS.md, "The loader")
SHUFFLE_BUFFER = 4096
DEVICES = ("cpu", "gpu")  # "gpu": decoding on the GPU (DALI's "mixed" operators), the rest on it too
AUGMENTS = ("paper", "inception")  # AugmentConfig.augment: pipelines/train.py, pipelines/inception.py
# torchvision's ImageNet evaluation resizes the shorter side to 256 and keeps the central 224 (224 / 256); the
# inception augmentation's evaluation does the same at any crop: shorter side round(crop / 0.875)
EVAL_CROP_FRACTION = 0.875
DTYPES = ("float32", "float16", "bfloat16", "uint8")


@dataclass(frozen=True)
class Split:
    """The samples of one split as DALI's readers take them: `fn.readers.webdataset` paths + index_paths (kind
    "shards", a prepare output) or `fn.readers.file` files + labels (kind "files", a raw class-folder tree), with
    the class names and the image count. alexdata/dataset.py `open_split` finds them on disk."""

    kind: str  # "shards" (a prepare output: shorter side already 256) or "files" (raw class folders)
    classes: tuple[str, ...]
    images: int  # the samples to read; a stats sample's last shard may be read in part (alexdata/stats.py select)
    tars: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    shard_images: tuple[int, ...] = ()  # images per shard, in `tars` order
    files: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    shorter_side: int | None = None  # the stored images' shorter side, when known (prepare output)
    max_hw: tuple[int, int] | None = None  # (height, width) px: the tallest and the widest image, when recorded

    @property
    def prepared(self) -> bool:
        return self.kind == "shards"


@dataclass(frozen=True)
class AugmentConfig:
    crop: int = CROP  # pixels, square
    # pixels; skipped when the data is a prepare output of this size. augment="paper" only: inception's windows
    # come from the image as stored, and its evaluation resizes to `eval_side`
    shorter_side: int = SHORTER_SIDE
    flip_prob: float = 0.5  # paper §4.1: horizontal reflections
    pca_std: float = 0.1  # paper §4.1: alpha ~ N(0, 0.1) along the RGB principal components
    divide_std: bool = False  # paper §2 subtracts the mean only
    # Paper §2 cropped the central 256x256 patch before anything else, so its random crops and its ten-crop
    # corners lie inside that square. False (the default) uses the whole aspect-kept image.
    central_square: bool = False
    # "channel": one mean per channel (stats.json's `mean`). "pixel": paper §2, "the mean activity over the
    # training set" of each pixel: the mean image of the central 256x256 patches (stats.json's mean image), the
    # window under each crop subtracted; it needs central_square, so every window lies inside that image.
    mean: str = "channel"
    # "float16"/"bfloat16" for GPU training. "uint8": the pixels as decoded, cropped, resized and flipped, with no
    # mean, std or lighting (for a model that normalises on the GPU); pca_std must then be 0 and divide_std off.
    dtype: str = "float32"
    # "paper": §4.1's random crop x crop windows of the image at shorter side `shorter_side` (pipelines/train.py).
    # "inception": torchvision's RandomResizedCrop (Szegedy et al. 2015 §6), the augmentation of torchvision's
    # and timm's ImageNet recipes: a window of `scale` of the image's area and width / height in `ratio`,
    # resized to crop x crop (pipelines/inception.py); evaluation resizes the shorter side to `eval_side`.
    augment: str = "paper"
    scale: tuple[float, float] = (0.08, 1.0)  # inception: the window's share of the image's area (torchvision's)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # inception: the window's width / height, drawn log-uniform

    def __post_init__(self):
        for name in ("scale", "ratio"):  # a run's config.json gives lists: equal configs stay equal
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
                raise ValueError(f"{name} must be two numbers (low, high), got {v!r}")
            object.__setattr__(self, name, (float(v[0]), float(v[1])))
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be 'paper' or 'inception', got {self.augment!r}")
        if self.augment == "paper" and not 1 <= self.crop <= self.shorter_side:
            raise ValueError(f"crop {self.crop} must be in 1..shorter_side ({self.shorter_side})")
        if self.crop < 1:
            raise ValueError(f"crop must be >= 1 pixel, got {self.crop}")
        if self.augment == "inception":
            if self.central_square or self.mean == "pixel":
                raise ValueError(
                    "augment='inception' draws windows from the whole image: central_square and mean='pixel' "
                    "(the paper's central 256x256 patch, §2) are for augment='paper'"
                )
            if not 0 < self.scale[0] <= self.scale[1] <= 1:
                raise ValueError(f"scale must satisfy 0 < low <= high <= 1 (shares of the area), got {self.scale}")
            if not 0 < self.ratio[0] <= self.ratio[1]:
                raise ValueError(f"ratio must satisfy 0 < low <= high (width / height), got {self.ratio}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.pca_std < 0:
            raise ValueError(f"pca_std must be >= 0, got {self.pca_std}")
        if self.mean not in ("channel", "pixel"):
            raise ValueError(f"mean must be 'channel' or 'pixel', got {self.mean!r}")
        if self.mean == "pixel" and not self.central_square:
            raise ValueError("mean='pixel' needs central_square=True: the mean image covers the central square only")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.dtype == "uint8" and (self.pca_std or self.divide_std or self.mean == "pixel"):
            raise ValueError(
                "dtype='uint8' hands out the pixels as decoded, without mean, std or lighting: set pca_std=0 "
                "and divide_std=False (and mean='channel'), or use float32"
            )

    @property
    def eval_side(self) -> int:
        """The shorter side evaluation resizes to before its centre (or ten) crops: shorter_side with the
        paper's augmentation, round(crop / 0.875) with inception's (torchvision: 256 for a 224 crop)."""
        return self.shorter_side if self.augment == "paper" else round(self.crop / EVAL_CROP_FRACTION)


@dataclass(frozen=True)
class PipelineStats:
    """Training-set statistics on the 0-255 scale (from `alexnet stats`): the mean subtracted from every pixel
    (per channel, or the mean image), the std optionally divided by, and the RGB covariance's eigen-decomposition
    for PCA lighting (None in statistics of the mean and std alone: lighting then needs pca_std=0)."""

    mean_255: tuple[float, float, float]
    std_255: tuple[float, float, float]
    eigval_255: tuple[float, float, float] | None = None  # variances, descending
    eigvec: tuple[tuple[float, ...], ...] | None = None  # 3x3, columns are eigenvectors
    # (256, 256, 3) float32 RGB, the mean of the central 256x256 patches (paper §2; AugmentConfig.mean="pixel");
    # None when the stats have none. Left out of == (an array has no single truth value): compare it yourself.
    mean_image_255: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        mean, std = np.asarray(self.mean_255, np.float64), np.asarray(self.std_255, np.float64)
        if mean.shape != (3,) or std.shape != (3,):
            raise ValueError(f"mean_255 and std_255 must hold 3 numbers each, got {self.mean_255!r}, {self.std_255!r}")
        if 0 < mean.max() <= 1 and std.max() <= 1:  # torchvision's 0.485, 0.456, 0.406 would pass through unscaled
            raise ValueError(
                f"mean {mean.tolist()} and std {std.tolist()} look like the 0-1 pixel scale; the statistics are on "
                f"0-255 (multiply by 255: torchvision's ImageNet mean is 123.7, 116.3, 103.5)"
            )
        if self.mean_image_255 is not None:
            m = np.asarray(self.mean_image_255, np.float32)
            if m.ndim != 3 or m.shape[0] != m.shape[1] or m.shape[2] != 3:
                raise ValueError(f"mean_image_255 must have shape (S, S, 3), got {list(m.shape)}")
            object.__setattr__(self, "mean_image_255", m)

    @classmethod
    def from_dict(cls, s: dict) -> "PipelineStats":
        """From a record in stats.json's format (`alexdata.statsfile.load_stats`: "mean_image" an array or None;
        "eigval" and "eigvec" may be absent, as in a file of the mean and std alone)."""
        f = lambda v: tuple(float(x) for x in np.asarray(v, np.float64).reshape(-1))
        eig = s.get("eigval") is not None and s.get("eigvec") is not None
        ev = np.asarray(s["eigvec"], np.float64).reshape(3, 3) if eig else None
        return cls(
            f(s["mean"]),
            f(s["std"]),
            f(s["eigval"]) if eig else None,
            tuple(tuple(map(float, r)) for r in ev) if eig else None,
            s.get("mean_image"),
        )

    def per_channel(self) -> dict:
        """The fields but the mean image: small, JSON-ready (a run's config.json records them)."""
        return {k: getattr(self, k) for k in ("mean_255", "std_255", "eigval_255", "eigvec")}


@dataclass(frozen=True)
class Tuning:
    """How fast a pipeline runs, never what it computes: DALI's knobs that a run may change between resumes.

    Each field is declared once, here: its type, default, range (__post_init__) and, in its metadata, the help
    text of the command-line option `alexnet train` and `alexnet bench loader` make from it (`--prefetch`,
    `--hw-decoder-load`, ...: cli.py `tuning_options`). The Loader takes them by name (`Loader(prefetch=3)`), a
    run's DataConfig holds them as `tuning`. A new knob is a field here and its use in the graph
    (pipelines/common.py): nothing between them names it. ValueError with one line on a value out of range."""

    prefetch: int = field(default=2, metadata={"help": "Batches DALI prepares ahead (prefetch_queue_depth)."})
    # The GPU decoder's tuning (common.decoder_kw; the CPU decoder ignores it)
    hw_decoder_load: float = field(
        default=0.65,
        metadata={"help": "Share of JPEGs for the GPU's hardware decoder (A100/H100/H200), in [0, 1]; DALI's default."},
    )
    hybrid_huffman_threshold: int = field(
        default=1_000_000,
        metadata={"help": "Pixels above which nvJPEG's hybrid Huffman decoder takes an image (GPU); DALI's default."},
    )
    gpu_cache_gb: float = field(
        default=0.0,
        metadata={"help": "GiB of GPU memory for DALI's cache of decoded images (GPU only); 0: none."},
    )

    def __post_init__(self):
        if not (isinstance(self.prefetch, int) and not isinstance(self.prefetch, bool) and self.prefetch >= 1):
            raise ValueError(f"prefetch must be an int >= 1 (batches prepared ahead), got {self.prefetch!r}")
        if not (isinstance(self.hw_decoder_load, (int, float)) and 0 <= self.hw_decoder_load <= 1):
            raise ValueError(
                f"hw_decoder_load must be in [0, 1] (the hardware decoder's share), got {self.hw_decoder_load!r}"
            )
        if not (isinstance(self.hybrid_huffman_threshold, int) and self.hybrid_huffman_threshold >= 0):
            raise ValueError(
                f"hybrid_huffman_threshold must be >= 0 pixels (an int), got {self.hybrid_huffman_threshold!r}"
            )
        g = self.gpu_cache_gb
        if not (isinstance(g, (int, float)) and math.isfinite(g) and g >= 0 and (g == 0 or round(g * 1024) >= 1)):
            raise ValueError(f"gpu_cache_gb must be 0 or at least 1 MiB of GPU memory (in GiB), got {g!r}")

    @property
    def gpu_cache_mb(self) -> int:
        """gpu_cache_gb in MB, DALI's `cache_size` unit."""
        return round(self.gpu_cache_gb * 1024)


@dataclass(frozen=True)
class RunSpec:
    """How one DALI pipeline runs, apart from what it computes: batch, threads, device, this rank's shard, the
    seeds and the GPU decoder's tuning. ValueError with one line on a value out of range."""

    batch_size: int  # images per batch (per rank)
    threads: int  # DALI's CPU worker threads
    device: str = "cpu"  # one of DEVICES
    device_id: int | None = None  # DALI's device_id: the GPU's index with device "gpu"; None on the CPU
    seed: int = 0  # the random operators' seed: give each rank its own
    shuffle_seed: int = 0  # the epoch order: the same on every rank, or their shards stop being disjoint
    shard_id: int = 0  # this rank's shard of the split
    num_shards: int = 1
    tuning: Tuning = Tuning()  # DALI's speed knobs (prefetch, the GPU decoder's, its cache)
    # (height, width) of the largest image, for the GPU decoder to allocate its buffers for (common.decoder_kw)
    preallocate_hw: tuple[int, int] | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        if (self.device_id is None) != (self.device == "cpu"):
            raise ValueError(
                f"device_id must be a GPU's index with device 'gpu' and None with 'cpu', got "
                f"{self.device_id!r} with {self.device!r}"
            )
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"need 0 <= shard_id < num_shards, got {self.shard_id}/{self.num_shards}")
        if self.preallocate_hw is not None and (len(self.preallocate_hw) != 2 or min(self.preallocate_hw) < 1):
            raise ValueError(f"preallocate_hw must be (height, width) in pixels, got {self.preallocate_hw!r}")
        if self.tuning.gpu_cache_gb and self.device != "gpu":
            raise ValueError(
                f"gpu_cache_gb {self.tuning.gpu_cache_gb:g}: the decoded-image cache is GPU-only (DALI's mixed "
                f"decoder); leave it off on the CPU"
            )
