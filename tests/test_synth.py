import csv
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import ROOT, SYNTH, env_with_path, limit
from PIL import Image

from alexdata.synth import SynthConfig, image_size, make_synth, render, wnid


def test_layout_and_labels(synth_tree):
    wnids = [wnid(k) for k in range(SYNTH.classes)]
    assert sorted(p.name for p in (synth_tree / "train").iterdir()) == wnids
    n_train = sum(1 for _ in (synth_tree / "train").rglob("*.JPEG"))
    assert n_train == SYNTH.classes * SYNTH.train_per_class  # the five planted oddities counted in
    val = sorted(p.name for p in (synth_tree / "val").iterdir())
    assert val == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, SYNTH.classes * SYNTH.val_per_class + 1)]
    with open(synth_tree / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["ImageId"] for r in rows] == [v[:-5] for v in val]
    labels = [r["PredictionString"].split()[0] for r in rows]
    assert sorted(labels) == sorted(wnids * SYNTH.val_per_class)


def test_oddities_are_what_they_claim(synth_tree):
    odd = json.loads((synth_tree / "synth.json").read_text())["oddities"]
    assert Image.open(synth_tree / odd["cmyk"]).mode == "CMYK"
    assert Image.open(synth_tree / odd["grayscale"]).mode == "L"
    assert Image.open(synth_tree / odd["png"]).format == "PNG"
    assert (synth_tree / odd["empty"]).stat().st_size == 0
    with pytest.raises(OSError, match="truncated"):
        Image.open(synth_tree / odd["truncated"]).load()


def test_sizes_and_file_sizes_are_imagenet_like():
    drawn = np.array([image_size(np.random.default_rng(i)) for i in range(2000)])
    short, long = drawn.min(1), drawn.max(1)
    assert 0.6 < np.mean((long == 500) & (short >= 333)) < 0.95  # most near 500x375
    assert np.mean(long >= 2000) > 0.01 and np.mean(short < 256) > 0.03
    im = render(3, 10, np.random.default_rng(1), size=(500, 375))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    assert 60_000 < len(buf.getvalue()) < 200_000  # ~100 KB, like a real 500x375 ImageNet JPEG


def test_classes_differ_in_colour():
    """The learnable signal: mean hue separates classes far beyond the within-class spread."""
    means = [
        [
            np.asarray(render(k, 4, np.random.default_rng([k, i]), size=(64, 48)), np.float64).mean((0, 1))
            for i in range(6)
        ]
        for k in range(4)
    ]
    means = np.array(means)  # (class, image, rgb)
    centroid = means.mean(1)
    within = np.linalg.norm(means - centroid[:, None], axis=2).max()
    between = min(np.linalg.norm(centroid[a] - centroid[b]) for a in range(4) for b in range(a + 1, 4))
    assert between > within


def test_archives_layout(tmp_path):
    make_synth(
        tmp_path,
        SynthConfig(classes=2, train_per_class=4, val_per_class=2, layout="archives"),
        workers=1,
        progress=False,
    )
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar") as outer:
        names = outer.getnames()
        assert names == [f"{wnid(0)}.tar", f"{wnid(1)}.tar"]
        inner = tarfile.open(fileobj=outer.extractfile(names[0]))
        assert all(n.startswith(wnid(0) + "_") and n.endswith(".JPEG") for n in inner.getnames())
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar") as tf:
        assert len(tf.getnames()) == 4
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz") as tf:
        assert sorted(tf.getnames()) == [
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "ILSVRC2012_devkit_t12/data/meta.mat",
        ]
        truth = tf.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read().split()
    assert sorted(map(int, truth)) == [1, 1, 2, 2]  # two val images per class, IDs 1..2
    assert not (tmp_path / "train").exists() and not (tmp_path / "LOC_val_solution.csv").exists()


def test_bad_config():
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(classes=0)


def test_train_per_class_counts_the_planted_files_in(tmp_path):
    make_synth(tmp_path / "s", SynthConfig(classes=2, train_per_class=4, val_per_class=0), workers=2, progress=False)
    per_class = {p.name: len(list(p.iterdir())) for p in (tmp_path / "s" / "train").iterdir()}
    assert per_class == {wnid(0): 4, wnid(1): 4}
    with pytest.raises(ValueError, match="--no-oddities"):
        SynthConfig(classes=1, train_per_class=5)  # five planted files would leave no good image
    r = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "synth", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env_with_path(ROOT),
        timeout=limit(300),
    )
    assert r.returncode == 1 and "is not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
