"""`alexnet verify DATA`: are a prepare output's shards the bytes `prepare` wrote? For shards copied to a node's
local disk, a cluster file system or a bucket.

manifest.json records every shard's and index's size and sha256, hashed as prepare wrote them. `--quick` checks
presence and sizes (stat calls: seconds for ImageNet's ~1,300 shards); the default also hashes every file with
all cores. Both parse every index as DALI's webdataset reader would (a hash that matches proves only that the
bytes are the ones written). First of all the manifest's own fields are checked (`manifest_problems`: classes,
counts, shard file names inside DATA), one line per bad field. The Loader makes the quick check whenever it opens a
prepare output (alexdata/shards.py)."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from alexdata.errors import DataError
from alexdata.host import cores, progress_bar
from alexdata.shards import (
    MANIFEST,
    index_path,
    index_problem,
    is_unfinished,
    load_manifest,
    manifest_problems,
    manifest_shards,
    quick_problems,
    shard_files,
    unfinished_prepare,
)

CHUNK = 1 << 22  # bytes read per call while hashing
IN_PROCESS_BYTES = 64 << 20  # below this, one process hashes: forking a pool would cost more than it saves


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(data: str | os.PathLike, *, quick: bool = False, workers: int | None = None, progress: bool = False) -> dict:
    """{"problems": [one line per bad file], "files": n, "bytes": n, "hashed": bool}."""

    data = Path(data)
    if is_unfinished(data):  # shards but no manifest.json yet: say so, as train and stats do
        raise DataError(unfinished_prepare(data))
    man = load_manifest(data, check=False)
    broken = manifest_problems(man)
    if broken:  # the manifest's own fields first: with them wrong, which files to check is not known
        where = data / MANIFEST
        return {"problems": [f"{where}: {b}" for b in broken], "files": 0, "bytes": 0, "hashed": False}
    shards = manifest_shards(man)
    files = [f for s in shards for f in shard_files(data, s)]
    found = quick_problems(data, shards)
    problems, bad = [line for _, line in found], {path for path, _ in found}
    for shard in shards:  # the indexes are small: parse each, so a hash that matches a bad index still fails
        tar = data / shard["file"]
        idx = index_path(tar)
        size = tar.stat().st_size if tar not in bad and tar.exists() else None
        if idx not in bad and (line := index_problem(idx, shard["images"], size)):
            problems.append(line)
    todo = [(p, size, h) for p, size, h in files if p not in bad] if not quick else []
    total = sum(size for _, size, _ in todo)
    if todo:
        in_process = total <= IN_PROCESS_BYTES  # a few shards: hashed here, faster than starting a pool
        pool_or_none = (
            contextlib.nullcontext()
            if in_process
            else ProcessPoolExecutor(workers or cores(), mp_context=mp.get_context("fork"))
        )
        with (
            pool_or_none as pool,
            progress_bar(total=total, unit="B", unit_scale=True, desc="verify", enabled=progress) as bar,
        ):
            paths = [str(p) for p, _, _ in todo]
            for (path, size, want), got in zip(todo, map(_sha256, paths) if in_process else pool.map(_sha256, paths)):
                if got != want:
                    problems.append(f"{path}: sha256 {got[:12]}..., manifest.json says {want[:12]}... (damaged)")
                bar.update(size)
    return {"problems": problems, "files": len(files), "bytes": total, "hashed": not quick}


def _stamp(data: Path) -> str:
    """What identifies the prepare output's files as they are now: each shard, index and manifest.json's name,
    size, modification time and inode (a copy, a rewrite or a truncation changes one of them), hashed."""
    h = hashlib.sha256()
    names = [MANIFEST] + [p.name for s in manifest_shards(load_manifest(data)) for p, _, _ in shard_files(data, s)]
    for name in sorted(names):
        st = (data / name).stat()
        h.update(f"{name} {st.st_size} {st.st_mtime_ns} {st.st_ino}\n".encode())
    return h.hexdigest()


def _stamp_path(data: Path, what: str = "shards") -> Path:
    """Where `verify_once` (what="shards") and `check_raw_once` (what: a raw tree's split) remember a checked data
    directory: the user's cache (XDG_CACHE_HOME, else ~/.cache), not DATA, which may be read-only or shared."""
    import socket

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = f"{socket.gethostname()}:{data.resolve()}" + ("" if what == "shards" else f":{what}")
    key = hashlib.sha256(name.encode()).hexdigest()[:24]  # a home shared by nodes with node-local copies: a
    return base / "alexnet" / "verified" / f"{key}.json"  # stamp per node


def _seen(where: Path, stamp: str) -> bool:
    import json

    try:
        return json.loads(where.read_text()).get("stamp") == stamp
    except (OSError, ValueError, AttributeError):
        return False


def _remember(where: Path, data: Path, stamp: str) -> None:
    """A stamp that cannot be written (a read-only home) only means the next use checks again."""
    import json

    from alexdata.files import atomic_write

    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(where, json.dumps({"data": str(data.resolve()), "stamp": stamp}) + "\n")
    except OSError:
        pass


def _files_stamp(files) -> str:
    """Every file's path, size, modification time and inode, hashed: what a rewrite, copy or truncation changes."""
    h = hashlib.sha256()
    for path in files:
        st = os.stat(path)
        h.update(f"{path} {st.st_size} {st.st_mtime_ns} {st.st_ino}\n".encode())
    return h.hexdigest()


def check_raw_once(
    data: str | os.PathLike, split, name: str, *, threads: int | None = None, rank: int = 0, world: int = 1, gather
) -> None:
    """A raw tree's `split` (named `name`) checked file by file before DALI reads it (`dataset.image_problems`):
    by name and first and last bytes every time, and the first time (and whenever a file changed since) strictly,
    every JPEG entropy-decoded for libjpeg's warnings of damaged data that DALI would decode as grey. Ranks check
    their shares; gather(list) -> the lists of every rank. DataError with one line on a bad file."""
    from alexdata.dataset import check_images, image_problems

    if split.prepared:
        return
    data = Path(data)
    stamp, where = _files_stamp(split.files), _stamp_path(data, f"raw-{name}")
    strict = not _seen(where, stamp)
    if strict and rank == 0:
        import sys

        print(
            f"checking the {split.images} images of {data} ({name}) for damage, once: remembered until a file "
            f"changes (`alexnet prepare` checks them once for good)",
            file=sys.stderr,
        )
    mine = image_problems(split, threads, rank, world, strict=strict)
    check_images(data, split, problems=[p for ps in gather(mine) for p in ps])
    if strict and rank == 0:
        _remember(where, data, stamp)


def verify_once(data: str | os.PathLike, *, workers: int | None = None, progress: bool = False) -> bool:
    """The full `verify` (sha256 of every shard, with all cores) of a prepare output the first time it is used,
    and again whenever any of its files changed since (`_stamp`); later uses skip it. DataError with one line
    naming the first bad file (and how many there are). Returns whether it hashed. A stamp that cannot be
    written (a read-only home) only means the next use hashes again."""
    data = Path(data)
    stamp, where = _stamp(data), _stamp_path(data)
    if _seen(where, stamp):
        return False
    r = verify(data, workers=workers, progress=progress)
    if r["problems"]:
        more = f" (and {len(r['problems']) - 1} more)" if len(r["problems"]) > 1 else ""
        raise DataError(
            f"{r['problems'][0]}{more}: the shards are not the bytes prepare wrote; copy them again (or prepare "
            f"again), or train anyway with --skip-verify"
        )
    _remember(where, data, stamp)
    return True
