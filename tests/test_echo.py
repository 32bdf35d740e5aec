"""Data echoing (alexdata/echo.py) and the GPU decoder's cache, on the CPU: every image `echo` times an epoch,
never twice in a batch, each copy augmented afresh, exact mid-echo resume; the cache refused in one line off the
GPU, and the GPU graph traced (not run) with the cache's arguments."""

import io
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from alexdata.errors import ConfigError
from alexdata.loader import Loader
from alexdata.prepare import PrepareConfig, prepare
from pipelines.config import AugmentConfig

SLOPE = 0.8  # R = 0.8 x, G = 0.8 y: a crop's mean R is 0.8 (anchor_x + 113)
TAG = lambda i: 10 + 12 * i  # B channel of image i: which image a crop comes from
# Lighting on the B channel only, sd 1 level of 255 (offset = eigvec @ (alpha * eigval_255 / 255)): R and G keep
# the crop's place exact, and B stays within 6 sd of its image's tag
STATS = {"mean": [0, 0, 0], "std": [1, 1, 1], "eigval": [0, 0, 2550], "eigvec": np.eye(3).tolist()}
AUG = AugmentConfig(pca_std=0.1)


@pytest.fixture(scope="module")
def ramps20(tmp_path_factory):
    """20 ramp images (280 x 256), B = TAG(i): a crop says which image, where it was cut and whether mirrored."""
    tmp = tmp_path_factory.mktemp("echo")
    x, y = np.meshgrid(np.arange(280), np.arange(256))
    for i in range(24):  # 20 to train on, 4 to validate (the trainer's tests)
        d = tmp / "raw" / ("train" if i < 20 else "val") / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        a = np.stack([SLOPE * x, SLOPE * y, np.full_like(x, TAG(i % 20))], -1).round().astype(np.uint8)
        Image.fromarray(a).save(d / f"{i}.png")
    prepare(tmp / "raw", tmp / "data", PrepareConfig(shard_size=4), workers=1, progress=False, log=lambda *a: None)
    return tmp / "data"


def readout(x):
    """(image, anchor_x, anchor_y, mirrored, lighting offset on B) of each crop in a batch."""
    x = x.double()
    b = x[:, 2].mean((1, 2))
    image = ((b - 10) / 12).round().long()
    ax, ay = (x[:, 0].mean((1, 2)) / SLOPE - 113).round(), (x[:, 1].mean((1, 2)) / SLOPE - 113).round()
    mirrored = x[:, 0, :, :113].mean((1, 2)) > x[:, 0, :, 114:].mean((1, 2))
    light = b - 10 - 12 * image
    return [(int(i), int(u), int(v), bool(m), float(o)) for i, u, v, m, o in zip(image, ax, ay, mirrored, light)]


