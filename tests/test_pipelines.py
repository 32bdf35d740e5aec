"""The DALI pipelines and the Loader, on the CPU (device_id=None), against numpy references."""

import io
import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from alexdata.dataset import DataError, open_split
from alexdata.errors import ConfigError
from alexdata.loader import Loader
from alexdata.prepare import PrepareConfig, prepare
from pipelines import common
from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split
from pipelines.train import build_train_pipeline

QUIET = dict(progress=False, log=lambda *a: None)
ZERO = {"mean": [0, 0, 0], "std": [1, 1, 1], "eigval": [1, 1, 1], "eigvec": np.eye(3).tolist()}
SIZES = [(256, 256), (300, 256), (256, 300)]  # (W, H)
SLOPE = 0.8  # ramp: R = 0.8 x, G = 0.8 y; a crop's mean R is 0.8 (anchor_x + 113)


def ramp(w, h, tag):
    """R = 0.8 x, G = 0.8 y, B = tag (which size this is). A crop's mean R is 0.8 (anchor_x + 113)."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([SLOPE * x, SLOPE * y, np.full_like(x, tag)], -1).round().astype(np.uint8)


TAGS = [60, 120, 180]  # B channel of each size in SIZES


def build(tmp, images: dict[str, list[np.ndarray]], shard_size=4):
    """A class tree of PNGs (lossless) -> prepare output; returns the prepared directory."""
    for cls, arrays in images.items():
        d = tmp / "raw" / "train" / cls
        d.mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(d / f"{cls}_{i}.png")
    prepare(tmp / "raw", tmp / "data", PrepareConfig(shard_size=shard_size), workers=1, **QUIET)
    return tmp / "data"


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ramps")
    return build(tmp, {"c0": [ramp(w, h, t) for (w, h), t in zip(SIZES, TAGS)] * 16})


def chi2_limit(df, z=3.29):  # upper 0.9995 quantile, Wilson-Hilferty approximation
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def crop_readout(x):
    """(anchor_x, anchor_y, size index, mirrored) of each crop of ramp images."""
    x = x.numpy().astype(np.float64)  # (B, 3, 227, 227)
    ax = x[:, 0].mean((1, 2)) / SLOPE - 113
    ay = x[:, 1].mean((1, 2)) / SLOPE - 113
    size = np.abs(x[:, 2].mean((1, 2))[:, None] - np.array(TAGS)[None]).argmin(1)
    mirrored = x[:, 0, :, :113].mean((1, 2)) > x[:, 0, :, 114:].mean((1, 2))  # a mirrored ramp falls
    assert np.abs(ax - ax.round()).max() < 0.3 and np.abs(ay - ay.round()).max() < 0.3  # unambiguous readout
    return ax.round().astype(int), ay.round().astype(int), size, mirrored


@pytest.mark.parametrize("echo", [1, 2])
def test_crop_positions_are_uniform_and_flips_half(ramps, echo):
    """echo 1 on the CPU: the decoder cuts the window out; echo 2: a slice of the whole decoded image, as on the
    GPU. Either way every valid anchor is equally likely, both ends included."""
    loader = Loader(ramps, stats=ZERO, aug=AugmentConfig(pca_std=0.0), batch_size=16, threads=2, seed=1, echo=echo)
    passes = 25 if echo == 1 else 13  # an echoed pass hands out every image `echo` times
    rows = np.concatenate([np.stack(crop_readout(x), 1) for _ in range(passes) for x, _ in loader])  # (N, 4)
    assert len(rows) == passes * echo * 48
    for k, (w, h) in enumerate(SIZES):
        mine = rows[rows[:, 2] == k]
        assert len(mine) == passes * echo * 16
        for axis, extent in ((0, w), (1, h)):
            span = extent - 227  # valid anchors 0..span
            counts = np.bincount(mine[:, axis], minlength=span + 1)
            assert len(counts) == span + 1  # never beyond the valid range
            expected = len(mine) / (span + 1)
            chi2 = ((counts - expected) ** 2 / expected).sum()
            assert chi2 < chi2_limit(span), (w, h, axis, counts)
    n, k = len(rows), rows[:, 3].sum()
    assert abs(k - n / 2) < 3.5 * math.sqrt(n / 4)  # Binomial(n, 0.5)


def test_central_square_crops_stay_in_the_papers_256_patch(ramps):
    """Paper §2: crops come from the central 256x256 patch; anchors uniform over its 30 positions per axis."""
    loader = Loader(
        ramps, stats=ZERO, aug=AugmentConfig(pca_std=0.0, central_square=True), batch_size=16, threads=2, seed=4
    )
    rows = np.concatenate([np.stack(crop_readout(x), 1) for _ in range(20) for x, _ in loader])
    for k, (w, h) in enumerate(SIZES):
        mine = rows[rows[:, 2] == k]
        for axis, extent in ((0, w), (1, h)):
            lo = (extent - 256) // 2
            v = mine[:, axis] - lo
            assert v.min() == 0 and v.max() == 29, (w, h, axis)
            counts = np.bincount(v, minlength=30)
            chi2 = ((counts - len(v) / 30) ** 2 / (len(v) / 30)).sum()
            assert chi2 < chi2_limit(29), counts


def test_ends_of_the_range_are_not_half_as_likely(ramps):
    """round(u * span) would give anchors 0 and span half the mass of the others; ours are uniform."""
    loader = Loader(ramps, stats=ZERO, aug=AugmentConfig(pca_std=0.0, flip_prob=0.0), batch_size=16, threads=2, seed=2)
    ends = n = 0
    for _ in range(40):
        for x, _ in loader:
            ax, ay, size, _ = crop_readout(x)
            square = size == 0  # 256x256: 30 positions per axis
            ends += int(((ax == 0) | (ax == 29))[square].sum() + ((ay == 0) | (ay == 29))[square].sum())
            n += 2 * int(square.sum())
    p = 2 / 30
    assert abs(ends - n * p) < 4 * math.sqrt(n * p * (1 - p)), (ends, n * p)


def test_floor_half_places_the_central_square_as_floor_and_square_positions_round_back():
    """The crop operators' anchor is roundf(crop_pos * (extent - size)) in float32 (crop_attr.h): FLOOR_HALF
    gives floor(span / 2), the central square's top-left, for every span up to 32,767 px, and crop_pos k / span
    gives back exactly k for every square span a crop can have; computed here as DALI computes it."""
    span = np.arange(32768, dtype=np.float32)
    anchor = np.floor(np.float32(common.FLOOR_HALF) * span + np.float32(0.5))  # roundf, positive arguments
    assert np.array_equal(anchor, np.arange(32768) // 2)
    for s in range(1, 256):
        k = np.arange(s + 1)
        pos = np.array([i / s for i in k], np.float32)
        assert np.array_equal(np.floor(pos * np.float32(s) + np.float32(0.5)), k), s


def test_the_central_square_of_an_odd_margin_starts_at_floor(tmp_path):
    """A 259 x 256 image (margin 3, odd): the central square starts at x = 1 (floor), as stats' mean image does."""
    a = ramp(259, 256, 60)
    data = build(tmp_path, {"c0": [a] * 4})
    aug = AugmentConfig(pca_std=0.0, central_square=True, flip_prob=0.0)
    loader = Loader(data, stats=ZERO, aug=aug, batch_size=4, threads=1, seed=3)
    xs = np.concatenate([crop_readout(x)[0] for _ in range(30) for x, _ in loader])
    assert xs.min() == 1 and xs.max() == 1 + 29


