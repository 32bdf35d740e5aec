"""alexdata.textures: throughput data written directly in prepare's format, read back by every reader of it."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from alexdata.errors import ConfigError
from alexdata.loader import Loader
from alexdata.shards import load_manifest
from alexdata.statsfile import load_stats
from alexdata.textures import IMAGENET_MEAN_01, make_throughput_data
from alexdata.verify import verify
from alexmodel.tools.check import SIZES
from alexmodel.tools.check_stages import textures_done


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    out = tmp_path_factory.mktemp("tex") / "data"
    make_throughput_data(out, classes=3, train_images=50, val_images=7, distinct=8, shard_size=16, seed=1)
    return out


def test_it_is_a_whole_prepare_output_every_reader_takes(textures):
    man = load_manifest(textures)
    assert (man["train"]["images"], man["val"]["images"], len(man["classes"])) == (50, 7, 3)
    assert [s["images"] for s in man["train"]["shards"]] == [16, 16, 16, 2]
    assert verify(textures)["problems"] == []  # sizes and sha256 as manifest.json records them
    st = load_stats(textures / "stats.json")
    np.testing.assert_allclose(st["mean"], np.array(IMAGENET_MEAN_01) * 255)
    np.testing.assert_allclose(st["eigvec"].T @ st["eigvec"], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(st["eigvec"] @ np.diag(st["eigval"]) @ st["eigvec"].T, st["cov"], atol=1e-9)
    loader = Loader(textures, batch_size=8, aug=dict(central_square=True, mean="pixel"), threads=1)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 227, 227) and bool(x.isfinite().all()) and set(y.tolist()) <= {0, 1, 2}


def test_samples_are_imagenet_sized_jpegs_labelled_by_their_texture(textures):
    """Shorter side 256, longer 256-384; the same texture always carries the same label (texture index % 3)."""
    label_of = {}
    with tarfile.open(textures / "train-000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    for name, data in members.items():
        if name.endswith(".jpg"):
            img = Image.open(io.BytesIO(data))
            assert img.format == "JPEG" and min(img.size) == 256 and 256 <= max(img.size) <= 384
            label = int(members[name[:-4] + ".cls"])
            assert label_of.setdefault(data, label) == label
    assert len(label_of) > 1


def test_the_check_reuses_it_and_refuses_bad_counts(textures, tmp_path):
    """The check's data stage takes throughput data of its size as finished (written ahead in the background of
    a device call), and no other."""
    size = SIZES["tiny"]
    assert not textures_done(textures, size)  # other counts than the tiny check's
    mine = tmp_path / "mine"
    n_train, n_val = size.classes * size.train_per_class, size.classes * size.val_per_class
    make_throughput_data(mine, classes=size.classes, train_images=n_train, val_images=n_val, distinct=8)
    assert textures_done(mine, size)
    with pytest.raises(ConfigError, match="distinct=2"):
        make_throughput_data(tmp_path / "d", classes=3, distinct=2)
    with pytest.raises(ConfigError, match="already holds"):
        make_throughput_data(textures)
