"""alexnet stats: exact sums against numpy over the same decoded pixels, images of known pixels, the eigen
decomposition's properties, stats.json validation and bad input."""

import json
import tarfile

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from alexdata.dataset import DataError, open_split
from alexdata.errors import StatsError
from alexdata.stats import StatsPass, compute_stats, eigen, select
from alexdata.statsfile import load_stats, same_stats, write_stats

RTOL = 1e-6


def dali_decode(blobs: list[bytes], device: str = "cpu") -> list[np.ndarray]:
    """HWC uint8 RGB of each encoded image, decoded one by one by DALI's decoder (no reader, no batching)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "gpu" else None)
    def pipe():
        enc = fn.external_source(source=([np.frombuffer(b, np.uint8)] for b in blobs), dtype=types.UINT8)
        return fn.decoders.image(enc, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    out = []
    for _ in blobs:
        (img,) = p.run()
        out.append(np.array(img.as_cpu()[0] if device == "gpu" else img[0]))
    return out


def selected_blobs(sel) -> list[bytes]:
    """The encoded bytes of a `select`ed split's images, read with tarfile / open, not with DALI's readers."""
    if sel.kind == "files":
        return [open(f, "rb").read() for f in sel.files]
    blobs = []
    for t in sel.tars:
        with tarfile.open(t) as tf:
            blobs += [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".jpg")]
    return blobs[: sel.images]


def reference(images: list[np.ndarray]) -> dict:
    """Exact integer sums, then float64 mean / covariance and numpy's eigh."""
    s1, s2, n = np.zeros(3, np.int64), np.zeros((3, 3), np.int64), 0
    for a in images:
        x = a.reshape(-1, 3).astype(np.int64)
        s1, s2, n = s1 + x.sum(0), s2 + x.T @ x, n + len(x)
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    w, v = np.linalg.eigh(cov)
    return {
        "s1": s1,
        "s2": s2,
        "pixels": n,
        "mean": mean,
        "cov": cov,
        "std": np.sqrt(np.diag(cov)),
        "eigval": w[::-1],
        "eigvec": v[:, ::-1],
    }


def central_mean(images: list[np.ndarray], side: int = 256) -> np.ndarray:
    """The per-pixel mean of the central side x side patches (top-left floor((H - side) / 2), floor((W - side) / 2)),
    from exact integer sums."""
    total = np.zeros((side, side, 3), np.int64)
    for a in images:
        y, x = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        total += a[y : y + side, x : x + side]
    return total / len(images)


def check_against(rec: dict, ref: dict, images: int) -> None:
    assert rec["images"] == images and rec["pixels"] == ref["pixels"]
    assert rec["pixel_sum"] == ref["s1"].tolist() and rec["pixel_product_sum"] == ref["s2"].tolist()
    for k in ("mean", "std", "cov", "eigval"):
        np.testing.assert_allclose(np.array(rec[k]), ref[k], rtol=RTOL, err_msg=k)
    dots = np.abs(np.sum(np.array(rec["eigvec"]) * ref["eigvec"], axis=0))  # |<v_j, v_ref_j>| = 1 up to sign
    np.testing.assert_allclose(dots, 1, rtol=RTOL)


@pytest.fixture(scope="module")
def full_ref(prepared):
    split = open_split(prepared)
    images = dali_decode(selected_blobs(select(split)))
    return {**reference(images), "mean_image": central_mean(images)}


def test_full_pass_matches_numpy(prepared, full_ref):
    split = open_split(prepared)
    rec = compute_stats(prepared, batch_size=5, threads=2)  # 42 images: the last batch wraps around the epoch
    check_against(rec, full_ref, split.images)
    assert rec["scale"] == 255 and rec["source"]["kind"] == "shards" and rec["source"]["max_images"] is None
    assert np.array_equal(rec["mean_image"], full_ref["mean_image"])  # prepared: already shorter side 256


def test_sampled_pass_is_the_reported_sample(prepared):
    split = open_split(prepared)
    sel = select(split, 13, seed=1)
    blobs = selected_blobs(sel)
    assert sel.images == len(blobs) == 13 and len(set(blobs)) == 13
    rec = compute_stats(prepared, max_images=13, seed=1, batch_size=4, threads=2)
    check_against(rec, reference(dali_decode(blobs)), 13)
    again = compute_stats(prepared, max_images=13, seed=1, batch_size=7, threads=1)
    other = compute_stats(prepared, max_images=13, seed=2, batch_size=4, threads=2)
    assert again["pixel_product_sum"] == rec["pixel_product_sum"] and again["eigvec"] == rec["eigvec"]
    assert other["images"] == 13 and other["pixel_product_sum"] != rec["pixel_product_sum"]
    assert select(split, 10**6).images == split.images  # more than there are: all of them