def test_the_gpu_graphs_window_is_uniform_and_cut_exactly():
    """The GPU graph's crop (random_anchor, then fn.slice of the decoded image), run on the CPU: every anchor of
    a 300 x 260 image equally likely, both ends included, and the slice the image's window at that anchor."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    img = np.random.default_rng(7).integers(0, 256, (260, 300, 3), dtype=np.uint8)

    @pipeline_def(batch_size=256, num_threads=1, device_id=None, seed=5)
    def pipe():
        x = fn.external_source(source=lambda: [img] * 256, batch=True, layout="HWC")
        anchor = common.random_anchor(fn.cast(x.shape(), dtype=types.INT32), 227)
        return anchor, fn.slice(x, start=anchor, shape=[227, 227, 3], axis_names="HWC")

    p = pipe()
    p.build()
    anchors = []
    for _ in range(8):
        a, w = (np.array(o.as_tensor()) for o in p.run())
        for (y, x, c), win in zip(a[:16], w[:16]):
            assert c == 0 and np.array_equal(win, img[y : y + 227, x : x + 227])
        anchors.append(a)
    a = np.concatenate(anchors)
    for axis, span in ((0, 260 - 227), (1, 300 - 227)):
        counts = np.bincount(a[:, axis], minlength=span + 1)
        assert len(counts) == span + 1
        expected = len(a) / (span + 1)
        assert ((counts - expected) ** 2 / expected).sum() < chi2_limit(span), counts


@pytest.mark.parametrize("recipe", ["paper", "modern"])
def test_the_gpu_graph_runs_at_most_eight_cpu_operators(recipe):
    """DALI runs a graph's CPU operators one after another, each ~0.3-0.5 ms a batch of 256: the GPU train graph
    of either recipe, built (not run) without a GPU, keeps reader, label pad, random draws and crop placement to
    8 CPU operators; decoding is "mixed" and the pixel work on the GPU."""
    aug = (
        AugmentConfig(central_square=True, mean="pixel")
        if recipe == "paper"
        else AugmentConfig(divide_std=True, pca_std=0.0)
    )
    split = Split(kind="shards", classes=("a",), images=8, tars=("a.tar",), indexes=("a.idx",), shorter_side=256)
    st = PipelineStats.from_dict({**random_stats(), "mean_image": np.zeros((256, 256, 3), np.float32)})
    ops = common.operators(
        build_train_pipeline(split, st, aug, RunSpec(batch_size=8, threads=1, device="gpu", device_id=0))
    )
    cpu = [name for device, name in ops if device == "cpu"]
    assert len(cpu) <= 8, cpu
    assert [name for device, name in ops if device == "mixed"] == ["decoders__Image"]
    assert "CropMirrorNormalize" in [name for device, name in ops if device == "gpu"]


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grey")
    return build(
        tmp, {"c0": [np.full((256, 256, 3), 128, np.uint8)] * 8, "c1": [np.full((256, 300, 3), 128, np.uint8)] * 8}
    )


def random_stats(seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return {
        "mean": [120.5, 115.25, 101.0],
        "std": [60.0, 58.0, 57.0],
        "eigval": [4000.0, 250.0, 30.0],
        "eigvec": q.tolist(),
    }


def test_constant_colour_gives_colour_minus_mean_exactly(grey):
    st = random_stats()
    loader = Loader(grey, stats=st, aug=AugmentConfig(pca_std=0.0), batch_size=8, threads=2)
    for x, _ in loader:
        assert torch.equal(x, torch.full_like(x, 0) + (128 - torch.tensor(st["mean"]).float()).view(1, 3, 1, 1))


def test_lighting_offsets_have_the_papers_distribution(grey):
    st = random_stats(1)
    loader = Loader(grey, stats=st, aug=AugmentConfig(), batch_size=16, threads=2, seed=3)
    offsets = []
    for _ in range(150):
        for x, _ in loader:
            flat = x.double().flatten(2)  # (B, 3, pixels)
            assert (flat.std(2) < 1e-3).all()  # the offset is one colour per image, added to every pixel
            offsets.append(flat.mean(2) - (128 - torch.tensor(st["mean"], dtype=torch.float64)))
    off = torch.cat(offsets).numpy()  # (N, 3) = 255 eigvec @ (alpha * eigval_01), alpha ~ N(0, 0.1)
    n = len(off)
    v, lam = np.array(st["eigvec"]), np.array(st["eigval"]) / 255  # 255 * eigval_255 / 255^2
    expected = v @ np.diag((0.1 * lam) ** 2) @ v.T
    # in the eigenbasis the components are independent N(0, (0.1 lam)^2)
    z = off @ v / (0.1 * lam)
    assert np.abs(z.mean(0)).max() < 4 / math.sqrt(n)
    assert np.abs(z.std(0) - 1).max() < 4 / math.sqrt(2 * n)
    cov = np.cov(off.T)
    corr = np.corrcoef(z.T)[np.triu_indices(3, 1)]
    assert np.abs(corr).max() < 4 / math.sqrt(n)
    assert np.allclose(cov, expected, rtol=0.15, atol=0.15 * expected.max() / 100)


def decoded(data, split="train"):
    """Every decoded image of a prepared split in shard order, decoded by DALI's own CPU decoder, no crop."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    s = open_split(data, split)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def p():
        jpg, cls = fn.readers.webdataset(paths=list(s.tars), index_paths=list(s.indexes), ext=["jpg", "cls"])
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB)

    pipe = p()
    pipe.build()
    return [np.array(pipe.run()[0][0]) for _ in range(s.images)]


