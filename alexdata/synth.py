"""A generated mini-ImageNet in the original ILSVRC-2012 layout.

Every stage (prepare, stats, pipelines, trainer) can be shown and tested on it without the real 150 GB:

    OUT/train/<wnid>/<wnid>_<n>.JPEG
    OUT/val/ILSVRC2012_val_<8 digits>.JPEG
    OUT/LOC_val_solution.csv            ImageId,PredictionString ("<wnid> x0 y0 x1 y1 ")
    OUT/synth.json                      what was generated, including the planted oddities

With `layout="archives"` it writes what ImageNet distributes instead: `ILSVRC2012_img_train.tar` (a tar of
per-class tars `<wnid>.tar`), `ILSVRC2012_img_val.tar` (flat) and the development kit
`ILSVRC2012_devkit_t12.tar.gz` with the val labels (data/ILSVRC2012_validation_ground_truth.txt: one
ILSVRC2012_ID per val image; data/meta.mat: the `synsets` table mapping IDs to WNIDs, IDs in a shuffled class
order as in the real kit, plus non-leaf synsets). The Kaggle CSV goes only with the extracted tree.

Images look like photographs to a JPEG codec: a 1/f amplitude spectrum texture (natural images' spectra fall
off roughly as 1/f, Field 1987), so file sizes and decode costs are realistic (~100 KB at 500x375, quality
90-96). Each class has its own hue and grating orientation, a signal a small network learns in minutes.
Sizes follow ImageNet's spread: most near 500x375, some over 2000 px, some under 256 px.
"""

from __future__ import annotations

import colorsys
import csv
import gzip
import io
import json
import multiprocessing as mp
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from alexdata.errors import ConfigError
from alexdata.host import cores, progress_bar
from alexdata.shards import add_to_tar