def test_moments_graph_matches_numpy_on_cpu(prepared, full_ref):
    """The DALI-operator sums the GPU path uses, run on the CPU."""
    m = StatsPass(select(open_split(prepared)), batch_size=8, threads=2, moments_in_pipeline=True).run()
    assert m.pixels == full_ref["pixels"] and (m.s1 == full_ref["s1"]).all() and (m.s2 == full_ref["s2"]).all()
    assert np.array_equal(m.patch / m.images, full_ref["mean_image"])


def write_tree(root, images: dict[str, list[np.ndarray]]):
    for cls, arrays in images.items():
        (root / cls).mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(root / cls / f"{cls}_{i}.png")  # lossless: decoded pixels == a
    return root


def test_known_pixels_exact(tmp_path):
    half = np.zeros((4, 6, 3), np.uint8)
    half[:, 3:] = 255  # half black, half white: mean 127.5, every covariance entry 127.5**2
    tree = write_tree(
        tmp_path / "bw", {"a": [half], "b": [np.full((5, 2, 3), 0, np.uint8), np.full((5, 2, 3), 255, np.uint8)]}
    )
    rec = compute_stats(tree, threads=1)
    assert rec["images"] == 3 and rec["pixels"] == 44
    assert rec["mean"] == [127.5] * 3 and rec["cov"] == [[127.5**2] * 3] * 3 and rec["std"] == [127.5] * 3
    np.testing.assert_allclose(rec["eigval"], [3 * 127.5**2, 0, 0], atol=1e-9)
    np.testing.assert_allclose(np.array(rec["eigvec"])[:, 0], np.full(3, 3**-0.5), rtol=1e-12)
    assert (tree / "stats.json").exists() is False  # compute_stats writes nothing

    rng = np.random.default_rng(0)  # odd sizes: full 256-pixel blocks and a padded last one
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((37, 19, 3), (1, 1, 3), (16, 16, 3), (50, 41, 3))]
    tree = write_tree(tmp_path / "rand", {"x": arrays[:2], "y": arrays[2:]})
    check_against(compute_stats(tree, batch_size=3, threads=2), reference(arrays), 4)
    sub = compute_stats(tree, max_images=2, seed=5, threads=1)
    picked = [np.asarray(Image.open(f).convert("RGB")) for f in select(open_split(tree), 2, seed=5).files]
    check_against(sub, reference(picked), 2)


def test_mean_image_of_a_raw_tree(tmp_path):
    """Raw images are resized to shorter side 256 before their central patch is taken: images already at 256
    (odd extents: the patch starts at the floor of the half) are not changed by it, constant ones stay constant."""
    rng = np.random.default_rng(1)
    noisy = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((256, 256, 3), (256, 301, 3), (259, 256, 3))]
    flat = [np.full(s, c, np.uint8) for s, c in (((100, 80, 3), (10, 200, 30)), ((600, 517, 3), (255, 0, 7)))]
    tree = write_tree(tmp_path / "t", {"a": noisy[:2] + flat[:1], "b": noisy[2:] + flat[1:]})
    files = select(open_split(tree)).files  # the order DALI reads them in does not matter to a sum
    decoded = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    ref = central_mean([a if min(a.shape[:2]) == 256 else np.full((256, 256, 3), a[0, 0], np.uint8) for a in decoded])
    rec = compute_stats(tree, batch_size=2, threads=2)
    assert np.array_equal(rec["mean_image"], ref)
    check_against(rec, reference(decoded), 5)  # the per-channel sums: over the pixels as stored, not resized