def ten_views(img, boxes, mean):
    """The paper's ten views in numpy: 227 crops at the five (y, x) anchors, then their mirrors, minus the mean."""
    crops = [img[y : y + 227, x : x + 227] for y, x in boxes]
    crops += [c[:, ::-1] for c in crops]
    return np.stack([(c.astype(np.float32) - mean).transpose(2, 0, 1) for c in crops])


def test_ten_crop_views_equal_explicit_crops(prepared):
    st = random_stats()
    ref = decoded(prepared, "val")
    loader = Loader(prepared, split="val", mode="tencrop", stats=st, batch_size=5, threads=2)
    views = torch.cat([x for x, _ in loader]).numpy()
    assert views.shape == (len(ref), 10, 3, 227, 227)
    mean = np.array(st["mean"], np.float32)
    for img, v in zip(ref, views):
        h, w, _ = img.shape
        cy, cx = (h - 227 + 1) // 2, (w - 227 + 1) // 2  # DALI rounds the centre anchor half up
        boxes = [(0, 0), (0, w - 227), (h - 227, 0), (h - 227, w - 227), (cy, cx)]
        assert np.array_equal(v, ten_views(img, boxes, mean))


def test_ten_crop_central_square_corners(prepared):
    """With central_square the corners are those of the central 256x256 patch (paper §2, §4.1)."""
    st = random_stats()
    ref = decoded(prepared, "val")
    loader = Loader(
        prepared, split="val", mode="tencrop", stats=st, batch_size=5, threads=2, aug=AugmentConfig(central_square=True)
    )
    views = torch.cat([x for x, _ in loader]).numpy()
    mean = np.array(st["mean"], np.float32)
    for img, v in zip(ref, views):
        h, w, _ = img.shape
        ly, lx = (h - 256) // 2, (w - 256) // 2
        boxes = [(ly, lx), (ly, lx + 29), (ly + 29, lx), (ly + 29, lx + 29), (ly + 15, lx + 15)]
        assert np.array_equal(v, ten_views(img, boxes, mean))


def test_center_crop_equals_explicit_crop(prepared):
    st = random_stats()
    ref = decoded(prepared, "val")
    loader = Loader(prepared, split="val", mode="center", stats=st, batch_size=8, threads=2)
    got = torch.cat([x for x, _ in loader]).numpy()
    for img, v in zip(ref, got):
        h, w, _ = img.shape
        y, x = (h - 227 + 1) // 2, (w - 227 + 1) // 2
        assert np.array_equal(v, (img[y : y + 227, x : x + 227].astype(np.float32) - st["mean"]).transpose(2, 0, 1))


def test_exif_orientation_is_not_applied(tmp_path):
    """A raw tree's JPEG tagged "rotate 90" (EXIF orientation 6) gives the pixels as stored, as prepare (PIL) and
    model.preprocess read them: the same crop as the untagged file (DALI's decoders rotate by default)."""
    a = np.random.default_rng(8).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, extra in (("plain", {}), ("tagged", {"exif": exif.tobytes()})):
        d = tmp_path / "raw" / "train" / "c0"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"{name}.jpg", "JPEG", quality=95, **extra)
    aug = AugmentConfig(pca_std=0.0, flip_prob=0.0)
    loader = Loader(tmp_path / "raw", split="train", stats=ZERO, aug=aug, mode="center", batch_size=2, threads=1)
    x, _ = next(iter(loader))
    assert x.shape == (2, 3, 227, 227) and torch.equal(x[0], x[1])  # both 300 x 400 as stored: one centre crop


PIXEL = AugmentConfig(central_square=True, mean="pixel")  # paper §2: the mean image, per pixel


def pixel_stats(seed=0):
    """random_stats with a random mean image: every difference image - mean image is then unique to its place."""
    m = np.random.default_rng(seed).uniform(0, 255, (256, 256, 3)).astype(np.float32)
    return {**random_stats(seed), "mean_image": m}


def central_minus_mean(img, mean_image):
    """The central 256x256 patch of an HWC image (top-left floor((H - 256) / 2), ...) minus the mean image."""
    ly, lx = (img.shape[0] - 256) // 2, (img.shape[1] - 256) // 2
    return img[ly : ly + 256, lx : lx + 256].astype(np.float32) - mean_image


def find_window(x, diffs, tol=1e-3):
    """(image, oy, ox, mirrored, colour) such that x (3, 227, 227) = mirror(diffs[image][oy:, ox:] 227 window)
    + colour, one RGB offset for the whole crop: the candidates agreeing at three pixels, then checked whole."""
    out = x.transpose(1, 2, 0)
    for i, d in enumerate(diffs):
        for mirrored in (False, True):
            c0 = 226 if mirrored else 0  # the window column that lands at output column 0
            step = -1 if mirrored else 1
            r00 = out[0, 0] - d[:30, c0 : c0 + 30]  # (30, 30, 3): one candidate colour per offset
            r01 = out[0, 1] - d[:30, c0 + step : c0 + step + 30]
            r10 = out[1, 0] - d[1:31, c0 : c0 + 30]
            ok = (np.abs(r00 - r01).max(-1) < tol) & (np.abs(r00 - r10).max(-1) < tol)
            for oy, ox in zip(*np.nonzero(ok)):
                w = d[oy : oy + 227, ox : ox + 227]
                w = w[:, ::-1] if mirrored else w
                colour = (out - w).mean((0, 1), dtype=np.float64)  # a float32 sum would drift by 1e-3
                if np.abs(out - w - colour).max() < tol:
                    return i, int(oy), int(ox), mirrored, colour
    raise AssertionError("no window of any image matches this crop")