@pytest.mark.parametrize("batch_size", [6, 7])  # groups of DALI batches (6, 6), (6, 2) and (7, 7), (6)
def test_each_image_echo_times_an_epoch_in_different_batches_augmented_afresh(ramps20, batch_size):
    loader = Loader(ramps20, stats=STATS, aug=AUG, batch_size=batch_size, threads=1, seed=1, echo=2)
    for _ in range(2):  # two epochs
        batches = [readout(x) for x, _ in loader]
        assert len(batches) == len(loader) == 2 * -(-20 // batch_size)  # echo x the batches of an epoch
        copies = defaultdict(list)
        for k, b in enumerate(batches):
            ids = [c[0] for c in b]
            assert len(set(ids)) == len(ids)  # never twice in one batch
            for c in b:
                copies[c[0]].append((k, c[1:]))
        assert sorted(copies) == list(range(20)) and all(len(v) == 2 for v in copies.values())  # each twice
        same_crop = sum(a[1][:3] == b[1][:3] for a, b in copies.values())
        assert same_crop <= 1  # crop and flip drawn afresh: ~1/3200 of pairs agree by chance
        assert all(a[1][3] != b[1][3] for a, b in copies.values())  # and the lighting
        assert all(abs(c[1][3]) < 6 for v in copies.values() for c in v)
        gaps = [b[0] - a[0] for a, b in copies.values()]
        assert np.mean(gaps) > 1.5  # copies not side by side: SPREAD = 2 DALI batches apart on average
        assert all(set(map(tuple, a)) != set(map(tuple, b)) for a, b in zip(batches, batches[1:]))


def test_resume_mid_echo_gives_the_batches_an_uninterrupted_run_gives(ramps20):
    kw = dict(stats=STATS, aug=AUG, batch_size=7, threads=1, seed=2, echo=2)
    full = Loader(ramps20, **kw)
    ref = [x for _ in range(2) for x, _ in full]  # 6 batches an epoch: groups (7, 7) -> 4, (6) -> 2
    assert len(ref) == 12
    for k in (1, 4, 5):  # inside the first group, at the group boundary, inside the epoch's short last group
        first = Loader(ramps20, **kw)
        it = iter(first)
        got = [next(it)[0] for _ in range(k)]
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)  # as a training checkpoint holds it
        buf.seek(0)
        second = Loader(ramps20, **kw)
        second.load_state_dict(torch.load(buf, weights_only=True))
        got += [x for x, _ in second]  # the rest of epoch 0 ...
        got += [x for x, _ in second]  # ... and all of epoch 1
        assert len(got) == len(ref) and all(torch.equal(p, q) for p, q in zip(got, ref)), k


def test_echo_over_ranks_keeps_equal_steps_and_drop_last_full_batches(ramps20):
    """20 images over 3 ranks (7, 7, 6), batch 3: the same number of batches on every rank (the shorter rank's
    last DALI batch is empty), every image twice; drop_last: 2 x 20 // 9 full batches per rank."""
    kw = dict(stats=STATS, aug=AUG, batch_size=3, threads=1, num_shards=3, echo=2)
    seen, lens = Counter(), set()
    for r in range(3):
        loader = Loader(ramps20, shard_id=r, seed=r, **kw)
        batches = [readout(x) for x, _ in loader]
        lens.add((len(batches), len(loader)))
        seen.update(c[0] for b in batches for c in b)
        dropped = [len(y) for _, y in Loader(ramps20, shard_id=r, drop_last=True, **kw)]
        assert dropped == [3] * 4
    assert lens == {(6, 6)} and sorted(seen.items()) == [(i, 2) for i in range(20)]


def test_echo_and_the_cache_are_refused_where_they_do_not_apply(ramps20):
    with pytest.raises(ConfigError, match="echo 2: data echoing is for training"):
        Loader(ramps20, split="train", mode="center", stats=STATS, echo=2)
    with pytest.raises(ConfigError, match="echo must be an int >= 1"):
        Loader(ramps20, stats=STATS, echo=0)
    with pytest.raises(ConfigError, match="gpu_cache_gb 2: the decoded-image cache is GPU-only") as e:
        Loader(ramps20, stats=STATS, gpu_cache_gb=2)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least 1 MiB"):  # would round to no cache at all, silently
        Loader(ramps20, stats=STATS, gpu_cache_gb=0.0001)
    with pytest.raises(ConfigError, match="at least 1 MiB"):  # round() of infinity raised OverflowError
        Loader(ramps20, stats=STATS, gpu_cache_gb=float("inf"))
    old = Loader(ramps20, stats=STATS, batch_size=8).state_dict()
    with pytest.raises(ConfigError, match="loader state is for echo=1, this loader has 2"):
        Loader(ramps20, stats=STATS, batch_size=8, echo=2).load_state_dict(old)


def traced(split, stats, aug, spec, echo):
    """The GPU train pipeline's operators as traced in Python, without a GPU (DALI needs CUDA to build one, not
    to trace its graph: Pipeline._build_graph, a private method, runs the graph function and checks every
    operator's arguments against its schema); each as its OpSpec text."""
    from pipelines.train import build_train_pipeline

    pipe = build_train_pipeline(split, stats, aug, spec, echo=echo)
    pipe._build_graph()
    return [str(op.spec) for op in pipe._ops]


