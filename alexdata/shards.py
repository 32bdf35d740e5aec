"""The format `alexnet prepare` writes, written and read here only:

  train-000000.tar ...  samples <key>.jpg + <key>.cls (class index, ASCII), in a seeded shuffled order
  train-000000.idx ...  the index `fn.readers.webdataset` reads (wds2idx format v1.2)
  val-000000.tar/.idx   validation samples in key order
  manifest.json         classes, per-split counts and shards (each with its and its index's size and sha256,
                        hashed as they were written), each split's largest height and width (the GPU decoder's
                        preallocation hints), parameters, skipped inputs
  .prepare/             prepare's own records (alexdata/prepare.py); a folder with shards but no manifest.json is
                        an unfinished prepare

Tar members carry fixed metadata, so the same samples give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import tarfile
from pathlib import Path

from PIL import Image

from alexdata.errors import DataError, plural
from alexdata.files import atomic_write
from pipelines.config import Split

# 2: every shard's record and manifest entry holds its sizes, hashes and largest image; a prepare into an OUT that
# an older version started is refused by its parameters (format_version 1 -> 2), and a manifest without those
# fields by `manifest_problems`. Version-1 manifests that hold them all still read.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PREPARE_DIR = ".prepare"  # prepare's records, beside the shards
SHARD_GLOB = "*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"  # `shard_name` + ".tar"
ENTRY_KEYS = ("file", "images", "bytes", "sha256", "idx_bytes", "idx_sha256")  # a shard in manifest.json


SAFE_KEY = re.compile(r"[A-Za-z0-9_+-]{1,90}")  # every ImageNet stem; 90 + ".jpg" fits a tar header's 100 bytes


def safe_key(key: str) -> str:
    """The name a sample is stored under: its key when that is plain ASCII without dots or spaces and short enough
    for a tar header (every ImageNet file name), else the key's safe characters and a hash of it. The index
    `fn.readers.webdataset` reads splits lines at spaces and names at the first dot, and a USTAR header holds 100
    bytes of name, so a space, a newline, a dot, a long or a non-UTF-8 name cannot be stored as it is; the
    original stays in manifest.json's "renamed"."""
    if SAFE_KEY.fullmatch(key):
        return key
    raw = key.encode("utf-8", "surrogateescape")  # a non-UTF-8 file name arrives as surrogate escapes
    plain = re.sub(r"[^A-Za-z0-9_+-]+", "_", key)[:48]
    return f"{plain}-{hashlib.sha256(raw).hexdigest()[:16]}"


def printable(name: str) -> str:
    """`name` as manifest.json records it: the bytes of a non-UTF-8 file name as \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shard_name(split: str, index: int) -> str:
    """train-000000: a shard's file name without .tar or .idx."""
    return f"{split}-{index:06d}"


def index_path(tar: Path) -> Path:
    """The index of the shard `tar`, beside it."""
    return tar.with_suffix(".idx")


# ---------------------------------------------------------------- one shard


def add_to_tar(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: byte-identical re-runs
    tf.addfile(info, io.BytesIO(data))


def wds_index(tar_bytes: bytes) -> str:
    """The index DALI's `fn.readers.webdataset` takes as `index_paths` (the format of DALI's wds2idx, v1.2)."""
    samples: list[list[str]] = []
    last = None
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
        for m in tf:
            base, ext = m.name.split(".", 1)
            part = f"{ext} {m.offset_data} {m.size} {m.name}"
            if base == last:
                samples[-1].append(part)
            else:
                samples.append([part])
                last = base
    return f"v1.2 {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def read_index(idx: str | os.PathLike) -> list[dict[str, tuple[int, int]]]:
    """Per sample of a `wds_index` file, {extension: (offset, size)} of its members in the tar."""
    samples = []
    for line in Path(idx).read_text().splitlines()[1:]:
        f = line.split()
        samples.append({f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)})
    return samples