def test_pixel_mean_train_crops_are_image_minus_mean_image_windows(prepared):
    """output = mirror(crop(image) - crop(mean image)): the same 227 window of both, flipped together, exactly."""
    st = pixel_stats()
    diffs = [central_minus_mean(img, st["mean_image"]) for img in decoded(prepared)]
    loader = Loader(prepared, stats=st, aug=replace(PIXEL, pca_std=0.0), batch_size=16, threads=2, seed=1)
    seen = []
    for x, _ in loader:
        for v in x.numpy():
            i, oy, ox, mirrored, colour = find_window(v, diffs)
            w = diffs[i][oy : oy + 227, ox : ox + 227]
            assert np.array_equal(v, (w[:, ::-1] if mirrored else w).transpose(2, 0, 1))
            seen.append((oy, ox, mirrored))
    assert len(seen) == 46 and {m for *_, m in seen} == {False, True} and len(set(seen)) > 30


def test_pixel_mean_adds_the_lighting_offset(prepared):
    """With PCA lighting each crop is the same window difference plus one colour per image, of the paper's size."""
    st = pixel_stats(2)
    diffs = [central_minus_mean(img, st["mean_image"]) for img in decoded(prepared)]
    loader = Loader(prepared, stats=st, aug=PIXEL, batch_size=16, threads=2, seed=2)
    colours = np.array([find_window(v, diffs)[4] for x, _ in loader for v in x.numpy()])
    z = colours @ np.array(st["eigvec"]) / (0.1 * np.array(st["eigval"]) / 255)  # ~ N(0, 1) per component
    assert len(z) == 46 and (np.abs(colours).max(1) > 0).all() and np.abs(z).max() < 5