LAYOUTS = ("tree", "archives", "kaggle", "hf")
HF_TRAIN_ARCHIVES = 5  # data/train_images_{0..4}.tar.gz, as in the Hugging Face repository


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 10
    train_per_class: int = 100
    val_per_class: int = 10
    seed: int = 0
    oddities: bool = True  # plant ImageNet's known bad files (CMYK, grayscale, PNG-as-JPEG, truncated, empty)
    layout: str = "tree"  # one of LAYOUTS: extracted folders, the distributed tars, Kaggle's or Hugging Face's
    test_images: int = 3  # unlabelled test images (kaggle and hf layouts only; prepare leaves them out)

    def __post_init__(self):
        if self.classes < 1 or self.classes > 1000:
            raise ConfigError(f"classes must be in 1..1000, got {self.classes}")
        if self.train_per_class < 1 or self.val_per_class < 0:
            raise ConfigError("train_per_class must be >= 1 and val_per_class >= 0")
        per_class = -(-len(ODDITIES) // self.classes)  # planted files in the fullest class
        if self.oddities and self.train_per_class <= per_class:
            raise ConfigError(
                f"--train-per-class {self.train_per_class} leaves no good image beside the "
                f"{len(ODDITIES)} planted bad files in {self.classes} classes: give more than "
                f"{per_class}, or --no-oddities"
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.test_images < 0:
            raise ConfigError("test_images must be >= 0")


def wnid(k: int) -> str:
    """A WordNet-id-like name for class k (real ones look like n01440764); sorted order == k."""
    return f"n{1440764 + 1000 * k:08d}"


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn to mimic ILSVRC-2012: ~80 % near 500x375 or 375x500, 8 % small, 4 % huge."""
    u = rng.random()
    if u < 0.04:  # huge camera originals, long side over 2000 px
        long, short = int(rng.integers(2000, 2600)), int(rng.integers(1300, 1900))
    elif u < 0.12:  # thumbnails with the shorter side under 256 px
        long, short = int(rng.integers(180, 330)), int(rng.integers(90, 255))
    elif u < 0.20:  # everything in between
        long, short = int(rng.integers(400, 1000)), int(rng.integers(260, 700))
    else:
        long, short = 500, int(rng.choice([333, 375, 375, 375, 400]))
    short = min(short, long)
    return (long, short) if rng.random() < 0.8 else (short, long)


def _pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 noise with a 1/f amplitude spectrum, unit std."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))) / f
    spec[0, 0] = 0.0
    x = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    return x / (x.std() + 1e-8)


def render(k: int, classes: int, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """One RGB image of class k: class hue + oriented grating + 1/f texture."""
    w, h = size or image_size(rng)
    # Draw the texture at most ~1 Mpx and upsample: huge images keep their size and decode cost cheaply.
    scale = max(1.0, (w * h / 1.0e6) ** 0.5)
    th, tw = max(8, int(h / scale)), max(8, int(w / scale))
    lum = _pink_noise(rng, th, tw)
    chroma = _pink_noise(rng, th, tw)
    hue = (k + rng.uniform(-0.25, 0.25)) / classes
    base = np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.55, 0.6), np.float32) * 255
    angle = np.pi * (k + rng.uniform(-0.2, 0.2)) / (2 * classes)  # in [0, pi/2): a mirror maps it out of the set
    period = rng.uniform(14, 28) / scale
    yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
    grating = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 6.3))
    img = (
        base[None, None, :]
        + 38 * lum[..., None]
        + 18 * grating[..., None]
        + 10 * chroma[..., None] * np.array([1.0, -0.5, -0.5], np.float32)
    )
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return im.resize((w, h), Image.Resampling.BILINEAR) if (tw, th) != (w, h) else im


def _jpeg(im: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(90, 97)))
    return buf.getvalue()


def _make_one(job: tuple[int, int, int, int, int, str]) -> bytes:
    """Encoded bytes of one image; job = (seed, classes, split_id, class, index, oddity)."""
    seed, classes, split_id, k, n, oddity = job
    rng = np.random.default_rng([seed, split_id, k, n])
    if oddity == "":
        return _jpeg(render(k, classes, rng), rng)
    im = render(k, classes, rng, size=(500, 375))
    buf = io.BytesIO()
    if oddity == "cmyk":  # 22 of ImageNet's training JPEGs are CMYK
        im.convert("CMYK").save(buf, "JPEG", quality=92)
    elif oddity == "grayscale":  # about 1 in 1000 is single-channel
        im.convert("L").save(buf, "JPEG", quality=92)
    elif oddity == "png":  # n02105855_2933.JPEG is really a PNG
        im.save(buf, "PNG")
    elif oddity == "truncated":  # a download cut short
        return _jpeg(im, rng)[:20_000]
    elif oddity == "empty":
        return b""
    else:
        raise ValueError(f"unknown oddity {oddity!r}")
    return buf.getvalue()


ODDITIES = ("cmyk", "grayscale", "png", "truncated", "empty")


def make_synth(
    out: str | os.PathLike, cfg: SynthConfig = SynthConfig(), workers: int | None = None, progress: bool = True
) -> dict:
    """Writes the mini-ImageNet under `out`; returns the description also saved as `out/synth.json`."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: synth writes into a new or empty folder (old and new files would mix)")
    out.mkdir(parents=True, exist_ok=True)
    wnids = [wnid(k) for k in range(cfg.classes)]

    # (split_id, class, n, oddity, relative path); split 0 = train, 1 = val. The planted oddities are counted in
    # --train-per-class: each takes the place of one of its class's last regular images.
    oddity_at = {}
    if cfg.oddities:
        for i, odd in enumerate(ODDITIES):
            oddity_at[(i % cfg.classes, cfg.train_per_class - 1 - i // cfg.classes)] = odd
    jobs: list[tuple[int, int, int, str, str]] = []
    odd_paths = {}
    for k, w in enumerate(wnids):
        for n in range(cfg.train_per_class):
            odd = oddity_at.get((k, n), "")
            jobs.append((0, k, n, odd, f"train/{w}/{w}_{n + 1}.JPEG"))
            if odd:
                odd_paths[odd] = f"train/{w}/{w}_{n + 1}.JPEG"
    val_order = np.random.default_rng([cfg.seed, 1]).permutation(cfg.classes * cfg.val_per_class)
    val_labels = {}
    for i, j in enumerate(val_order):
        k, n = divmod(int(j), cfg.val_per_class)
        name = f"ILSVRC2012_val_{i + 1:08d}"
        jobs.append((1, k, n, "", f"val/{name}.JPEG"))
        val_labels[name] = wnids[k]

    n_test = cfg.test_images if cfg.layout in ("kaggle", "hf") else 0
    for i in range(n_test):  # split 2: unlabelled, as ILSVRC-2012's test set is to the public
        jobs.append((2, i % cfg.classes, i, "", f"test/ILSVRC2012_test_{i + 1:08d}.JPEG"))

    payloads = ((cfg.seed, cfg.classes, s, k, n, odd) for s, k, n, odd, _ in jobs)
    with ProcessPoolExecutor(workers or cores(), mp_context=mp.get_context("fork")) as pool:
        blobs = list(
            progress_bar(
                pool.map(_make_one, payloads, chunksize=8), total=len(jobs), desc="synth", unit="img", enabled=progress
            )
        )

    sizes = [len(b) for b, j in zip(blobs, jobs) if j[3] == "" and j[0] < 2]
    if cfg.layout in ("tree", "kaggle"):
        # Kaggle's download: the tree under ILSVRC/Data/CLS-LOC/, the CSV and the synset list at the top.
        root = out / "ILSVRC" / "Data" / "CLS-LOC" if cfg.layout == "kaggle" else out
        for blob, (_, _, _, _, rel) in zip(blobs, jobs):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob)
        _write_csv(out / "LOC_val_solution.csv", val_labels)
        if cfg.layout == "kaggle":
            (out / "LOC_synset_mapping.txt").write_text("".join(f"{w} synthetic class {w}\n" for w in wnids))
    elif cfg.layout == "hf":
        _write_hf(out, wnids, jobs, blobs)
    else:
        _write_archives(out, wnids, jobs, blobs)
        write_devkit(out, wnids, val_labels, cfg.seed)

    desc = {
        "config": asdict(cfg),
        "classes": wnids,
        "train_images": cfg.classes * cfg.train_per_class,
        "val_images": len(val_labels),
        "oddities": odd_paths,
        "test_images": n_test,
        "mean_jpeg_bytes": int(np.mean(sizes)) if sizes else 0,
    }
    (out / "synth.json").write_text(json.dumps(desc, indent=1) + "\n")
    return desc


def _write_csv(path: Path, val_labels: dict[str, str]) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["ImageId", "PredictionString"])
        for name, w in val_labels.items():
            wr.writerow([name, f"{w} 0 0 100 100 "])


def _write_hf(out: Path, wnids: list[str], jobs, blobs) -> None:
    """The Hugging Face ILSVRC/imagenet-1k repository: data/train_images_{0..4}.tar.gz, val_images.tar.gz and
    test_images.tar.gz, flat members named <original stem>_<wnid>.JPEG (test images keep their plain name)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[tuple[str, bytes]]] = {}
    train_i = 0
    for blob, (s, k, _, _, rel) in zip(blobs, jobs):
        stem = Path(rel).stem
        if s == 0:  # round robin: every archive holds images of every class
            name, train_i = f"train_images_{train_i % HF_TRAIN_ARCHIVES}.tar.gz", train_i + 1
        else:
            name = "val_images.tar.gz" if s == 1 else "test_images.tar.gz"
        member = f"{stem}_{wnids[k]}.JPEG" if s < 2 else f"{stem}.JPEG"
        groups.setdefault(name, []).append((member, blob))
    for name, members in groups.items():
        with (
            open(data / name, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf,
        ):
            for member, blob in members:
                add_to_tar(tf, member, blob)


def _write_archives(out: Path, wnids: list[str], jobs, blobs) -> None:
    """ILSVRC2012_img_train.tar (a tar of per-class tars, as distributed) and ILSVRC2012_img_val.tar."""
    per_class: dict[int, list[tuple[str, bytes]]] = {k: [] for k in range(len(wnids))}
    val: list[tuple[str, bytes]] = []
    for blob, (s, k, _, _, rel) in zip(blobs, jobs):
        (per_class[k] if s == 0 else val).append((Path(rel).name, blob))
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        for k, w in enumerate(wnids):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tf:
                for name, blob in per_class[k]:
                    add_to_tar(tf, name, blob)
            add_to_tar(outer, f"{w}.tar", inner.getvalue())
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for name, blob in sorted(val):
            add_to_tar(tf, name, blob)


def devkit_ids(wnids: list[str], seed: int) -> dict[str, int]:
    """The synth devkit's ILSVRC2012_ID of each class: 1..n in a seeded shuffled order (the real kit's IDs do not
    follow sorted WNID order either, so sorting can never stand in for meta.mat)."""
    order = np.random.default_rng([seed, 2]).permutation(len(wnids))
    if len(wnids) > 1 and (order == np.arange(len(wnids))).all():
        order = np.roll(order, 1)
    return {wnids[int(j)]: i + 1 for i, j in enumerate(order)}


def write_devkit(out: Path, wnids: list[str], val_labels: dict[str, str], seed: int) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: the ground truth of the val images and meta.mat, as in the real kit."""
    import scipy.io

    ids = devkit_ids(wnids, seed)
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    rows = [(ids[w], w, f"synthetic class {w}", "", 0, np.zeros((1, 0)), 0, 0) for w in sorted(wnids, key=ids.get)]
    n = len(wnids)  # two non-leaf synsets above the classes, as the real table has (IDs after the leaves)
    rows += [
        (n + 1, "n00001740", "entity", "", 1, np.array([[n + 2]], float), 2, 0),
        (n + 2, "n00002684", "object", "", n, np.arange(1, n + 1, dtype=float)[None], 1, 0),
    ]
    table = np.empty((len(rows), 1), dtype=[(f, "O") for f in fields])
    for i, r in enumerate(rows):
        table[i, 0] = tuple(np.array([[v]], float) if isinstance(v, int) else v for v in r)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": table})
    numbers = sorted(int(name.rsplit("_", 1)[1]) for name in val_labels)
    assert numbers == list(range(1, len(numbers) + 1)), "line n of the ground truth is val image n"
    truth = "".join(f"{ids[val_labels[f'ILSVRC2012_val_{n:08d}']]}\n" for n in numbers).encode()
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as tf:
        add_to_tar(tf, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        add_to_tar(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
