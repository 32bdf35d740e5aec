"""The Loader as a service for models other than AlexNet: torchvision's RandomResizedCrop and its
evaluation, uint8 / float16 / channels-last outputs, statistics without eigenvectors, and a small model trained
through it. CPU only, against numpy and PIL references on tiny data."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.stats import ks_2samp

from alexdata.errors import ConfigError, StatsError
from alexdata.loader import Loader
from pipelines.config import AugmentConfig

MEAN_STD = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 55.0, 50.0]}  # no eigenvectors: lighting off
INCEPTION = {"augment": "inception", "pca_std": 0.0}


def tree(root, images: dict[str, list[np.ndarray]], ext="png", **save):
    """A raw class-folder tree ROOT/train/<class>/<i>.<ext>; returns ROOT."""
    for cls, arrays in images.items():
        d = root / "train" / cls
        d.mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(d / f"{i}.{ext}", **save)
    return root


# ---------------------------------------------------------------- RandomResizedCrop: the window


def torchvision_windows(h, w, n, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(n, 4) int (top, left, height, width): torchvision's RandomResizedCrop.get_params, n times, in numpy."""
    area = h * w * rng.uniform(*scale, (n, 10))
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    cw, ch = np.round(np.sqrt(area * r)).astype(int), np.round(np.sqrt(area / r)).astype(int)
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.argmax(1)
    k = np.arange(n)
    ch, cw = np.where(fits.any(1), ch[k, first], 0), np.where(fits.any(1), cw[k, first], 0)
    fall = ~fits.any(1)
    # torchvision's fallback: the whole image, the longer side cut to the ratio range, centred
    in_ratio = w / h
    fw = w if in_ratio <= ratio[1] else int(round(h * ratio[1]))
    fh = h if in_ratio >= ratio[0] else int(round(w / ratio[0]))
    ch[fall], cw[fall] = fh, fw
    top = np.where(fall, (h - ch) // 2, rng.integers(0, h - ch + 1))
    left = np.where(fall, (w - cw) // 2, rng.integers(0, w - cw + 1))
    return np.stack([top, left, ch, cw], 1), fall


def dali_windows(h, w, n, aug, seed=0):
    """(n, 4) int windows from pipelines/inception.py `random_resized_window` for an h x w image."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from pipelines.inception import random_resized_window

    @pipeline_def(batch_size=n, num_threads=1, device_id=None, seed=seed)
    def windows():
        hw = fn.cast(fn.constant(idata=[h, w], dtype=types.INT32), dtype=types.FLOAT)
        return random_resized_window(hw, aug)

    pipe = windows()
    pipe.build()
    anchor, size = pipe.run()
    return np.concatenate([np.stack([np.array(a) for a in anchor]), np.stack([np.array(s) for s in size])], 1).astype(
        int
    )


@pytest.mark.parametrize("hw", [(256, 341), (341, 256), (100, 600), (700, 90)])
def test_inception_windows_are_torchvisions(hw):
    """The graph's windows against torchvision's algorithm in numpy: the same distribution of areas, aspect
    ratios and places (two-sample KS), fallbacks as often as (1 - P(a draw fits))^10, each one centred."""
    h, w = hw
    n = 3000
    got = dali_windows(h, w, n, AugmentConfig(augment="inception"))
    ref, ref_fall = torchvision_windows(h, w, 20 * n, np.random.default_rng(1))
    top, left, ch, cw = got.T
    assert (ch >= 1).all() and (cw >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + ch <= h).all() and (left + cw <= w).all()
    fb = ref[ref_fall][0] if ref_fall.any() else None
    fall = (got == fb).all(1) if fb is not None else np.zeros(n, bool)
    p = ref_fall.mean()
    assert abs(fall.sum() - n * p) < 4.5 * math.sqrt(n * p * (1 - p)) + 3, (fall.sum(), n * p)
    fitted = got[~fall]
    share = fitted[:, 2] * fitted[:, 3] / (h * w)
    assert share.min() >= 0.08 * 0.9 and share.max() <= 1.0  # rounding moves an edge by half a pixel
    wh = fitted[:, 3] / fitted[:, 2]
    assert wh.min() >= 0.75 * 0.9 and wh.max() <= 4 / 3 / 0.9
    for name, a, b in [
        ("area", got[:, 2] * got[:, 3], ref[:, 2] * ref[:, 3]),
        ("log w/h", np.log(got[:, 3] / got[:, 2]), np.log(ref[:, 3] / ref[:, 2])),
        ("top", got[:, 0] / h, ref[:, 0] / h),
        ("left", got[:, 1] / w, ref[:, 1] / w),
    ]:
        assert ks_2samp(a, b).pvalue > 1e-3, name


# ---------------------------------------------------------------- RandomResizedCrop: the images

RAMP_SIZES = [(200, 150), (120, 260), (400, 90)]  # (W, H); the last is wide: a third of its windows fall back


def ramp(w, h, tag):
    """R rises across, G down the image from 0 to 250; B = tag says which size this is."""
    x, y = np.meshgrid(np.arange(w) * 250 / (w - 1), np.arange(h) * 250 / (h - 1))
    return np.stack([x, y, np.full_like(x, tag)], -1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    return tree(
        tmp_path_factory.mktemp("ramps"), {"c0": [ramp(w, h, 60 * k + 30) for k, (w, h) in enumerate(RAMP_SIZES)]}
    )


def window_readout(x, sizes):
    """(k, top, left, height, width) of each crop of ramp images, fitted: a ramp resized stays a ramp, its slope
    the window's extent / crop and its offset the window's place (interior pixels: the edges are clamped)."""
    x = x.numpy().astype(np.float64)  # (B, 3, crop, crop)
    crop = x.shape[-1]
    j = np.arange(crop // 4, 3 * crop // 4)
    rows = []
    for img in x:
        k = int(np.abs(img[2].mean() - (60 * np.arange(len(sizes)) + 30)).argmin())
        w, h = sizes[k]
        fit = []
        for profile, extent in ((img[1].mean(1), h), (img[0].mean(0), w)):  # G down the rows, R across
            slope, at0 = np.polyfit(j, profile[j], 1)
            px = (extent - 1) / 250  # source pixels per level
            size = slope * px * crop
            fit += [at0 * px - 0.5 * size / crop + 0.5, size]  # output pixel i samples (i + 0.5) * size / crop - 0.5
        rows.append((k, fit[0], fit[2], fit[1], fit[3]))
    return np.array(rows)


def test_inception_crops_are_resized_windows_of_the_image(ramps):
    """Loader output at any size (48 here) is a window of the image resized to crop x crop: inside the image,
    8-100 % of its area, width / height in [3/4, 4/3]; the wide image's fallback is the centred H x 4H/3 window."""
    aug = {**INCEPTION, "crop": 48, "flip_prob": 0.0}
    loader = Loader(ramps, stats={"mean": [0] * 3, "std": [1] * 3}, aug=aug, batch_size=3, threads=1, seed=2)
    x = [b for _ in range(60) for b, _ in loader]
    assert all(b.shape == (3, 3, 48, 48) and b.dtype == torch.float32 for b in x)
    got = window_readout(torch.cat(x), RAMP_SIZES)
    for k, (w, h) in enumerate(RAMP_SIZES):
        mine = got[got[:, 0] == k][:, 1:]  # (top, left, height, width)
        assert len(mine) == 60
        assert (mine[:, :2] > -1.5).all() and (mine[:, 0] + mine[:, 2] < h + 1.5).all()
        assert (mine[:, 1] + mine[:, 3] < w + 1.5).all()
        share = mine[:, 2] * mine[:, 3] / (w * h)
        assert share.min() > 0.07 and share.max() < 1.03, (k, share.min(), share.max())
        wh = mine[:, 3] / mine[:, 2]
        assert wh.min() > 0.7 and wh.max() < 1.4, (k, wh.min(), wh.max())
        ref = torchvision_windows(h, w, 20000, np.random.default_rng(k))[0]
        ref_share = ref[:, 2] * ref[:, 3] / (w * h)
        assert abs(share.mean() - ref_share.mean()) < 4 * ref_share.std() / math.sqrt(60), k
    w, h = RAMP_SIZES[2]
    wide = got[got[:, 0] == 2][:, 1:]
    fallback = (np.abs(wide - [0, (w - 120) // 2, h, 120]) < 1.5).all(1)  # (0, 140, 90, 120)
    p = torchvision_windows(h, w, 20000, np.random.default_rng(5))[1].mean()  # 0.17
    assert abs(fallback.sum() - 60 * p) < 4 * math.sqrt(60 * p * (1 - p)), (fallback.sum(), 60 * p)


def smooth(w, h, k):
    """A slowly varying RGB image: a resampled copy of it differs from another only by small shifts."""
    x, y = np.meshgrid(np.arange(w) / w, np.arange(h) / h)
    return (
        np.stack(
            [
                128 + 90 * np.sin(2 * np.pi * (0.8 * x + 0.3 * y) + k),
                128 + 90 * np.cos(2 * np.pi * (0.4 * x - 0.7 * y) + k),
                60 + 150 * x * y,
            ],
            -1,
        )
        .round()
        .astype(np.uint8)
    )


def test_inception_eval_is_torchvisions_resize_and_centre_crop(tmp_path):
    """mode "center" with augment="inception": shorter side round(crop / 0.875), centre crop (torchvision's
    Resize(128) + CenterCrop(112) in PIL), within JPEG decoding and resampling differences."""
    sizes = [(300, 200), (180, 260), (97, 140)]
    data = tree(tmp_path, {"c0": [smooth(w, h, k) for k, (w, h) in enumerate(sizes)]}, "jpg", quality=95, subsampling=0)
    crop = 112
    aug = AugmentConfig(augment="inception", crop=crop, pca_std=0.0)
    assert aug.eval_side == 128
    loader = Loader(data, mode="center", stats={"mean": [0] * 3, "std": [1] * 3}, aug=aug, batch_size=3, threads=1)
    got = torch.cat([x for x, _ in loader]).numpy()
    assert got.shape == (3, 3, crop, crop)
    for k in range(3):  # the reader's order is the tree's: 0.jpg, 1.jpg, 2.jpg
        im = Image.open(data / "train" / "c0" / f"{k}.jpg").convert("RGB")
        w, h = im.size
        size = (128, int(128 * h / w)) if w <= h else (int(128 * w / h), 128)  # torchvision truncates the long side
        r = np.asarray(im.resize(size, Image.Resampling.BILINEAR), np.float32)
        top, left = round((size[1] - crop) / 2), round((size[0] - crop) / 2)
        ref = r[top : top + crop, left : left + crop].transpose(2, 0, 1)
        d = np.abs(got[k] - ref)
        assert d.mean() < 1.0 and d.max() <= 4, (k, d.mean(), d.max())


# ---------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = [smooth(*rng.integers(120, 300, 2), k) for k in range(8)]
    return tree(tmp_path_factory.mktemp("photos"), {"a": images[:4], "b": images[4:]}, "jpg", quality=90)


@pytest.mark.parametrize("mode, augment", [("train", "paper"), ("train", "inception"), ("center", "inception")])
def test_uint8_and_float16_are_the_float32_output(photos, mode, augment):
    """Same seed, same crops: float32 = (uint8 - mean) / std, float16 = float32 rounded to half; NHWC batches
    are the same values, channels_last in memory, with no copy to make them so."""
    base = dict(augment=augment, crop=64, pca_std=0.0, shorter_side=128)
    kw = dict(split="train", mode=mode, stats=MEAN_STD, batch_size=4, threads=1, seed=7)
    f32 = torch.cat([x for x, _ in Loader(photos, aug={**base, "divide_std": True}, **kw)])
    u8 = torch.cat([x for x, _ in Loader(photos, aug={**base, "dtype": "uint8"}, **kw)])
    f16 = torch.cat([x for x, _ in Loader(photos, aug={**base, "divide_std": True, "dtype": "float16"}, **kw)])
    assert u8.dtype == torch.uint8 and f16.dtype == torch.float16 and u8.shape == f32.shape == (8, 3, 64, 64)
    mean, std = (torch.tensor(MEAN_STD[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(f32, (u8.double() - mean) / std, rtol=0, atol=1e-4, check_dtype=False)
    torch.testing.assert_close(f16, f32.half(), rtol=1e-3, atol=1e-3)
    for x, _ in Loader(photos, aug={**base, "dtype": "uint8"}, layout="NHWC", **kw):
        assert x.shape == (4, 3, 64, 64) and x.is_contiguous(memory_format=torch.channels_last)
        assert x.contiguous(memory_format=torch.channels_last).data_ptr() == x.data_ptr()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inception_gpu_and_cpu_agree(photos):
    """The same seed draws the same windows on both (the window is CPU arithmetic); the mixed decoder and the GPU
    resize differ from the CPU's by a level or two."""
    kw = dict(stats=MEAN_STD, aug={**INCEPTION, "crop": 64}, batch_size=4, seed=3)
    cpu = torch.cat([x for x, _ in Loader(photos, threads=1, **kw)])
    gpu = [x for x, _ in Loader(photos, device="gpu", threads=1, **kw)]
    assert all(x.is_cuda for x in gpu)
    gpu = torch.cat(gpu).cpu()
    assert gpu.shape == cpu.shape == (8, 3, 64, 64) and (gpu - cpu).abs().mean() < 3


def test_uint8_refuses_normalisation_in_one_line():
    with pytest.raises(ValueError, match=r"dtype='uint8' hands out the pixels as decoded.*pca_std=0"):
        AugmentConfig(dtype="uint8")  # the paper's lighting is on by default
    with pytest.raises(ValueError, match="pca_std=0"):
        AugmentConfig(dtype="uint8", pca_std=0.0, divide_std=True)


# ---------------------------------------------------------------- statistics, configs, errors


def test_statistics_without_eigenvectors_serve_all_but_lighting(photos, tmp_path):
    ok = dict(aug={**INCEPTION, "crop": 32}, batch_size=8, threads=1)
    assert next(iter(Loader(photos, stats=MEAN_STD, **ok)))[0].shape == (8, 3, 32, 32)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(MEAN_STD))  # a file of the mean and std alone
    assert Loader(photos, stats=path, **ok).stats.eigvec is None
    with pytest.raises(ConfigError, match=r"PCA lighting \(pca_std 0.1\) needs the statistics' eigen") as e:
        Loader(photos, stats=path, aug={"augment": "inception"}, batch_size=8, threads=1)
    assert "\n" not in str(e.value)
    path.write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    with pytest.raises(StatsError, match="looks like the 0-1 pixel scale"):
        Loader(photos, stats=path, **ok)
    path.write_text(json.dumps({**MEAN_STD, "eigval": [3, 2, 1]}))
    with pytest.raises(StatsError, match="eigval without eigvec"):
        Loader(photos, stats=path, **ok)


def test_aug_as_a_dict_and_one_line_errors(photos):
    loader = Loader(photos, stats=MEAN_STD, aug={**INCEPTION, "crop": 40, "scale": [0.5, 1]}, batch_size=4, threads=1)
    assert loader.aug == AugmentConfig(augment="inception", crop=40, pca_std=0.0, scale=(0.5, 1.0))
    for bad, match in [
        ({"crops": 40}, r"aug: unknown field 'crops'; AugmentConfig has crop, "),
        ({"augment": "autoaugment"}, r"augment must be 'paper' or 'inception', got 'autoaugment'"),
        ({**INCEPTION, "scale": (0.0, 1.0)}, r"scale must satisfy 0 < low"),
        ({"augment": "inception", "central_square": True}, "central_square and mean='pixel'"),
        ("inception", "aug must be an AugmentConfig or a dict"),
    ]:
        with pytest.raises(ConfigError, match=match):
            Loader(photos, stats=MEAN_STD, aug=bad)
    with pytest.raises(ConfigError, match=r"split 'vall': expected one of train, val"):
        Loader(photos, split="vall", stats=MEAN_STD)
    with pytest.raises(ConfigError, match="stats: a dict needs 'mean' and 'std'"):
        Loader(photos, stats={"mean": [1, 2, 3]})


def test_missing_stats_advice_is_the_cli_s(photos):
    """The library names the file and how to write it; `--stats` is the command line's to add."""
    from cli import main

    with pytest.raises(StatsError) as e:
        Loader(photos)
    assert "no stats file" in str(e.value) and "--stats" not in str(e.value)
    r = CliRunner().invoke(main, ["bench", "loader", str(photos)])
    assert r.exit_code == 1 and "no stats file" in r.output and r.output.rstrip().endswith("or pass --stats FILE")


def test_train_takes_augment():
    """`alexnet train --augment inception`: RandomResizedCrop at AlexNet's 227, one mean per channel (no central
    patch, no mean image), whichever recipe; the paper's default stays the paper's."""
    from alexmodel.config import configs_from_options

    assert configs_from_options("DATA")[0].aug == AugmentConfig(central_square=True, mean="pixel")
    paper = configs_from_options("DATA", augment="inception")[0].aug
    assert paper == AugmentConfig(augment="inception") and paper.eval_side == 259
    modern = configs_from_options("DATA", recipe="modern", augment="inception")[0].aug
    assert modern == AugmentConfig(augment="inception", divide_std=True, pca_std=0.0)
    with pytest.raises(ConfigError, match="augment='autoaugment': expected one of paper, inception"):
        configs_from_options("DATA", augment="autoaugment")


def test_bench_loader_times_the_inception_pipeline_and_its_pil_baseline(photos):
    from alexdata.bench import bench_loader

    r = bench_loader(
        str(photos),
        batch_size=4,
        seconds=0.2,
        threads=1,
        stats=MEAN_STD,
        rounds=1,
        contenders=("pipeline", "baseline"),
        aug={**INCEPTION, "crop": 64},
    )
    assert (r["augment"], r["crop"]) == ("inception", 64) and r["pipeline"] > 0 and r["baseline"] > 0


# ---------------------------------------------------------------- a small model trained through the Loader


def test_a_small_model_learns_through_the_loader(tmp_path):
    """README's example in small: two classes of distinctly coloured images, a model defined here, SGD on
    inception crops; the loss falls from chance (ln 2)."""
    rng = np.random.default_rng(0)
    noisy = lambda rgb: np.clip(rgb + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
    data = tree(
        tmp_path,
        {"red": [noisy((190, 60, 50)) for _ in range(16)], "blue": [noisy((50, 70, 190)) for _ in range(16)]},
        "jpg",
    )
    loader = Loader(
        data,
        stats=MEAN_STD,
        aug=AugmentConfig(augment="inception", crop=32, pca_std=0.0, divide_std=True),
        batch_size=8,
        threads=1,
        drop_last=True,
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),  # (B, 8, 16, 16)
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),  # (B, 8)
        torch.nn.Linear(8, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for epoch in range(3):
        for images, labels in loader:  # (8, 3, 32, 32) float32, (8,) int64
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 3 * 4
    assert abs(losses[0] - math.log(2)) < 0.3 and np.mean(losses[-4:]) < 0.25, losses


def test_preprocessing_of_a_uint8_run_hands_out_the_pixels_as_they_are():
    # The pipelines subtract no mean for dtype uint8 (the model normalises on the GPU): model.preprocess must
    # not either.
    from alexmodel.preprocess import Preprocess
    from pipelines.config import AugmentConfig, PipelineStats

    stats = PipelineStats(mean_255=(120.0, 110.0, 100.0), std_255=(60.0, 60.0, 60.0))
    raw = Preprocess.of(stats, AugmentConfig(dtype="uint8", pca_std=0.0))
    assert raw.mean_255 == (0.0, 0.0, 0.0) and raw.std_255 == (1.0, 1.0, 1.0)
    assert Preprocess.of(stats, AugmentConfig(pca_std=0.0)).mean_255 == (120.0, 110.0, 100.0)  # float32: minus it