def test_pixel_mean_raw_tree_uses_the_same_windows(tmp_path):
    """The ROI-decode path (raw images): images already at shorter side 256 are cropped, not resampled."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((256, 256), (256, 301), (259, 256))]
    d = tmp_path / "train" / "c0"
    d.mkdir(parents=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(d / f"c0_{i}.png")
    st = pixel_stats(4)
    diffs = [central_minus_mean(a, st["mean_image"]) for a in images]
    loader = Loader(tmp_path, stats=st, aug=replace(PIXEL, pca_std=0.0), batch_size=3, threads=2, seed=5)
    seen = set()
    for _ in range(4):
        for x, _ in loader:
            for v in x.numpy():
                i, oy, ox, mirrored, colour = find_window(v, diffs)
                assert not colour.any()
                seen.add((i, mirrored))
    assert len({i for i, _ in seen}) == 3 and len({m for _, m in seen}) == 2


def test_pixel_mean_ten_crop_and_centre_use_the_same_windows(prepared):
    st = pixel_stats(5)
    kw = dict(split="val", stats=st, aug=PIXEL, batch_size=5, threads=2)
    ten = torch.cat([x for x, _ in Loader(prepared, mode="tencrop", **kw)]).numpy()
    centre = torch.cat([x for x, _ in Loader(prepared, mode="center", **kw)]).numpy()
    for img, v, c in zip(decoded(prepared, "val"), ten, centre):
        d = central_minus_mean(img, st["mean_image"])
        views = [d[y : y + 227, x : x + 227] for y, x in ((0, 0), (0, 29), (29, 0), (29, 29), (15, 15))]
        views += [w[:, ::-1] for w in views]
        assert np.array_equal(v, np.stack(views).transpose(0, 3, 1, 2))
        assert np.array_equal(c, v[4])


def test_pixel_mean_needs_a_mean_image(prepared):
    with pytest.raises(ValueError, match=r"mean='pixel' needs the training set's mean image.*alexnet stats") as e:
        Loader(prepared, stats=ZERO, aug=PIXEL)
    assert "\n" not in str(e.value)
    small = {**ZERO, "mean_image": np.zeros((128, 128, 3), np.float32)}
    with pytest.raises(ValueError, match="the mean image is 128x128"):
        Loader(prepared, split="val", mode="tencrop", stats=small, aug=PIXEL)


@pytest.mark.parametrize("batch_size", [4, 5])  # 46 images: with 5 over 3 shards (16 + 15 + 15) a last batch is empty
def test_every_image_once_per_epoch_across_shards(prepared, batch_size):
    ref = None
    for n in (1, 2, 3):
        seen, steps = [], []
        for shard in range(n):
            loader = Loader(
                prepared, mode="center", stats=ZERO, batch_size=batch_size, threads=1, shard_id=shard, num_shards=n
            )
            k = 0
            for x, y in loader:
                seen += [(float(a.sum()), int(b)) for a, b in zip(x.double(), y)]
                k += 1
            assert k == len(loader)
            steps.append(k)
        assert len(set(steps)) == 1  # every rank runs the same number of steps
        assert len(seen) == json.loads((prepared / "manifest.json").read_text())["train"]["images"]
        ref = ref or sorted(seen)
        assert sorted(seen) == ref  # the same images, each once
    assert len(set(ref)) == len(ref)  # (the test images are all distinct)


@pytest.fixture(scope="module")
def palette(tmp_path_factory):
    """20 constant-colour images, each its own colour: a crop of any of them still says which image it is."""
    tmp = tmp_path_factory.mktemp("palette")
    cols = [np.full((256, 280, 3), (12 * i, 255 - 12 * i, 100), np.uint8) for i in range(20)]
    return build(tmp, {"c0": cols[:10], "c1": cols[10:]})


def test_training_epochs_are_reshuffled_globally_and_stay_disjoint(palette):
    """Each epoch every image exactly once over 2 ranks (different augmentation seeds, one shuffle seed), and
    later epochs are new permutations of the whole split, not the same order or the same split into shards."""
    aug = AugmentConfig(pca_std=0.0, flip_prob=0.0)
    loaders = [
        Loader(
            palette, stats=ZERO, aug=aug, batch_size=4, threads=1, seed=10 + r, shuffle_seed=3, shard_id=r, num_shards=2
        )
        for r in range(2)
    ]
    epochs = []
    for _ in range(3):
        per_rank = []
        for loader in loaders:
            ids = []
            for x, _ in loader:
                ids += [round(float(v) / 12) for v in x[:, 0].double().mean((1, 2))]  # R = 12 i
            per_rank.append(ids)
        assert sorted(per_rank[0] + per_rank[1]) == list(range(20))
        epochs.append(per_rank)
    assert len({tuple(e[0] + e[1]) for e in epochs}) == 3  # three different orders
    assert len({frozenset(e[0]) for e in epochs}) > 1  # rank 0 does not keep the same images


def test_train_epoch_covers_all_labels_across_shards(prepared):
    import tarfile

    man = json.loads((prepared / "manifest.json").read_text())
    stored = []  # the labels as written, parsed with int()
    for sh in man["train"]["shards"]:
        with tarfile.open(prepared / sh["file"]) as tf:
            stored += [int(tf.extractfile(m).read()) for m in tf if m.name.endswith(".cls")]
    counts = [np.bincount(stored)]
    for n in (1, 3):
        labels = []
        for shard in range(n):
            for _, y in Loader(prepared, stats=ZERO, batch_size=5, threads=1, shard_id=shard, num_shards=n):
                labels += y.tolist()
        assert len(labels) == man["train"]["images"]
        counts.append(np.bincount(labels))
    assert all(np.array_equal(counts[0], c) for c in counts[1:])


def test_same_seed_same_batches(prepared):
    def batches(seed):
        return [x for x, _ in Loader(prepared, stats=random_stats(), batch_size=8, threads=2, seed=seed)]

    a, b, c = batches(5), batches(5), batches(6)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_resume_mid_epoch_continues_exactly(prepared):
    kw = dict(stats=random_stats(), batch_size=8, threads=2, seed=9)
    full = Loader(prepared, **kw)
    n = len(full)
    ref = [x for _ in range(2) for x, _ in full]  # two epochs
    first = Loader(prepared, **kw)
    it = iter(first)
    got = [next(it)[0] for _ in range(3)]
    state = first.state_dict()
    second = Loader(prepared, **kw)
    buf = io.BytesIO()
    torch.save(state, buf)  # as a training checkpoint holds it
    buf.seek(0)
    second.load_state_dict(torch.load(buf, weights_only=True))
    got += [x for x, _ in second]  # the rest of epoch 0 ...
    got += [x for x, _ in second]  # ... and all of epoch 1
    assert len(got) == 2 * n
    assert all(torch.equal(p, q) for p, q in zip(got, ref))


@pytest.mark.parametrize("echo", [1, 2])
def test_every_pass_is_full_after_a_peek_a_break_or_a_zip(prepared, echo):
    """As a DataLoader: looking at one batch, leaving a loop early or zipping with a shorter iterable leaves the
    next `iter(loader)` a full pass over every image (not the rest of the interrupted epoch)."""
    val = Loader(prepared, split="val", mode="center", stats=random_stats(), batch_size=4, threads=1)
    n_val = val.split.images
    next(iter(val))  # a peek
    assert sum(len(y) for _, y in val) == n_val
    train = Loader(prepared, stats=random_stats(), batch_size=8, threads=1, seed=2, echo=echo)
    n = train.split.images * echo
    for i, _ in enumerate(train):  # a break
        if i == 1:
            break
    assert sum(len(y) for _, y in train) == n
    for _ in zip(train, range(2)):  # a shorter partner
        pass
    assert sum(len(y) for _, y in train) == n
    assert sum(len(y) for _, y in train) == n  # and a full pass leaves nothing to finish
    for _ in itertools.islice(train, len(train)):  # every batch, but the pass never saw its end
        pass
    assert sum(len(y) for _, y in train) == n  # not the epoch after: nothing was left to drop


def test_roi_decode_matches_decode_resize_crop(synth_tree):
    """The raw-image shortcut (decode only the window, resize to 227) against decode -> resize 256 -> crop."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from pipelines import common
    from pipelines.config import RunSpec
    from pipelines.train import roi_decode_crop, window_boxes

    files = sorted((synth_tree / "train").rglob("*_1.JPEG")) + sorted((synth_tree / "train").rglob("*_2.JPEG"))
    cpu = RunSpec(batch_size=len(files), threads=2)  # the decoders take their device and tuning from it
    blobs = [np.frombuffer(f.read_bytes(), np.uint8) for f in files]
    sizes = [Image.open(f).size for f in files]
    rng = np.random.default_rng(0)
    rows = []
    for w, h in sizes:
        s = 256 / min(w, h)
        wr, hr = round(w * s), round(h * s)
        kx, ky = int(rng.integers(0, wr - 227 + 1)), int(rng.integers(0, hr - 227 + 1))
        rows.append((kx, ky, wr, hr))

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=None)
    def p():
        jpg = fn.external_source(source=lambda: blobs, batch=True)
        pos = fn.external_source(
            source=lambda: [
                np.float32([kx / (wr - 227) if wr > 227 else 0, ky / (hr - 227) if hr > 227 else 0])
                for kx, ky, wr, hr in rows
            ],
            batch=True,
        )
        # the window in original pixels, worked out here in numpy: x maps to x * w / wr
        win = fn.external_source(
            source=lambda: [
                np.float32([kx * w / wr, (kx + 227) * w / wr, ky * h / hr, (ky + 227) * h / hr, w, h])
                for (kx, ky, wr, hr), (w, h) in zip(rows, sizes)
            ]
        )
        full = common.resize_shorter(common.decode(jpg, cpu), 256)
        ref = fn.crop(full, crop=(227, 227), crop_pos_x=pos[0], crop_pos_y=pos[1])
        roi = roi_decode_crop(jpg, window_boxes(*(win[i] for i in range(6))), 227, cpu)
        return ref, fn.cast(roi, dtype=types.UINT8), full

    pipe = p()
    pipe.build()
    ref, roi, full = pipe.run()
    for i, (kx, ky, wr, hr) in enumerate(rows):
        f = np.array(full[i], np.float64)
        assert f.shape[:2] == (hr, wr)  # DALI's resize rounds like ours
        a, b = np.array(ref[i], np.float64), np.array(roi[i], np.float64)
        assert a.shape == b.shape == (227, 227, 3)
        # Resampling straight from the original grid differs a little from resample-then-crop; on this
        # high-frequency texture a one-pixel misplacement costs 10+ levels, the shortcut about one.
        x1 = kx + 1 if kx + 228 <= wr else kx - 1
        one_pixel_off = np.abs(f[ky : ky + 227, x1 : x1 + 227] - b).mean()
        diff = np.abs(a - b).mean()
        assert diff < 2.0 and diff < one_pixel_off / 8, (i, diff, one_pixel_off)