def index_problem(idx: Path, images: int, tar_bytes: int | None = None) -> str | None:
    """One line when the index `idx` is not one DALI's webdataset reader parses to `images` samples of one .jpg and
    one .cls each, each member at a 512-byte tar block and ending inside the tar (`tar_bytes`, when given), naming
    the line; else None. DALI trusts the index: a member past the tar's end made it read unmapped memory
    (SIGSEGV), so every command that opens a prepare output calls this first (`open_shards`)."""
    try:
        lines = idx.read_bytes().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        return f"{idx}: unreadable index ({type(e).__name__})"
    head = lines[0].split()
    body = [ln for ln in lines[1:] if ln]
    if head != ["v1.2", str(images)] or len(body) != images:
        return f"{idx}: index header {lines[0][:40]!r} with {len(body)} sample lines, manifest.json says {images}"
    for n, line in enumerate(body, 2):
        f = line.split(" ")
        if len(f) != 8 or sorted(f[0::4]) != ["cls", "jpg"]:
            return f"{idx}: line {n} does not list one .jpg and one .cls ({line[:60]!r}); prepare again"
        for ext, offset, size in (f[0:3], f[4:7]):
            if not (offset.isdigit() and size.isdigit()):
                return f"{idx}: line {n}: the .{ext} offset and size must be whole numbers, got {offset!r} {size!r}"
            o, z = int(offset), int(size)
            if o % 512 or z < 1 or (tar_bytes is not None and o + z > tar_bytes):
                where = f"ends at byte {o + z} of a {tar_bytes}-byte tar" if tar_bytes is not None else ""
                why = "is not at a tar block (a multiple of 512)" if o % 512 else "is empty" if z < 1 else where
                return f"{idx}: line {n}: the .{ext} member {why}; copy the shard again or prepare again"
    return None


def read_samples(tar: str | os.PathLike) -> list[tuple[int, int, int]]:
    """(offset, size) of each sample's JPEG in the shard `tar`, and its label, in stored order (from its index)."""
    out = []
    with open(tar, "rb") as fh:
        for parts in read_index(index_path(Path(tar))):
            (jo, js), (co, cs) = parts["jpg"], parts["cls"]
            out.append((jo, js, int(os.pread(fh.fileno(), cs, co))))
    return out


class ShardWriter:
    """One shard built in memory: per sample `<key>.jpg`, then `<key>.cls` holding the class index in ASCII."""

    def __init__(self):
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.USTAR_FORMAT)
        self.images, self.max_hw = 0, [0, 0]

    def add(self, key: str, jpg: bytes, label: int) -> None:
        """Adds one sample; `key` must be a `safe_key`."""
        add_to_tar(self._tar, f"{key}.jpg", jpg)
        w, h = Image.open(io.BytesIO(jpg), formats=["JPEG"]).size  # the header only
        self.max_hw = [max(self.max_hw[0], h), max(self.max_hw[1], w)]
        add_to_tar(self._tar, f"{key}.cls", str(label).encode())
        self.images += 1

    def finish(self) -> tuple[bytes, bytes, dict]:
        """(tar bytes, index bytes, what manifest.json records of them: sizes and sha256, hashed from the bytes in
        memory as they are written, so `alexnet verify` needs no second read; the largest height and width)."""
        self._tar.close()
        data = self._buf.getvalue()
        idx = wds_index(data).encode()
        return (
            data,
            idx,
            dict(
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                idx_bytes=len(idx),
                idx_sha256=hashlib.sha256(idx).hexdigest(),
                max_hw=self.max_hw,
            ),
        )


# ---------------------------------------------------------------- manifest.json


def make_manifest(
    classes: list[str],
    params: dict,
    records: list[tuple[str, dict]],
    notes: list[dict],
    class_names: list[str | None] | None = None,
) -> dict:
    """manifest.json's record from (split, shard record) pairs in shard order; a shard record holds `ENTRY_KEYS`
    and "max_hw" from `ShardWriter.finish`, with its "skipped", "upscaled", "renamed" (stored under a `safe_key`)
    and "decoder_warnings" inputs (kept with a harmless libjpeg warning). `notes`: inputs left out (those with
    "left_out": on purpose, the rest skipped). `class_names`: a human-readable name per class (None where the
    source names none), recorded when given."""
    man = {
        "format_version": FORMAT_VERSION,
        "classes": classes,
        **({"class_names": class_names} if class_names else {}),
        "params": params,
        "train": {"images": 0, "shards": []},
        "val": {"images": 0, "shards": []},
        "skipped": [n for n in notes if not n.get("left_out")],
        "upscaled": [],
        "renamed": [],
        "decoder_warnings": [],
        "left_out": [{k: n[k] for k in ("file", "reason")} for n in notes if n.get("left_out")],
    }
    largest = {"train": [0, 0], "val": [0, 0]}
    for split, rec in records:
        man["skipped"] += rec["skipped"]
        man["upscaled"] += rec["upscaled"]
        man["renamed"] += rec["renamed"]
        man["decoder_warnings"] += rec["decoder_warnings"]
        if rec["images"]:
            man[split]["images"] += rec["images"]
            man[split]["shards"].append({k: rec[k] for k in ENTRY_KEYS})
            hw, m = rec["max_hw"], largest[split]
            largest[split] = [max(m[0], hw[0]), max(m[1], hw[1])]
    for split, hw in largest.items():
        if man[split]["images"]:  # pixels; `open_shards` reads them as Split.max_hw
            man[split].update(max_height=hw[0], max_width=hw[1])
    return man


