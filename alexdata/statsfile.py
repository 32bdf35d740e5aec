"""stats.json and the mean image beside it: written and read here only (`alexnet stats` writes them, the loader
and the trainer read them).

stats.json (indent 1; every value on the 0-255 pixel scale, `scale`: 255):
  mean [3], std [3]           per channel R, G, B; std is the population std over all pixels
  cov [3][3]                  population covariance of (R, G, B) over all pixels
  eigval [3]                  eigenvalues of cov, descending (round-off negatives clipped to 0)
  eigvec [3][3]               eigenvectors as COLUMNS: eigvec[i][j] = component i of eigenvector j; each column
                              has unit length and its largest-magnitude component positive (reproducible signs)
  images, pixels              what was summed
  pixel_sum [3], pixel_product_sum [3][3]   S1 and S2, exact integers (partial passes can be merged)
  source                      data, kind, split, max_images, seed, device, dali version, batch_size, threads,
                              seconds (of the pass)
  mean_image_file             the mean image's file name, in stats.json's folder (`mean_image_path`): a .npy of
                              float64 (256, 256, 3), RGB, each pixel's exact sum over the images / images
  mean_image_sha256           of that file's bytes: `load_stats` refuses a file that is not the one written
A stats.json without the two (written before the mean image existed) loads with mean_image None.
A stats.json of `mean` and `std` alone (statistics from elsewhere, written by hand; `scale` 255 may be left out)
loads with eigval and eigvec None: it serves every augmentation but PCA lighting (pca_std=0).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from alexdata.errors import StatsError
from alexdata.files import atomic_write
from pipelines.config import SHORTER_SIDE

SCALE = 255  # pixel values of stats.json are on the 0-255 scale
VEC3, MAT3 = ("mean", "std", "eigval"), ("cov", "eigvec")
MEAN_IMAGE_SUFFIX = ".mean_image.npy"  # stats.json -> stats.mean_image.npy, beside it


def mean_image_path(path: str | os.PathLike) -> Path:
    """Where the mean image of the stats file `path` lives: beside it, stats.json -> stats.mean_image.npy."""
    path = Path(path)
    return path.with_name(path.stem + MEAN_IMAGE_SUFFIX)


def _npy(mean_image: np.ndarray) -> tuple[bytes, str]:
    """The .npy bytes of a mean image (float64) and their sha256, which stats.json records."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(mean_image, np.float64), allow_pickle=False)
    return buf.getvalue(), hashlib.sha256(buf.getvalue()).hexdigest()