def test_raw_images_crop_positions_are_uniform(tmp_path):
    """The ROI-decode path (raw images, resized on the fly) places its windows like the prepared path: anchors in
    resized coordinates, uniform over every valid position."""
    sizes = [(512, 512), (600, 512)]  # resized to 256x256 and 300x256
    d = tmp_path / "train" / "c0"
    d.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes * 8):
        # original pixel i at 0.4 (i - 0.5): a 2:1 resize averages pixels 2j, 2j+1 into 0.8 j, the prepared ramp
        x, y = np.meshgrid(np.arange(w) - 0.5, np.arange(h) - 0.5)
        tag = TAGS[i % 2]
        img = np.stack([SLOPE / 2 * x, SLOPE / 2 * y, np.full_like(x, tag)], -1).clip(0).round().astype(np.uint8)
        Image.fromarray(img).save(d / f"c0_{i}.png")
    loader = Loader(tmp_path, stats=ZERO, aug=AugmentConfig(pca_std=0.0), batch_size=8, threads=2, seed=3)
    rows = np.concatenate([np.stack(crop_readout(x), 1) for _ in range(40) for x, _ in loader])
    for k, (w, h) in enumerate(sizes):
        mine = rows[rows[:, 2] == k]
        for axis, extent in ((0, w // 2), (1, h // 2)):
            span = extent - 227
            counts = np.bincount(mine[:, axis], minlength=span + 1)
            assert len(counts) == span + 1 and counts.min() > 0, (w, h, axis, counts)
            chi2 = ((counts - len(mine) / (span + 1)) ** 2 / (len(mine) / (span + 1))).sum()
            assert chi2 < chi2_limit(span), counts


def test_raw_tree_loader(tmp_path, synth_tree):
    import shutil

    src = tmp_path / "train"
    shutil.copytree(synth_tree / "train", src)
    odd = json.loads((synth_tree / "synth.json").read_text())["oddities"]
    for kind in ("truncated", "empty"):
        (tmp_path / odd[kind]).unlink()
    for square in (False, True):
        loader = Loader(tmp_path, stats=ZERO, batch_size=8, threads=2, aug=AugmentConfig(central_square=square))
        shapes, n = set(), 0
        for x, y in loader:
            shapes.add(tuple(x.shape[1:]))
            n += len(y)
        assert n == open_split(tmp_path).images and shapes == {(3, 227, 227)}


def test_loader_uses_an_opened_split(prepared):
    s = open_split(prepared, "val")
    loader = Loader(prepared, split="val", mode="center", stats=ZERO, batch_size=4, threads=1, opened=s)
    assert loader.split is s and sum(len(y) for _, y in loader) == s.images


def test_labels_from_digits_match_int():
    from pipelines.common import MAX_LABEL_DIGITS, labels_from_digits

    values = [0, 7, 10, 417, 999, 1000, 65535, 999_999] + np.random.default_rng(0).integers(0, 10**6, 200).tolist()
    digits = torch.zeros(len(values), MAX_LABEL_DIGITS, dtype=torch.uint8)
    for i, v in enumerate(values):  # what `ascii_digits` gives: the ASCII text, zero bytes after it
        text = str(v).encode()
        digits[i, : len(text)] = torch.tensor(list(text), dtype=torch.uint8)
    assert labels_from_digits(digits).tolist() == values
    assert labels_from_digits(torch.tensor([[3], [5]])).tolist() == [3, 5]  # integer labels (raw tree) pass
    for bad in (b"4a2", b"", b"-1", b"1 2"):
        row = torch.zeros(1, MAX_LABEL_DIGITS, dtype=torch.uint8)
        row[0, : len(bad)] = torch.tensor(list(bad), dtype=torch.uint8)
        with pytest.raises(ValueError, match="not a class index"):
            labels_from_digits(row)


@pytest.mark.parametrize(
    "text, match", [(b"x", r"a .cls label is b'x', not a class index"), (b"9", r"label 9 is past the \d classes")]
)
def test_malformed_label_in_a_shard_is_one_line_error(prepared, tmp_path, text, match):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    assert len(open_split(data, "val").classes) < 10
    tar = sorted(data.glob("val-*.tar"))[0]
    first = (tar.with_suffix(".idx")).read_text().splitlines()[1].split()
    off, size = int(first[5]), int(first[6])  # the first sample's .cls: "jpg off size name cls off size name"
    assert size == 1
    raw = bytearray(tar.read_bytes())
    raw[off : off + size] = text
    tar.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"\(val split\): " + match):
        for _ in Loader(data, split="val", mode="center", stats=ZERO, batch_size=4, threads=1):
            pass


def test_corrupt_sample_in_a_shard_is_named(prepared, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    tar = sorted(data.glob("train-*.tar"))[0]
    first = (tar.with_suffix(".idx")).read_text().splitlines()[1].split()
    off, size = int(first[1]), int(first[2])
    raw = bytearray(tar.read_bytes())
    raw[off : off + size] = b"\0" * size  # the first sample's JPEG bytes zeroed, sizes intact
    tar.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"unreadable sample .*this loader can not continue"):
        loader = Loader(data, mode="center", stats=ZERO, batch_size=4, threads=1)
        for _ in loader:
            pass


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(device="tpu"), "device must be"),
        (dict(mode="five-crop"), "mode must be"),
        (dict(shard_id=2, num_shards=2), "shard_id"),
        (dict(prefetch=0), r"prefetch must be an int >= 1 .*got 0"),
        (dict(hw_decoder_load=1.5), r"hw_decoder_load must be in \[0, 1\].*got 1.5"),
        (dict(hybrid_huffman_threshold=-1), "hybrid_huffman_threshold must be >= 0"),
        (dict(layout="CHW"), "layout must be NCHW or NHWC"),
    ],
)
def test_bad_arguments_fail_at_construction(prepared, bad, match):
    with pytest.raises(ValueError, match=match):
        Loader(prepared, **{"stats": ZERO, **bad})


