"""Finding the data a reader needs: the shards of a `prepare` output, or the files of a raw class-folder tree.

Both give a `Split`: what DALI's readers take (`fn.readers.webdataset` paths + index_paths, or
`fn.readers.file` files + labels), the class names and the image count."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from alexdata.errors import DataError

IMAGE_EXTS = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class Split:
    kind: str  # "shards" (a prepare output: shorter side already 256) or "files" (raw class folders)
    classes: tuple[str, ...]
    images: int
    tars: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    shard_images: tuple[int, ...] = ()  # images per shard, in `tars` order
    files: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    shorter_side: int | None = None  # the stored images' shorter side, when known (prepare output)
    max_hw: tuple[int, int] | None = None  # (height, width) px: the tallest and the widest image, when recorded

    @property
    def prepared(self) -> bool:
        return self.kind == "shards"


def load_manifest(data: str | os.PathLike) -> dict:
    p = Path(data) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: not found (is {data} a `alexnet prepare` output?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None


def unfinished_prepare(data: Path) -> str:
    """One line for a prepare output without manifest.json: an interrupted run, or --part jobs not all done."""
    have: dict[str, list[int]] = {}
    for p in data.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        split, n = p.stem.rsplit("-", 1)
        have.setdefault(split, []).append(int(n))
    gaps = [f"{s}-{i:06d}" for s, ns in sorted(have.items()) for i in range(max(ns)) if i not in set(ns)]
    missing = (f"; missing at least {', '.join(gaps[:4])}{' ...' if len(gaps) > 4 else ''}" if gaps else "")
    n = sum(map(len, have.values()))
    return (f"{data}: prepare has not finished ({n} shards written, no manifest.json yet{missing}); run the same "
            f"`alexnet prepare SRC {data}` again (every --part of it) to finish")


def shard_files(data: Path, shard: dict) -> list[tuple[Path, int | None, str | None]]:
    """(path, size, sha256) of a manifest shard entry's tar and index; size and hash None in an old manifest."""
    tar = data / shard["file"]
    return [(tar, shard.get("bytes"), shard.get("sha256")),
            (tar.with_suffix(".idx"), shard.get("idx_bytes"), shard.get("idx_sha256"))]


def quick_problems(data: Path, shards: list[dict]) -> list[tuple[Path, str]]:
    """(file, one line) per shard file that is missing or has another size than manifest.json records (stat calls
    only)."""
    bad = []
    for shard in shards:
        for path, size, _ in shard_files(data, shard):
            try:
                got = path.stat().st_size
            except FileNotFoundError:
                bad.append((path, f"{path}: missing (listed in manifest.json)"))
                continue
            if size is not None and got != size:
                bad.append((path, f"{path}: {got} bytes, manifest.json says {size} (a partial copy?)"))
    return bad


def open_split(data: str | os.PathLike, split: str = "train") -> Split:
    """The `split` ("train" or "val") of DATA: a prepare output (manifest.json) or a tree DATA/<split>/<wnid>/*
    (for "train", DATA itself may be the class-folder tree; labels always follow the training classes).
    Raises DataError on anything else."""
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: no such directory")
    if (data / "manifest.json").is_file():
        man = load_manifest(data)
        try:
            shards = man[split]["shards"]
            classes = tuple(man["classes"])
            side = int(man["params"]["shorter_side"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{data / 'manifest.json'}: no '{split}' split or not a prepare manifest") from None
        tars = tuple(str(data / s["file"]) for s in shards)
        bad = quick_problems(data, shards)
        if bad:  # a partial copy fails here, before any step, rather than when DALI opens the shard
            raise DataError(f"{bad[0][1]}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; "
                            f"run `alexnet verify {data}`")
        if not tars:
            raise DataError(f"{data}: the '{split}' split has no images")
        largest = man[split].get("max_height"), man[split].get("max_width")  # absent in older manifests
        return Split("shards", classes, sum(s["images"] for s in shards), tars,
                     tuple(t[:-4] + ".idx" for t in tars), tuple(s["images"] for s in shards), shorter_side=side,
                     max_hw=tuple(map(int, largest)) if None not in largest else None)
    if (data / ".prepare").is_dir() or any(data.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")):
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
            raise DataError(f"{root}: images but no class folders (a flat ImageNet val/ has its labels in a separate "
                            f"file): run `alexnet prepare` on the raw data, which reads them")
        raise DataError(f"{root}: class folders hold no .JPEG/.jpg/.png files")
    return Split("files", classes, len(files), files=tuple(files), labels=tuple(labels))