def same_stats(path: str | os.PathLike, rec: dict) -> bool:
    """Whether the stats file at `path` holds the statistics of `rec` (a file that cannot be read: no). A file
    without a mean image (written before it existed) counts as the same: replacing it only adds one."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    sha = _npy(rec["mean_image"])[1] if rec.get("mean_image") is not None else None
    return all(old.get(k) == rec.get(k) for k in ("mean", "std", "eigval", "eigvec")) and old.get(
        "mean_image_sha256"
    ) in (None, sha)


def write_stats(rec: dict, path: str | os.PathLike) -> Path:
    """Writes the record as JSON (indent 1), its mean image (if any) to `mean_image_path(path)`, each atomically,
    the image first; stats.json names it and records its sha256. Returns the path."""
    path = Path(path)
    out = {k: v for k, v in rec.items() if k != "mean_image"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if rec.get("mean_image") is not None:
            data, sha = _npy(rec["mean_image"])
            npy = atomic_write(mean_image_path(path), data)
            out.update(mean_image_file=npy.name, mean_image_sha256=sha)
        atomic_write(path, json.dumps(out, indent=1) + "\n")
    except OSError as e:
        raise StatsError(f"{e.filename or path}: cannot write ({e.strerror or e})") from None
    return path


def _numbers(x) -> bool:
    return isinstance(x, list) and all(
        _numbers(v) if isinstance(v, list) else isinstance(v, (int, float)) and not isinstance(v, bool) for v in x
    )


def _array(rec: dict, key: str, shape: tuple[int, ...], where: Path) -> np.ndarray:
    try:
        a = np.array(rec[key], np.float64) if _numbers(rec[key]) else None
    except ValueError:  # ragged
        a = None
    if a is None or a.shape != shape:
        raise StatsError(f"{where}: '{key}' must be a list of numbers of shape {list(shape)}, got {rec[key]!r}")
    if not np.isfinite(a).all():
        raise StatsError(f"{where}: '{key}' holds a non-finite number")
    return a


def _load_mean_image(path: Path, rec: dict) -> np.ndarray | None:
    """The mean image stats.json names (float64 (256, 256, 3)), checked against its recorded sha256; None when it
    names none (a file from before the mean image existed)."""
    name, sha = rec.get("mean_image_file"), rec.get("mean_image_sha256")
    if name is None:
        return None
    if not isinstance(name, str) or Path(name).name != name or not isinstance(sha, str):
        raise StatsError(f"{path}: 'mean_image_file' must be a file name beside it, with 'mean_image_sha256'")
    npy = path.with_name(name)
    try:
        data = npy.read_bytes()
    except OSError as e:
        raise StatsError(
            f"{npy}: the mean image {path.name} names cannot be read ({e.strerror or e}); run `alexnet stats` again"
        ) from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise StatsError(
            f"{npy}: not the mean image {path.name} was written with (sha256 differs); run `alexnet stats` again"
        )
    try:
        m = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise StatsError(f"{npy}: not a .npy array ({e})") from None
    side = SHORTER_SIDE
    if m.shape != (side, side, 3) or not np.isfinite(m).all() or m.min() < 0 or m.max() > SCALE:
        raise StatsError(
            f"{npy}: a mean image must be ({side}, {side}, 3) values in 0..{SCALE}, got shape {list(m.shape)}"
        )
    return m.astype(np.float64)


def load_stats(path: str | os.PathLike) -> dict:
    """A validated stats.json: the record with mean, std, eigval as float64 arrays (3,) and cov, eigvec as (3, 3)
    (eigvec[:, j] is eigenvector j), on the 0-255 scale, and mean_image, float64 (256, 256, 3) from the file it
    names, or None. A file of the mean and std alone gives eigval and eigvec None. Raises StatsError with one
    line naming the problem."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise StatsError(f"{path}: not found (run `alexnet stats DATA` to write it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StatsError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(rec, dict):
        raise StatsError(f"{path}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in ("mean", "std") if k not in rec]
    if missing:
        raise StatsError(f"{path}: missing {', '.join(missing)} (not an `alexnet stats` output?)")
    eigen = [k for k in ("eigval", "eigvec") if k in rec]
    if len(eigen) == 1:
        raise StatsError(
            f"{path}: {eigen[0]} without {({'eigval', 'eigvec'} - set(eigen)).pop()}: give both or neither"
        )
    if rec.get("scale", SCALE) != SCALE:
        raise StatsError(
            f"{path}: scale is {rec['scale']!r}; only {SCALE} (values on the 0-255 pixel scale) is supported"
        )
    for k in ("images", "pixels"):
        if k in rec and (not isinstance(rec[k], int) or isinstance(rec[k], bool) or rec[k] < 1):
            raise StatsError(f"{path}: '{k}' must be a positive integer, got {rec[k]!r}")
    out = {**rec, "eigval": None, "eigvec": None}
    for k in VEC3:
        if k in rec:
            out[k] = _array(rec, k, (3,), path)
    for k in MAT3:
        if k in rec:
            out[k] = _array(rec, k, (3, 3), path)
    if "scale" not in rec and out["mean"].max() <= 1 and out["std"].max() <= 1:  # torchvision's 0.485, ... say
        raise StatsError(
            f"{path}: mean {out['mean'].tolist()} looks like the 0-1 pixel scale; stats.json holds 0-{SCALE} values "
            f'(multiply by {SCALE}, and add "scale": {SCALE})'
        )
    w, v = out["eigval"], out["eigvec"]
    if w is not None and ((w < 0).any() or (np.diff(w) > 0).any()):
        raise StatsError(f"{path}: eigval must be non-negative and descending, got {w.tolist()}")
    if v is not None and not np.allclose(v.T @ v, np.eye(3), atol=1e-6):
        raise StatsError(f"{path}: eigvec's columns are not orthonormal unit vectors")
    if not ((out["mean"] >= 0) & (out["mean"] <= SCALE)).all():
        raise StatsError(f"{path}: mean must lie in 0..{SCALE}, got {out['mean'].tolist()}")
    if (out["std"] <= 0).any():  # 0: one value in every pixel; inputs divided by it would be inf, the loss NaN
        raise StatsError(
            f"{path}: std must be > 0 in every channel, got {out['std'].tolist()} (0: every pixel of the channel has "
            f"one value, as in blank images); run `alexnet stats` on the training data"
        )
    out["mean_image"] = _load_mean_image(path, rec)
    return out


def other_data_notice(path: str | os.PathLike, train_images: int) -> str | None:
    """A line when the stats file at `path` was computed over another number of images than a train split of
    `train_images` holds (all of them, or a --max-images sample of them): statistics of another data set, copied
    along. A copy of the same data elsewhere (another path, the same images) gives None; so does a file that
    does not say (written by hand, or by another tool)."""
    try:
        rec = json.loads(Path(path).read_text())
        images, source = int(rec["images"]), rec.get("source") or {}
        sample = source.get("max_images")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    expected = train_images if sample is None else min(int(sample), train_images)
    if images == expected:
        return None
    where = f" of {source['data']}" if isinstance(source.get("data"), str) else ""
    return (
        f"train: {path} holds statistics of {images} images{where}, but this train split has {train_images}"
        f"{f' (a sample of {sample} expected)' if sample is not None else ''}: statistics of another data set? "
        f"`alexnet stats DATA --force` computes this one's"
    )