def test_mean_image_file_round_trip_and_errors(tmp_path, prepared):
    rec = compute_stats(prepared, max_images=6, threads=2)
    p = write_stats(rec, tmp_path / "stats.json")
    npy = tmp_path / "stats.mean_image.npy"
    written = json.loads(p.read_text())
    assert written["mean_image_file"] == npy.name and "mean_image" not in written
    assert p.stat().st_size < 10_000 and not list(tmp_path.glob("*.tmp"))
    assert np.array_equal(load_stats(p)["mean_image"], rec["mean_image"])
    assert np.array_equal(np.load(npy), rec["mean_image"])  # a plain .npy, float64 (256, 256, 3)

    old = tmp_path / "old.json"  # written before the mean image existed: loads, without one
    old.write_text(json.dumps({k: v for k, v in written.items() if not k.startswith("mean_image_")}))
    assert load_stats(old)["mean_image"] is None
    assert same_stats(old, rec) and same_stats(p, rec)  # re-running `alexnet stats` only adds the image
    other = {**rec, "mean_image": rec["mean_image"][::-1]}
    assert not same_stats(p, other)

    npy.write_bytes(npy.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(StatsError, match="sha256 differs") as e:
        load_stats(p)
    assert "\n" not in str(e.value) and str(npy) in str(e.value)
    npy.unlink()
    with pytest.raises(StatsError, match="cannot be read"):
        load_stats(p)


def test_constant_image(tmp_path):
    tree = write_tree(tmp_path / "c", {"a": [np.full((3, 5, 3), (10, 200, 30), np.uint8)]})
    rec = compute_stats(tree, threads=1)
    assert rec["mean"] == [10, 200, 30] and rec["cov"] == [[0.0] * 3] * 3 and rec["eigval"] == [0.0] * 3
    assert rec["eigvec"] == np.eye(3).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_eigen_properties(seed):
    a = np.random.default_rng(seed).normal(size=(3, 3)) * 40
    cov = a @ a.T
    w, v = eigen(cov)
    np.testing.assert_allclose(cov @ v, v * w, atol=1e-9 * w[0])  # cov v_j = w_j v_j, column by column
    assert (np.diff(w) <= 0).all() and (w >= 0).all()
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-12)
    assert (v[np.abs(v).argmax(0), range(3)] > 0).all()  # sign convention
    flipped = v * np.array([-1, 1, -1])  # the same eigenvectors with other signs
    _, v2 = eigen(flipped @ np.diag(w) @ flipped.T)
    np.testing.assert_allclose(v2, v, atol=1e-9)