def write_manifest(out: Path, manifest: dict, tag: str = "") -> Path:
    """OUT/manifest.json, written atomically (tag: the writer's mark in the temporary name, alexdata/files.py)."""
    return atomic_write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), tag)


def load_manifest(data: str | os.PathLike, *, check: bool = True) -> dict:
    """DATA/manifest.json; DataError with one line when it is missing, not JSON, or (check) its fields are not what
    `make_manifest` writes (`manifest_problems`: a hand edit, a damaged copy), naming the first bad field."""
    p = Path(data) / MANIFEST
    try:
        man = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: not found (is {data} a `alexnet prepare` output?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    bad = manifest_problems(man) if check else []
    if bad:
        more = f" (and {len(bad) - 1} more: `alexnet verify` lists them)" if len(bad) > 1 else ""
        raise DataError(f"{p}: {bad[0]}{more}; copy it again from the prepare output, or prepare again")
    return man


def _count(x, least: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


# What a manifest.json of a prepare older than its sizes, hashes and largest image gets told
OLDER = "a manifest.json of an older prepare; run `alexnet prepare SRC OUT` again, into a new OUT"


def manifest_problems(man) -> list[str]:
    """One line per field of a loaded manifest.json that is not what `make_manifest` writes, naming it by its path
    ("train.shards[3].file"): classes a list of distinct strings, params.shorter_side a count, per split a count of
    images equal to the sum of its shards', and per shard a plain `.tar` file name (inside DATA: no folder, no
    "..", not absolute), a count of images, its tar's and index's sizes and sha256; per split the largest image.
    A manifest of an older prepare, without the sizes, hashes or largest image, is refused (OLDER)."""
    if not isinstance(man, dict):
        return [f"not a JSON object but a {type(man).__name__}"]
    bad = []
    classes = man.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        bad.append(f"classes must be a list of class names (wnids), got {_short(classes)}")
    elif len(set(classes)) < len(classes):
        twice = next(c for i, c in enumerate(classes) if c in classes[:i])
        bad.append(f"classes lists {twice!r} more than once")
    side = man.get("params", {}).get("shorter_side") if isinstance(man.get("params"), dict) else None
    if not _count(side, 1):
        bad.append(f"params.shorter_side must be a whole number of pixels, got {_short(side)}")
    for split in ("train", "val"):
        part = man.get(split)
        if part is None and split == "val":
            continue
        if not isinstance(part, dict):
            bad.append(f"{split} must be an object with images and shards, got {_short(part)}")
            continue
        shards = part.get("shards")
        if not isinstance(shards, list):
            bad.append(f"{split}.shards must be a list of shard entries, got {_short(shards)}")
            shards = []
        for i, sh in enumerate(shards):
            where = f"{split}.shards[{i}]"
            if not isinstance(sh, dict):
                bad.append(f"{where} must be an object with file and images, got {_short(sh)}")
                continue
            f = sh.get("file")
            if not (isinstance(f, str) and f.endswith(".tar") and f == Path(f).name and f not in (".tar", "..")):
                bad.append(f"{where}.file must be a .tar file name inside DATA (no folder, no '..'), got {_short(f)}")
            if not _count(sh.get("images"), 1):
                bad.append(f"{where}.images must be a whole number >= 1, got {_short(sh.get('images'))}")
            for k in ("bytes", "idx_bytes", "sha256", "idx_sha256"):
                if k not in sh:
                    bad.append(f"{where}.{k} is missing: {OLDER}")
                elif not (_count(sh[k]) if k.endswith("bytes") else isinstance(sh[k], str)):
                    bad.append(
                        f"{where}.{k} must be a {'whole number' if 'bytes' in k else 'hex string'}, got {_short(sh[k])}"
                    )
        if part.get("images") and not all(_count(part.get(k), 1) for k in ("max_height", "max_width")):
            bad.append(f"{split}.max_height and max_width (the largest image) are missing: {OLDER}")
        images = part.get("images")
        if not _count(images):
            bad.append(f"{split}.images must be a whole number, got {_short(images)}")
        elif all(isinstance(sh, dict) and _count(sh.get("images"), 1) for sh in shards):
            held = sum(sh["images"] for sh in shards)
            if images != held:
                bad.append(f"{split}.images is {images} but its shards hold {held}")
    return bad


def _short(x) -> str:
    """A value for a one-line message: its repr, cut to 40 characters."""
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def class_names(data: str | os.PathLike) -> list[str | None] | None:
    """The human-readable class names a prepare output's manifest.json records, in class order; None when it
    records none or DATA is not a prepare output (a raw tree)."""
    if not (Path(data) / MANIFEST).is_file():
        return None
    names = load_manifest(data).get("class_names")
    return list(names) if isinstance(names, list) else None


def manifest_shards(manifest: dict) -> list[dict]:
    """The shard entries of every split, train first."""
    return [s for split in ("train", "val") for s in manifest.get(split, {}).get("shards", [])]


def shard_files(data: Path, shard: dict) -> list[tuple[Path, int, str]]:
    """(path, size, sha256) of a manifest shard entry's tar and index."""
    tar = data / shard["file"]
    return [(tar, shard["bytes"], shard["sha256"]), (index_path(tar), shard["idx_bytes"], shard["idx_sha256"])]


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
            if got != size:
                bad.append((path, f"{path}: {got} bytes, manifest.json says {size} (a partial copy?)"))
    return bad


def is_unfinished(data: Path) -> bool:
    """Shards or prepare's records but no manifest.json: a prepare that has not finished."""
    return not (data / MANIFEST).is_file() and ((data / PREPARE_DIR).is_dir() or any(data.glob(SHARD_GLOB)))


def unfinished_prepare(data: Path) -> str:
    """One line for a prepare output without manifest.json: an interrupted run, or --part jobs not all done."""
    have: dict[str, list[int]] = {}
    for p in data.glob(SHARD_GLOB):
        split, n = p.stem.rsplit("-", 1)
        have.setdefault(split, []).append(int(n))
    gaps = [shard_name(s, i) for s, ns in sorted(have.items()) for i in range(max(ns)) if i not in set(ns)]
    missing = f"; missing at least {', '.join(gaps[:4])}{' ...' if len(gaps) > 4 else ''}" if gaps else ""
    n = sum(map(len, have.values()))
    return (
        f"{data}: prepare has not finished ({plural(n, 'shard')} written, no manifest.json yet{missing}); run the same "
        f"`alexnet prepare SRC {shlex.quote(str(data))}` again (every --part of it) to finish"
    )


def open_shards(data: Path, split: str) -> Split:
    """The `split` of the prepare output `data`, its shard files checked against manifest.json (stat calls only: a
    partial copy fails here, before any step, rather than when DALI opens the shard). Raises DataError."""
    man = load_manifest(data)
    try:
        shards = man[split]["shards"]
        classes = tuple(man["classes"])
        side = int(man["params"]["shorter_side"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{data / MANIFEST}: no '{split}' split or not a prepare manifest") from None
    tars = tuple(data / s["file"] for s in shards)
    bad = quick_problems(data, shards)
    if not bad:  # every index parsed before DALI sees it (`index_problem`): a bad one is a line, not a crash
        bad = [
            (t, line)
            for t, sh in zip(tars, shards)
            if (line := index_problem(index_path(t), sh["images"], t.stat().st_size))
        ]
    if bad:
        raise DataError(
            f"{bad[0][1]}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; run "
            f"`alexnet verify {shlex.quote(str(data))}`"
        )
    if not tars:
        raise DataError(f"{data}: the '{split}' split has no images")
    largest = man[split]["max_height"], man[split]["max_width"]
    return Split(
        "shards",
        classes,
        sum(s["images"] for s in shards),
        tuple(map(str, tars)),
        tuple(str(index_path(t)) for t in tars),
        tuple(s["images"] for s in shards),
        shorter_side=side,
        max_hw=tuple(map(int, largest)),
    )
