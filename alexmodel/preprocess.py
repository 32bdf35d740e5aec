"""A trained run's evaluation preprocessing as a plain torch function, for inference without DALI:
`alexmodel.load` attaches it to the model it returns as `model.preprocess`.

    model, classes, stats = load("runs/alexnet")
    x = model.preprocess(Image.open("photo.jpg"))        # (3, 227, 227) float32; a list of images: (B, 3, 227, 227)
    probs = model(x[None]).softmax(1)

The steps of pipelines/eval.py's centre view (`alexnet predict`, `alexnet evaluate`), in the order an image meets
them; the recipe decides the mean and the std (the modern one divides by the std, the paper's does not):

    RGB uint8 (H, W, 3)
    -> shorter side to 256 (the run's evaluation side: AugmentConfig.eval_side), aspect kept (DALI's fn.resize,
       antialiased linear, redone in torch: `_resample`; none when it is 256 already)
    -> the central 227x227 crop (anchor rounded as crop_mirror_normalize rounds; with the paper recipe the
       centre of the central 256x256 patch, paper §2)
    -> minus the mean: per channel, or the mean image's window under the crop (paper §2)
    -> divided by the std (AugmentConfig.divide_std)                 -> (3, 227, 227) float32

The decoder (PIL's libjpeg-turbo and DALI's) gives the same pixels, so on an image whose shorter side is 256
the probabilities are `alexnet predict`'s to float precision; a resized one has a few pixels in a thousand a level
or two of 255 apart (the filter's rounding), its probabilities ~1e-4 (tests/test_cli_first_use.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.config import AugmentConfig, PipelineStats


@dataclass(frozen=True)
class Preprocess:
    """Callable: a PIL image, or a uint8 tensor / numpy array (H, W, 3) or (3, H, W), -> (3, crop, crop)
    float32; a list of them or a uint8 batch (B, H, W, 3) / (B, 3, H, W) -> (B, 3, crop, crop)."""

    mean_255: tuple[float, float, float]
    std_255: tuple[float, float, float]  # (1, 1, 1) unless the recipe divides by the std
    crop: int = 227
    shorter_side: int = 256
    central_square: bool = False
    mean_image_255: np.ndarray | None = None  # (shorter_side, shorter_side, 3): mean="pixel"

    @classmethod
    def of(cls, stats: PipelineStats, aug: AugmentConfig) -> Preprocess:
        """The preprocessing of a run that trained with `aug` on `stats`."""
        pixel = aug.mean == "pixel"
        raw = aug.dtype == "uint8"  # the pipelines hand out the pixels as they are: no mean, no std
        return cls(
            mean_255=(0.0, 0.0, 0.0) if pixel or raw else tuple(stats.mean_255),
            std_255=tuple(stats.std_255) if aug.divide_std else (1.0, 1.0, 1.0),
            crop=aug.crop,
            shorter_side=getattr(aug, "eval_side", aug.shorter_side),  # the pipeline's evaluation side
            central_square=aug.central_square,
            mean_image_255=stats.mean_image_255 if pixel and not raw else None,
        )

    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            return torch.stack([self.one(im) for im in images])
        if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
            return torch.stack([self.one(im) for im in images])
        return self.one(images)

    def one(self, image) -> torch.Tensor:
        """One image -> (3, crop, crop) float32 on the image's device (a PIL image's: the CPU)."""
        x = _chw_uint8(image)
        _, h, w = x.shape
        scale = self.shorter_side / min(h, w)
        size = (math.floor(h * scale + 0.5), math.floor(w * scale + 0.5))  # as pipelines/common.py resized_hw
        if size != (h, w):
            rows, cols = _resample(h, size[0], scale, x.device), _resample(w, size[1], scale, x.device)
            x = torch.einsum("oh,chw,pw->cop", rows, x.float(), cols).round().clamp(0, 255)  # uint8 values, as DALI's
        h, w = size
        k = int((self.shorter_side - self.crop) / 2 + 0.5)  # the centre crop's offset in a shorter_side square
        if self.central_square:  # paper §2: the centre of the central square, 15 px in on a 256 one
            top, left = (h - self.shorter_side) // 2 + k, (w - self.shorter_side) // 2 + k
        else:
            top, left = _anchor(h, self.crop), _anchor(w, self.crop)
        x = x[:, top : top + self.crop, left : left + self.crop].float()
        if self.mean_image_255 is not None:  # the window of the mean image under the crop
            window = torch.as_tensor(self.mean_image_255[k : k + self.crop, k : k + self.crop], dtype=torch.float32)
            x = x - window.permute(2, 0, 1).to(x.device)
        mean = torch.tensor(self.mean_255, dtype=torch.float32, device=x.device)[:, None, None]
        std = torch.tensor(self.std_255, dtype=torch.float32, device=x.device)[:, None, None]
        return (x - mean) / std


def _resample(n_in: int, n_out: int, scale: float, device) -> torch.Tensor:
    """(n_out, n_in) weights of DALI's fn.resize along one axis (linear, antialias=True): a triangle filter, its
    support widened to 1/scale when shrinking, weights normalised over the pixels inside the image; one `scale`
    for both axes (the aspect kept exactly), the scaled extent centred on the rounded output. torch's
    F.interpolate(antialias=True) has the filter but maps the rounded size onto the input: on the long side its
    pixels are a few levels of 255 apart on average (tens at edges in the texture)."""
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) / scale + (n_in - n_out / scale) / 2
    dist = (torch.arange(n_in, dtype=torch.float64) + 0.5)[None, :] - centres[:, None]
    w = (1 - dist.abs() / max(1.0, 1 / scale)).clamp(min=0)
    return (w / w.sum(1, keepdim=True)).float().to(device)


def _anchor(extent: int, crop: int) -> int:
    """crop_mirror_normalize's anchor for crop_pos 0.5: the half-way offset, a half rounded up."""
    return math.floor(0.5 * (extent - crop) + 0.5)


def _chw_uint8(image) -> torch.Tensor:
    """(3, H, W) uint8 of a PIL image (converted to RGB) or a uint8 tensor or array, HWC or CHW."""
    if not isinstance(image, (torch.Tensor, np.ndarray)):
        try:
            image = np.asarray(image.convert("RGB"))  # PIL: CMYK, grayscale, palette -> RGB as prepare does
        except AttributeError:
            raise TypeError(f"expected a PIL image or a uint8 tensor, got {type(image).__name__}") from None
    x = torch.as_tensor(np.array(image) if isinstance(image, np.ndarray) and not image.flags.writeable else image)
    if x.dtype != torch.uint8 or x.ndim != 3 or 3 not in (x.shape[0], x.shape[-1]):
        raise ValueError(f"expected uint8 (H, W, 3) or (3, H, W), got {x.dtype} {tuple(x.shape)}")
    return x if x.shape[0] == 3 and x.shape[-1] != 3 else x.permute(2, 0, 1)