def test_load_stats_round_trip_and_errors(tmp_path, prepared):
    rec = compute_stats(prepared, max_images=6, threads=2)
    p = write_stats(rec, tmp_path / "sub" / "stats.json")
    got = load_stats(p)
    assert isinstance(got["mean"], np.ndarray) and got["eigvec"].shape == (3, 3) and got["eigval"].shape == (3,)
    np.testing.assert_array_equal(got["eigvec"], np.array(rec["eigvec"]))
    assert got["images"] == 6 and got["source"] == rec["source"]

    def broken(**change):
        bad = {**{k: v for k, v in rec.items() if k != "mean_image"}, **change}
        for k, v in change.items():
            if v is None:
                del bad[k]
        q = tmp_path / "bad.json"
        q.write_text(json.dumps(bad))
        with pytest.raises(StatsError) as e:
            load_stats(q)
        assert "\n" not in str(e.value) and str(q) in str(e.value)
        return str(e.value)

    assert "eigvec" in broken(eigvec=None)
    assert "shape" in broken(mean=[1, 2]) and "shape" in broken(cov=[[1, 2, 3], [1, 2]])
    assert "non-finite" in broken(cov=[[float("nan")] * 3] * 3)
    assert "scale" in broken(scale=1.0)
    assert "descending" in broken(eigval=rec["eigval"][::-1])
    assert "orthonormal" in broken(eigvec=[[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(StatsError, match="JSON"):
        load_stats(tmp_path / "bad.json")
    with pytest.raises(StatsError, match="not found"):
        load_stats(tmp_path / "none.json")
    assert issubclass(StatsError, DataError)


def test_unreadable_raw_file_names_it(synth_tree):
    odd = json.loads((synth_tree / "synth.json").read_text())["oddities"]
    with pytest.raises(StatsError) as e:
        compute_stats(synth_tree, threads=2)
    assert "\n" not in str(e.value)
    assert any(str(synth_tree / odd[k]) in str(e.value) for k in ("truncated", "empty"))


def test_cli(prepared, tmp_path):
    out = tmp_path / "s.json"
    r = run_cli("stats", prepared, "--out", out, "--max-images", 9, "--seed", 3, "--threads", 2, "--device", "cpu")
    assert r.stdout.count("\n") == 1 and str(out) in r.stdout and "9 images" in r.stdout
    assert "\r" not in r.stderr and "stats: 100% 9/9 " in r.stderr  # a log, not a terminal: plain lines
    rec = load_stats(out)
    assert rec["images"] == 9 and rec["source"]["seed"] == 3 and rec["source"]["device"] == "cpu"


def test_cli_bad_input(tmp_path):
    tree = write_tree(tmp_path / "ok", {"a": [np.zeros((2, 2, 3), np.uint8)]})
    (tmp_path / "empty" / "n01").mkdir(parents=True)
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("not images")
    for d, why in (
        (tmp_path / "missing", "no such directory"),
        (tmp_path / "empty", "no .JPEG"),
        (tmp_path / "random", "neither a prepare output"),
    ):
        r = run_cli("stats", d, check=False)
        assert r.returncode != 0 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
        assert why in r.stderr
    with pytest.raises(StatsError, match="max-images"):
        compute_stats(tmp_path, max_images=0)
    with pytest.raises(StatsError, match="threads"):
        StatsPass(select(open_split(tree)), threads=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pass_matches_numpy(prepared):
    """The GPU decoders may differ from the CPU one and from each other (the mixed decoder hands `hw_decoder_load`
    of each batch to the hardware decoder, the rest to CUDA nvJPEG), so the reference pixels come from the pass's
    own reader + decoder pipeline with the same batch size, summed with numpy."""
    from alexdata.stats import build_pipeline

    split = open_split(prepared)
    sel = select(split)
    pipe = build_pipeline(sel, device="gpu", batch_size=5, outputs="images")
    images = []
    while len(images) < sel.images:
        (batch,) = pipe.run()
        images += [np.array(x) for x in batch.as_cpu()]
    ref = reference(images[: sel.images])  # the reader wraps around to fill the last batch
    rec = compute_stats(prepared, device="gpu", batch_size=5)
    check_against(rec, ref, split.images)
    assert np.array_equal(rec["mean_image"], central_mean(images[: sel.images]))  # summed on the GPU


def test_sum_images_exact():
    """Block sums stay exact at the extremes: every pixel 255 (the float32 bound) and odd sizes."""
    from alexdata.stats import sum_images

    rng = np.random.default_rng(3)
    images = [
        np.full((700, 900, 3), 255, np.uint8),
        rng.integers(0, 256, (257, 3, 3), dtype=np.uint8),
        rng.integers(250, 256, (1, 255, 3), dtype=np.uint8),
    ]
    px, s1, s2 = sum_images(images)
    ref = reference(images)
    assert px == ref["pixels"] and (s1 == ref["s1"]).all() and (s2 == ref["s2"]).all()


def test_statistics_of_another_data_set_are_named_and_a_copy_of_the_same_is_not(data, tmp_path, capsys):
    from alexdata.statsfile import other_data_notice
    from alexmodel.config import DataConfig
    from alexmodel.resume import run_stats

    images = open_split(data, "train").images
    path = data / "stats.json"
    rec = json.loads(path.read_text())
    assert rec["images"] == images and other_data_notice(path, images) is None
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps({**rec, "source": {**rec["source"], "data": "/elsewhere/in256"}}))
    assert other_data_notice(copy, images) is None  # the same images copied to another disk: nothing to say
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**rec, "images": 1281167, "source": {**rec["source"], "data": "/data/in256"}}))
    assert other_data_notice(other, images) == (
        f"train: {other} holds statistics of 1281167 images of /data/in256, but this train split has {images}: "
        f"statistics of another data set? `alexnet stats DATA --force` computes this one's"
    )
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({**rec, "images": 7, "source": {**rec["source"], "max_images": 7}}))
    assert other_data_notice(sample, images) is None  # a --max-images sample of this split
    sample.write_text(json.dumps({**rec, "images": 7, "source": {**rec["source"], "max_images": 100000}}))
    assert "(a sample of 100000 expected)" in other_data_notice(sample, images)
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"mean": rec["mean"], "std": rec["std"]}))
    assert other_data_notice(hand, images) is None  # says nothing about its images: nothing to compare

    for npy in data.glob("stats.*.npy"):  # the mean image the record names, beside it
        (tmp_path / npy.name).write_bytes(npy.read_bytes())
    run_stats(DataConfig(str(data), stats=str(other)), None, 0, images)  # what a run prints
    assert "holds statistics of 1281167 images" in capsys.readouterr().err
    run_stats(DataConfig(str(data)), None, 0, images)  # DATA/stats.json, this data's own
    assert capsys.readouterr().err == ""