@pytest.mark.parametrize("kind", ["shards", "raw tree"])
def test_the_gpu_graph_decodes_whole_images_once_with_the_cache(ramps20, kind):
    """On the GPU the train graph's decoder is the mixed whole-image decoder with the cache's arguments (the
    ROI decoders take no cache: a raw tree then decodes whole images too), and echo 2 augments each decode
    twice. Traced only: the CPU machines here have no CUDA."""
    from alexdata.dataset import open_split
    from alexdata.loader import resolve_stats
    from pipelines.config import RunSpec, Tuning

    split = open_split(ramps20 if kind == "shards" else ramps20.parent / "raw", "train")
    spec = RunSpec(batch_size=8, threads=1, device="gpu", device_id=0, tuning=Tuning(gpu_cache_gb=2.0))
    ops = traced(split, resolve_stats(STATS, ramps20), AUG, spec, echo=2)
    decoders = [op for op in ops if "OpSpec for decoders__" in op]
    assert len(decoders) == 1 and "decoders__Image:" in decoders[0]  # one whole-image decode
    assert all(s in decoders[0] for s in ("device: mixed", "cache_size: 2048", "cache_type: threshold"))
    assert sum("OpSpec for CropMirrorNormalize:" in op for op in ops) == 2  # one per copy
    plain = traced(split, resolve_stats(STATS, ramps20), AUG, RunSpec(batch_size=8, threads=1), echo=1)
    assert not any("cache_size" in op for op in plain)


@pytest.fixture(scope="module")
def run_data(tmp_path_factory, ramps20):
    """ramps20 with a stats.json, as `alexnet train` needs it."""
    from alexdata.stats import compute_stats
    from alexdata.statsfile import write_stats

    d = tmp_path_factory.mktemp("echo_train") / "data"
    shutil.copytree(ramps20, d)
    write_stats(compute_stats(d, threads=1), d / "stats.json")
    return d


def test_train_with_echo_steps_echo_times_an_epoch_and_a_resume_keeps_it(run_data, tmp_path):
    from alexdata.errors import TrainError
    from alexmodel.train import train_from_options

    opts = dict(recipe="modern", width=0.0625, batch_size=8, device="cpu", torch_threads=1, threads=1, progress=False)
    r = train_from_options(str(run_data), str(tmp_path / "run"), epochs=1, echo=2, **opts)
    assert r["history"][0]["step"] == 2 * 3  # 20 images, batch 8: 3 batches, each image twice
    with pytest.raises(TrainError, match="data.echo is 2 in the checkpoint but 1 now"):
        train_from_options(str(run_data), str(tmp_path / "run"), resume=True, epochs=2, echo=1, **opts)


def test_train_gpu_cache_on_the_cpu_is_one_line(run_data, tmp_path):
    from click.testing import CliRunner

    from cli import main

    args = ["train", str(run_data), "--out", str(tmp_path / "run"), "--device", "cpu", "--batch-size", "8"]
    r = CliRunner().invoke(main, [*args, "--recipe", "modern", "--width", "0.0625", "--gpu-cache-gb", "1"])
    assert r.exit_code == 1 and "the decoded-image cache is GPU-only" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_bench_loader_times_echo_factors_side_by_side(ramps20):
    from click.testing import CliRunner

    from alexdata.bench import bench_loader
    from cli import main

    r = bench_loader(
        str(ramps20),
        batch_size=8,
        seconds=0.2,
        threads=1,
        stats=STATS,
        rounds=1,
        contenders=("pipeline",),
        echoes=(1, 2),
    )
    assert r["echoes"] == [1, 2] and r["pipeline"] > 0 and r["pipeline_echo2"] > 0 and "decode_only" not in r
    assert np.isclose(r["echo2_vs_echo1"], r["pipeline_echo2"] / r["pipeline"])
    assert r["pipeline_cpu_us_per_img"] > 0 and r["pipeline_echo2_cpu_us_per_img"] > 0
    bad = CliRunner().invoke(main, ["bench", "loader", str(ramps20), "--echo", "1,0"])
    assert bad.exit_code == 2 and "expected distinct ints >= 1 separated by commas" in bad.output