def test_the_loader_takes_device_and_layout_as_torch_users_write_them(prepared):
    """ "cuda" and "cuda:N" mean the GPU (here refused only for want of one), "nhwc" the channels-last layout."""
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ConfigError, match="device 'gpu' asked for, but torch sees no CUDA GPU"):
            Loader(prepared, stats=random_stats(), device=device, batch_size=4, threads=1)
    with pytest.raises(ConfigError, match="device must be 'cpu', 'gpu', 'cuda' or 'cuda:N', got 'tpu'"):
        Loader(prepared, stats=random_stats(), device="tpu", batch_size=4, threads=1)
    x, _ = next(iter(Loader(prepared, stats=random_stats(), layout="nhwc", batch_size=4, threads=1)))
    assert x.shape == (4, 3, 227, 227) and x.is_contiguous(memory_format=torch.channels_last)


def test_pipelines_import_nothing_of_the_project():
    """pipelines/ is the lowest floor: it imports with alexdata/ and alexmodel/ out of reach."""
    import subprocess
    import sys

    from conftest import ROOT, env_with_path, limit

    code = (
        "import sys; sys.modules['alexdata'] = sys.modules['alexmodel'] = None; "
        "import pipelines.train, pipelines.eval, pipelines.stats"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env_with_path(ROOT),
        capture_output=True,
        text=True,
        timeout=limit(300),
    )
    assert r.returncode == 0, r.stderr


def test_bad_augment_config():
    with pytest.raises(ValueError, match="crop 300"):
        AugmentConfig(crop=300)
    with pytest.raises(ValueError, match="mean must be 'channel' or 'pixel', got 'median'"):
        AugmentConfig(mean="median")
    with pytest.raises(ValueError, match="mean='pixel' needs central_square=True"):
        AugmentConfig(mean="pixel")


def test_missing_and_malformed_stats(prepared, tmp_path):
    with pytest.raises(DataError, match="no stats file"):
        Loader(prepared, stats=tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"mean": [1, 2]}')
    with pytest.raises(DataError, match="bad.json"):
        Loader(prepared, stats=bad)


def test_pipeline_stats_from_dict_shapes():
    ps = PipelineStats.from_dict(random_stats())
    assert len(ps.mean_255) == 3 and len(ps.eigvec) == 3 and all(len(r) == 3 for r in ps.eigvec)
    assert ps.mean_image_255 is None and set(ps.per_channel()) == {"mean_255", "std_255", "eigval_255", "eigvec"}
    m = PipelineStats.from_dict(pixel_stats()).mean_image_255
    assert m.dtype == np.float32 and m.shape == (256, 256, 3)
    with pytest.raises(ValueError, match="shape"):
        PipelineStats.from_dict({**random_stats(), "mean_image": np.zeros((256, 255, 3))})


