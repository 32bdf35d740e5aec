"""Finding the data a reader needs: the shards of a `prepare` output (alexdata/shards.py), or the files of a raw
class-folder tree.

Both give a `Split` (pipelines/config.py): what DALI's readers take (`fn.readers.webdataset` paths + index_paths,
or `fn.readers.file` files + labels), the class names and the image count."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from alexdata.errors import ConfigError, DataError
from alexdata.host import cores
from alexdata.jpegcheck import is_damaged, jpeg_warning
from alexdata.shards import (
    MANIFEST,
    is_unfinished,
    load_manifest,
    manifest_shards,
    open_shards,
    unfinished_prepare,
)
from alexdata.sources import layout
from pipelines.config import Split

IMAGE_EXTS = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")  # the splits `prepare` writes and a raw tree holds
JPEG_SOI, JPEG_EOI, PNG_SIGNATURE = b"\xff\xd8", b"\xff\xd9", b"\x89PNG\r\n\x1a\n"
EOI_WINDOW = 4096  # bytes at a JPEG's end searched for its end-of-image marker: some files carry padding after it
DOWNLOADS = {"kaggle": "Kaggle", "hf": "Hugging Face", "archives": "image-net.org archives"}  # sources.layout names


def open_split(data: str | os.PathLike, split: str = "train") -> Split:
    """The `split` ("train" or "val") of DATA: a prepare output (manifest.json) or a tree DATA/<split>/<wnid>/*
    (for "train", DATA itself may be the class-folder tree; labels always follow the training classes).
    Raises DataError on anything else, ConfigError on a split name not in SPLITS."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: no such directory")
    if (data / MANIFEST).is_file():
        return open_shards(data, split)
    if is_unfinished(data):
        raise DataError(unfinished_prepare(data))
    kind = layout(data)[0]
    if kind in DOWNLOADS and not (data / "train").is_dir():  # its train/ is no class-folder tree of DATA
        raise DataError(
            f"{data}: this looks like a raw {DOWNLOADS[kind]} download: run "
            f"`alexnet prepare {shlex.quote(str(data))} OUT` first, then use OUT"
        )
    if (data / split).is_dir():
        root = data / split
    elif split == "train":
        root = data  # DATA itself is the class-folder tree of the training images
    else:
        raise DataError(f"{data}: no {split}/ folder (a raw tree needs DATA/train/<class>/ and DATA/{split}/<class>/)")
    train_root = data / "train" if (data / "train").is_dir() else data
    classes = tuple(sorted(p.name for p in train_root.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{data}: neither a prepare output (no manifest.json) nor a class-folder tree")
    index = {c: i for i, c in enumerate(classes)}  # every split takes its labels from the training classes
    files, labels = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name not in index:
            raise DataError(f"{d}: class folder {d.name!r} is not among the training classes")
        for p in sorted(d.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                files.append(str(p))
                labels.append(index[d.name])
    if not files:
        if any(p.is_file() and p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()):
            raise DataError(
                f"{root}: images but no class folders (a flat ImageNet val/ has its labels in a separate "
                f"file): run `alexnet prepare` on the raw data, which reads them"
            )
        raise DataError(f"{root}: class folders hold no .JPEG/.jpg/.png files")
    return Split("files", classes, len(files), files=tuple(files), labels=tuple(labels))


def has_split(data: str | os.PathLike, split: str) -> bool:
    """Whether DATA holds any `split` at all: images of it in a prepare output's manifest, or a DATA/<split>/
    folder (for "train", DATA itself may be the class-folder tree). `open_split` says what is wrong with one."""
    data = Path(data)
    if (data / MANIFEST).is_file():
        part = load_manifest(data).get(split)
        return isinstance(part, dict) and bool(part.get("images"))
    return (data / split).is_dir() or (split == "train" and data.is_dir())


def image_problem(path: str | os.PathLike, strict: bool = False) -> str | None:
    """Why the file at `path` is not a whole JPEG or PNG, None when it is: every door that reads raw images (train
    and evaluate on a raw tree, stats, predict) asks here. By its name and its first and last bytes (a few bytes
    read): a name that is not UTF-8 (DALI takes no other), empty, another format, a JPEG without its end-of-image
    marker (cut short). strict: also libjpeg's warnings of missing or corrupt data, which DALI and PIL decode as
    grey without an error (a download cut short that still ends in a marker, a header claiming more pixels than the
    file holds: alexdata/jpegcheck.py, the check prepare makes); that reads and entropy-decodes the whole file."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return "a file name that is not UTF-8 (DALI reads UTF-8 names only): rename the file"
    try:
        with open(path, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
            if not head:
                return "empty file"
            if head.startswith(PNG_SIGNATURE):
                return None
            if not head.startswith(JPEG_SOI):
                return "neither a JPEG nor a PNG file (by its first bytes)"
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - EOI_WINDOW))
            if JPEG_EOI not in f.read():
                return "a JPEG cut short (no end-of-image marker)"
            if strict:
                f.seek(0)
                warning = jpeg_warning(f.read())
                if is_damaged(warning):
                    return f"truncated or corrupt JPEG data (libjpeg: {warning})"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None


def image_problems(
    split: Split, threads: int | None = None, rank: int = 0, world: int = 1, *, strict: bool = False
) -> list[tuple[int, str, str]]:
    """(index, path, why) of the files of a raw-tree `split` that are not whole images (`image_problem`), of the
    share of rank `rank` of `world` (every world-th file from `rank`): ranks check their shares and gather the
    verdicts, instead of each reading every file. On `threads` threads (default: all cores; simplejpeg decodes
    without the GIL). A prepare output's images were checked by `prepare`: none."""
    if split.prepared:
        return []
    from concurrent.futures import ThreadPoolExecutor

    files = split.files[rank::world]
    with ThreadPoolExecutor(threads or cores()) as pool:
        whys = pool.map(lambda p: image_problem(p, strict), files)
        return [(rank + i * world, p, why) for i, (p, why) in enumerate(zip(files, whys)) if why]


def check_images(
    data: str | os.PathLike,
    split: Split,
    threads: int | None = None,
    problems: list | None = None,
    *,
    strict: bool = False,
) -> None:
    """DataError with one line when files of a raw-tree `split` are not whole images, before any of them reaches
    DALI, which would stop at the first mid-epoch (or decode a damaged one as grey: `strict`). problems:
    `image_problems` already gathered from every rank (None: check every file here)."""
    bad = sorted(image_problems(split, threads, strict=strict) if problems is None else problems)
    if bad:
        (_, first, why), more = bad[0], f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DataError(
            f"{first}: {why}{more}: {len(bad)} of {split.images} files of {data} are not whole JPEG/PNG images and "
            f"would stop training mid-epoch or train on grey; run `alexnet prepare {shlex.quote(str(data))} OUT` "
            f"(it leaves such files out and lists them) and use OUT, or remove them"
        )


def fingerprint(data: str | os.PathLike, split: Split) -> str:
    """16 hex digits that change with the samples of `split` or their order in its files (data prepared again with
    another --shard-size or --seed, files added or removed), not when the same files move (shards copied to a node's
    disk): each shard's file name, image count and sha256 (manifest.json's), or each raw file's class folder, name
    and label. A resume compares them: a loader position inside an epoch only fits the files it was taken on."""
    import hashlib
    import json

    if split.kind == "shards":
        sha = {s["file"]: s["sha256"] for s in manifest_shards(load_manifest(data))}
        rows = [[Path(t).name, n, sha[Path(t).name]] for t, n in zip(split.tars, split.shard_images)]
    else:
        rows = [[*Path(f).parts[-2:], label] for f, label in zip(split.files, split.labels)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
