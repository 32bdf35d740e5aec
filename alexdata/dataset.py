"""Finding the data a reader needs: the shards of a `prepare` output (alexdata/shards.py), or the files of a raw
class-folder tree.

Both give a `Split` (pipelines/config.py): what DALI's readers take (`fn.readers.webdataset` paths + index_paths,
or `fn.readers.file` files + labels), the class names and the image count."""

from __future__ import annotations

import os
from pathlib import Path

from alexdata.errors import DataError

# Moved to alexdata/shards.py; importable from here as before.
from alexdata.shards import (  # noqa: F401
    MANIFEST,
    is_unfinished,
    load_manifest,
    open_shards,
    quick_problems,
    shard_files,
    unfinished_prepare,
)
from pipelines.config import Split

IMAGE_EXTS = (".jpeg", ".jpg", ".png")


def open_split(data: str | os.PathLike, split: str = "train") -> Split:
    """The `split` ("train" or "val") of DATA: a prepare output (manifest.json) or a tree DATA/<split>/<wnid>/*
    (for "train", DATA itself may be the class-folder tree; labels always follow the training classes).
    Raises DataError on anything else."""
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: no such directory")
    if (data / MANIFEST).is_file():
        return open_shards(data, split)
    if is_unfinished(data):
        raise DataError(unfinished_prepare(data))
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