def test_statistics_on_the_0_1_scale_are_refused_in_one_line(prepared):
    """torchvision's 0-1 figures would pass into a 0-255 pipeline unscaled (batches up to ~1100): refused, the
    Loader's dict path included; a zero mean with unit std (no normalisation at all) is not mistaken for them."""
    torchvision = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.raises(ConfigError, match=r"look like the 0-1 pixel scale; the statistics are on 0-255") as e:
        Loader(prepared, stats=torchvision, aug=AugmentConfig(pca_std=0.0), batch_size=4, threads=1)
    assert "\n" not in str(e.value)
    assert PipelineStats.from_dict(ZERO).mean_255 == (0.0, 0.0, 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_and_cpu_pipelines_agree(prepared):
    st = random_stats()
    cpu_batches = list(Loader(prepared, split="val", mode="center", stats=st, batch_size=8))
    gpu_batches = list(Loader(prepared, split="val", mode="center", stats=st, batch_size=8, device="gpu"))
    assert all(x.is_cuda and y.is_cuda for x, y in gpu_batches)
    assert torch.equal(torch.cat([y for _, y in cpu_batches]), torch.cat([y for _, y in gpu_batches]).cpu())
    cpu, gpu = torch.cat([x for x, _ in cpu_batches]), torch.cat([x for x, _ in gpu_batches]).cpu()
    assert cpu.shape == gpu.shape
    assert (cpu - gpu).abs().mean() < 1.5  # nvJPEG vs libjpeg-turbo IDCT differ by a level or two


@pytest.fixture(scope="module")
def palette64(tmp_path_factory):
    """64 constant-colour images (R = 4 i says which) in 8 shards of 8: shards as long as the batches below."""
    tmp = tmp_path_factory.mktemp("palette64")
    cols = [np.full((256, 270, 3), (4 * i, 255 - 4 * i, 90), np.uint8) for i in range(64)]
    return build(tmp, {"c0": cols[:32], "c1": cols[32:]}, shard_size=8)


@pytest.mark.parametrize("kind", ["shards", "raw tree"])
def test_batches_are_regrouped_every_epoch(palette64, kind):
    """Epochs 1-3 put two images in one batch no more often than a random permutation does (7/63 of pairs),
    counted against every earlier epoch; shard-order shuffling alone keeps each 8-image shard as one batch."""
    data = palette64 if kind == "shards" else palette64.parent / "raw"
    loader = Loader(
        data, stats=ZERO, aug=AugmentConfig(pca_std=0.0, flip_prob=0.0), batch_size=8, threads=1, shuffle_seed=5
    )
    epochs = []
    for _ in range(4):
        batches = [frozenset(round(float(v) / 4) for v in x[:, 0].double().mean((1, 2))) for x, _ in loader]
        assert sorted(i for b in batches for i in b) == list(range(64))  # each image once
        epochs.append(batches)
    together = lambda batches: {frozenset((a, b)) for s in batches for a in s for b in s if a < b}
    for e in range(1, 4):
        pairs = together(epochs[e])  # 8 batches x 28 pairs
        for earlier in epochs[:e]:
            repeat = len(pairs & together(earlier)) / len(pairs)
            # chance: 7/63 = 0.11, sd ~0.03 over 224 (dependent) pairs; the old reader repeated 100 %
            assert repeat < 0.25, (e, repeat)
        assert not set(epochs[e]) & set(b for earlier in epochs[:e] for b in earlier)  # no batch comes back whole


@pytest.mark.parametrize("num_shards", [1, 3])
def test_drop_last_hands_out_only_full_batches_and_resumes(prepared, num_shards):
    """46 images, batch 5: every rank gets 46 // (5 * shards) full batches, each image at most once an epoch,
    and a mid-epoch resume continues with the same batches."""
    kw = dict(
        stats=ZERO,
        aug=AugmentConfig(pca_std=0.0),
        batch_size=5,
        threads=1,
        seed=4,
        drop_last=True,
        num_shards=num_shards,
    )
    ids = []
    for shard in range(num_shards):
        loader = Loader(prepared, shard_id=shard, **kw)
        sizes = [len(y) for x, y in loader]
        assert sizes == [5] * (46 // (5 * num_shards)) == [5] * len(loader)
        centre = Loader(prepared, mode="center", shard_id=shard, **kw)  # a centre crop says which image it is
        ids += [float(v) for x, _ in centre for v in x.double().sum((1, 2, 3))]
    assert len(ids) == 5 * (46 // 5 if num_shards == 1 else 9) == len(set(ids))
    full = Loader(prepared, **kw)
    ref = [x for _ in range(2) for x, _ in full]
    first = Loader(prepared, **kw)
    it = iter(first)
    got = [next(it)[0] for _ in range(len(first))]  # the epoch's last full batch: the partial one is still unread
    second = Loader(prepared, **kw)
    second.load_state_dict(first.state_dict())
    assert [x for x, _ in second] == []  # nothing left to hand out in epoch 0
    got += [x for x, _ in second]
    assert len(got) == len(ref) and all(torch.equal(p, q) for p, q in zip(got, ref))


@pytest.mark.parametrize(
    "mode, split, dtype",
    [
        ("train", "train", "float32"),
        ("train", "train", "bfloat16"),
        ("center", "val", "float32"),
        ("tencrop", "val", "float32"),
    ],
)
def test_nhwc_layout_gives_the_same_values_channels_last(prepared, mode, split, dtype):
    """layout="NHWC": DALI writes HWC and the loader hands out its NCHW view, which is channels_last in memory, so
    the trainer's .contiguous(memory_format=channels_last) copies nothing; the values are the NCHW loader's."""
    kw = dict(
        split=split, mode=mode, stats=random_stats(), aug=AugmentConfig(dtype=dtype), batch_size=8, threads=1, seed=5
    )
    nchw = [x for x, _ in Loader(prepared, **kw)]
    nhwc = [x for x, _ in Loader(prepared, layout="NHWC", **kw)]
    assert len(nchw) == len(nhwc) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(nchw, nhwc))
    for x in nhwc:
        views = x.flatten(0, 1) if mode == "tencrop" else x  # (B * 10, 3, 227, 227): how the net takes them
        assert views.shape[1:] == (3, 227, 227) and views.dtype == getattr(torch, dtype)
        assert views.is_contiguous(memory_format=torch.channels_last) and not views.is_contiguous()
        assert views.contiguous(memory_format=torch.channels_last).data_ptr() == views.data_ptr()  # no copy


def test_preallocate_needs_the_recorded_largest_image(prepared, tmp_path):
    import shutil

    assert (
        Loader(prepared, stats=ZERO, batch_size=8, threads=1, preallocate=True).spec.preallocate_hw
        == open_split(prepared).max_hw
    )
    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["train"]["max_height"]
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match=r"max_height and max_width \(the largest image\) are missing: a manifest"):
        Loader(old, stats=ZERO, preallocate=True)  # an older prepare's manifest: refused whole
    raw = tmp_path / "raw" / "train" / "n01"
    raw.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(raw / "a.JPEG")
    with pytest.raises(ValueError, match="is a raw tree, which records no largest image size"):
        Loader(tmp_path / "raw", stats=ZERO, preallocate=True)


def test_a_position_the_pipeline_cannot_take_up_is_one_clear_error(prepared):
    """DALI names a graph's operators, so a position saved by another version of the pipeline does not load:
    the loader says so (the trainer then resumes from the next epoch boundary) and still works afresh."""
    from alexdata.loader import StaleLoaderState

    kw = dict(stats=ZERO, batch_size=8, threads=1)
    state = Loader(prepared, mode="center", **kw).state_dict()  # another graph: no random ops, no lighting
    loader = Loader(prepared, **kw)
    with pytest.raises(StaleLoaderState, match="another version of the pipeline"):
        loader.load_state_dict({**state, "mode": "train"})
    assert sum(len(y) for _, y in loader) == 46
