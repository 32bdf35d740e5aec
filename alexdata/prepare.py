"""`alexnet prepare`: raw ILSVRC-2012 -> shorter-side-256 JPEGs in webdataset tar shards and manifest.json.

The inputs, in any of the ways ImageNet is distributed, are found by alexdata/sources.py; the output's format is
alexdata/shards.py's. This module runs the job: it plans the shards, resizes every image with all cores and
writes each shard, and the manifest once every shard is there. OUT/.prepare/ holds its per-shard records, which
make the run resumable and the manifest reproducible, and the seek indexes of .tar.gz inputs (gzindex/).

Each shard is a pure function of (input listing, parameters, shard index), written under a temporary name and
renamed, so an interrupted run resumes by writing only the missing shards, byte-identical to an uninterrupted
run, and `--part i/n` lets n machines write disjoint sets of shards into one OUT. Before writing, prepare
estimates the output's size and stops when OUT's file system clearly lacks the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from alexdata.errors import PrepareError, disk_full, plural
from alexdata.files import atomic_write, lock_dir, temporary
from alexdata.host import cores, progress_bar
from alexdata.jpegcheck import DamagedJPEG, is_damaged, jpeg_warning
from alexdata.shards import (
    FORMAT_VERSION,
    MANIFEST,
    PREPARE_DIR,
    ShardWriter,
    index_path,
    make_manifest,
    printable,
    safe_key,
    shard_name,
    write_manifest,
)
from alexdata.sources import Item, find_class_names, looks_like_source, scan
from pipelines.config import SHORTER_SIDE  # paper §2


@dataclass(frozen=True)
class PrepareConfig:
    shorter_side: int = SHORTER_SIDE  # pixels
    quality: int = 90  # JPEG quality of the re-encoded images
    shard_size: int = 1024  # images per shard (~30 MB at 256 px)
    seed: int = 0  # order of training samples across shards

    def __post_init__(self):
        if not 1 <= self.quality <= 100:
            raise PrepareError(f"--quality must be in 1..100, got {self.quality}")
        if self.shard_size < 1:
            raise PrepareError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.shorter_side < 16:
            raise PrepareError(f"--shorter-side must be >= 16, got {self.shorter_side}")


# ---------------------------------------------------------------- one image


# The formats prepare reads (ImageNet holds JPEGs, and a few PNGs named .JPEG). Pillow opens ~40 formats unless
# told which, some through outside programs: an EPS file named .JPEG made it run Ghostscript.
FORMATS = ("JPEG", "PNG")
# The widest aspect ratio kept: the output's long side is at most this many times its short side (a 1 x 65,500
# JPEG of 17 KB would resize to 256 x 16.8 M pixels, 12.6 GB; ImageNet's widest images are far inside this).
MAX_ASPECT = 32


class UnsupportedImage(ValueError):
    """An input prepare skips on purpose, with the reason: a format or shape it does not take."""


def open_image(data: bytes) -> Image.Image:
    """The image in `data` (JPEG or PNG only: FORMATS), not yet decoded; UnsupportedImage for any other format."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        kind = _other_format(data)
        raise UnsupportedImage(f"not a JPEG or PNG{f' ({kind})' if kind else ''}") from None


def _other_format(data: bytes) -> str | None:
    """What the file is, when Pillow knows it as another format (identified from the header only: no plugin
    decodes it, no outside program runs)."""
    for magic, name in ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"GIF8", "GIF"), (b"BM", "BMP")):
        if data.startswith(magic):
            return name
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB of a decoded image. 16-bit grayscale (PNG modes I;16*, I) is scaled to 8 bits: Pillow's own
    conversion clips it to 255, a white image."""
    if im.mode.startswith("I;16") or im.mode == "I":
        import numpy as np

        a = np.asarray(im).astype(np.uint32)
        top = 65535 if a.max() > 255 or im.mode.startswith("I;16") else 255
        im = Image.fromarray((a * 255 // top).astype(np.uint8), mode="L")
    return im if im.mode == "RGB" else im.convert("RGB")  # CMYK, grayscale, palette, RGBA -> RGB


def resize_to_jpeg(data: bytes, shorter_side: int, quality: int) -> tuple[bytes, bool]:
    """Decode a JPEG or PNG to RGB, resize the shorter side to `shorter_side` (aspect kept, antialiased), encode
    JPEG. Returns (jpeg bytes, whether it was upscaled). Raises on unreadable or truncated data, and
    UnsupportedImage for another format or an aspect ratio past MAX_ASPECT (before any decoding)."""
    im = open_image(data)
    w, h = im.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise UnsupportedImage(f"{w}x{h}: an aspect ratio past {MAX_ASPECT}:1")
    scale = shorter_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    box = None
    if im.format == "JPEG" and scale <= 0.5:
        # Decode at 1/2, 1/4 or 1/8 in the DCT domain (never below `size`): far less IDCT and resize work.
        drafted = im.draft(None, size)
        box = drafted[1] if drafted else None
    im.load()  # a truncated file raises here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
    im = _to_rgb(im)
    im = im.resize(size, Image.Resampling.BICUBIC, box=box)  # PIL's BICUBIC is antialiased when shrinking
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), scale > 1


# ---------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardSpec:
    split: str
    index: int
    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def plan(train: list[Item], val: list[Item], cfg: PrepareConfig) -> list[ShardSpec]:
    """Every shard of the output, in order; the training items are shuffled with cfg.seed first."""
    import numpy as np

    order = np.random.default_rng(cfg.seed).permutation(len(train))
    shuffled = [train[i] for i in order]
    specs = []
    for split, items in (("train", shuffled), ("val", val)):
        for j in range(0, len(items), cfg.shard_size):
            specs.append(ShardSpec(split, j // cfg.shard_size, tuple(items[j : j + cfg.shard_size])))
    return specs


def _reason(e: Exception, data: bytes | None) -> str:
    """A reproducible one-line reason (PIL's own messages for unidentified images embed a memory address)."""
    if data is not None and len(data) == 0:
        return "empty file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can identify"
    if isinstance(e, UnsupportedImage):
        return str(e)
    if isinstance(e, DamagedJPEG):
        return f"truncated or corrupt JPEG data (libjpeg: {e})"
    return f"{type(e).__name__}: {e}"


_progress = None  # a shared counter of processed images, set in each worker


END_POOL_S = 10.0  # seconds a terminated pool's workers get to end on SIGTERM before they are killed


def _end_pool(pool) -> None:
    """Pool.terminate, which SIGTERMs the workers and waits for each. A worker the pool forked in that very moment
    (the replacement of one that died) can miss its SIGTERM: the signal lands before the child's Python takes
    signals, and terminate waited for it forever (seen once in the tests). After END_POOL_S every worker left is
    killed, which no process can miss."""
    ender = threading.Thread(target=pool.terminate, daemon=True)
    ender.start()
    ender.join(END_POOL_S)
    if ender.is_alive():
        for w in list(pool._pool):  # the pool's own list, the one terminate waits on
            if w.exitcode is None:
                w.kill()
        ender.join()


def _init_worker(counter) -> None:
    global _progress
    _progress = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: the pool's terminate ends it quietly


def write_shard(spec: ShardSpec, out: Path, cfg: PrepareConfig, tag: str = "") -> dict:
    """Processes and writes one shard (record, index, then the tar last: the tar's presence means done). tag: the
    writer's mark in its temporary names (`_part_tag`)."""
    shard = ShardWriter()
    skipped, upscaled, renamed, warned = [], [], [], []
    for it in spec.items:
        data = None
        try:
            data = it.read()
            warning = jpeg_warning(data)  # PIL decodes a JPEG with missing data as grey, without an error
            if is_damaged(warning):
                raise DamagedJPEG(warning)
            jpg, up = resize_to_jpeg(data, cfg.shorter_side, cfg.quality)
        except (ImportError, MemoryError):  # the machine, not the image: never a skip per image
            raise
        except Exception as e:  # unreadable, truncated, empty, not an image: left out and listed
            skipped.append({"file": printable(it.name), "reason": _reason(e, data)})
        else:
            if warning:  # stray bytes between segments: the image is whole, kept and listed
                warned.append({"file": printable(it.name), "warning": warning})
            key = safe_key(it.key)
            shard.add(key, jpg, it.label)
            if key != it.key:
                renamed.append({"file": printable(it.name), "key": key})
            if up:
                upscaled.append(printable(it.name))
        if _progress is not None:
            with _progress.get_lock():
                _progress.value += 1
    data, idx, facts = shard.finish()
    n = shard.images
    record = {"file": f"{spec.name}.tar", "images": n, "skipped": skipped, "upscaled": upscaled}
    record.update(renamed=renamed, decoder_warnings=warned)
    if n:
        record.update(facts)
    _write(_record_path(out, spec), json.dumps(record, indent=1).encode(), tag)
    if n:
        tar = out / f"{spec.name}.tar"
        _write(index_path(tar), idx, tag)
        _write(tar, data, tag)
    return record


def _record_path(out: Path, spec: ShardSpec) -> Path:
    """prepare's record of one shard: what it holds and skipped, and what manifest.json will say of it."""
    return out / PREPARE_DIR / f"{spec.name}.json"


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (for this user)."""
    return shutil.disk_usage(path).free


def _write(path: Path, data: bytes, tag: str = "") -> None:
    """atomic_write, with a full disk (or quota) reported as one line naming the file and the space left."""
    try:
        atomic_write(path, data, tag)
    except OSError as e:
        if not disk_full(e):
            raise
        raise PrepareError(
            f"{path}: disk full while writing {_size(len(data))} ({_size(free_bytes(path.parent))} "
            f"free); free some space and run the same command again to resume"
        ) from None


def _is_done(out: Path, spec: ShardSpec) -> bool:
    rec = _record_path(out, spec)
    if not rec.is_file():
        return False
    n = json.loads(rec.read_text())["images"]
    tar = out / f"{spec.name}.tar"
    return n == 0 or (tar.is_file() and index_path(tar).is_file())


def _fingerprint(classes: list[str], train: list[Item], val: list[Item]) -> str:
    h = hashlib.sha256(json.dumps(classes).encode())
    for it in train + val:
        h.update(f"{it.key} {it.label} {it.size}\n".encode("utf-8", "surrogateescape"))  # non-UTF-8 names too
    return h.hexdigest()[:16]


def parse_part(part: str | None) -> tuple[int, int]:
    if not part:
        return 0, 1
    try:
        i, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise PrepareError(f"--part must look like i/n (e.g. 0/4), got {part!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise PrepareError(f"--part {part}: need 0 <= i < n")
    return i, n


def prepare(
    src: str | os.PathLike,
    out: str | os.PathLike,
    cfg: PrepareConfig = PrepareConfig(),
    workers: int | None = None,
    part: str | None = None,
    progress: bool = True,
    log=print,
    val_labels: str | os.PathLike | None = None,
) -> dict | None:
    """Runs `alexnet prepare`. Returns the manifest, or None when other parts' shards are still missing.

    val_labels: a label file that overrides discovery (see the module docstring)."""
    part_i, part_n = parse_part(part)
    out = Path(out)
    if not (Path(src).is_dir() and any(Path(src).iterdir())) and out.is_dir() and looks_like_source(out):
        raise PrepareError(
            f"{src} is {'empty' if Path(src).is_dir() else 'missing'} and {out} holds raw ImageNet: did you swap "
            f"SRC and OUT? (alexnet prepare SRC OUT)"
        )
    if out.is_dir() and not (out / PREPARE_DIR).is_dir():
        others = sorted(p.name for p in out.iterdir())
        if others:  # shards mixed into a raw tree (or anything else) could not be told apart from it
            raise PrepareError(
                f"{out} holds other files ({', '.join(others[:3])}{' ...' if len(others) > 3 else ''})"
                f"; prepare writes into an empty folder or into its own earlier output"
            )
    # one prepare per part of OUT, until this function returns or raises (the kernel frees it on a kill)
    with (
        _stop_on_sigterm(),
        lock_dir(out / PREPARE_DIR, what="prepare", error=PrepareError, name=f"lock.{_part_tag(part_i, part_n)}"),
    ):
        return _prepare(src, out, cfg, workers, part_i, part_n, progress, log, val_labels)


def _part_tag(part_i: int, part_n: int) -> str:
    """The name of a part's lock, and its mark in the temporary names it writes, so parts writing one OUT at once
    (params.json, manifest.json, or the same shard when their n differ) never share one."""
    return f"part-{part_i}-of-{part_n}"


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (kill, a batch system's stop) stops prepare as Ctrl-C does, with KeyboardInterrupt: the pool is
    terminated (its workers die quietly: `_init_worker`), the shards written so far are kept. After the first,
    SIGINT and SIGTERM are swallowed until prepare returns, so a second one cannot cut the pool's shutdown into a
    traceback. Main thread only (Python sets signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def handle(signum, frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    mine = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    old = {sig: signal.signal(sig, handle) for sig in mine}  # one ignored (nohup, a background job) stays so
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _prepare(src, out: Path, cfg: PrepareConfig, workers, part_i: int, part_n: int, progress: bool, log, val_labels):
    classes, train, val, notes = scan(
        src, val_labels=val_labels, index_dir=out / PREPARE_DIR / "gzindex", workers=workers
    )
    if not train:
        raise PrepareError(f"{src}: no training images")
    tag = _part_tag(part_i, part_n)
    names, names_note = find_class_names(src, classes)
    if names_note:
        log(f"prepare: {names_note}")
    params = {"format_version": FORMAT_VERSION, **asdict(cfg), "inputs": _fingerprint(classes, train, val)}
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPARE_DIR).mkdir(exist_ok=True)
    pfile = out / PREPARE_DIR / "params.json"
    if pfile.is_file():
        old = json.loads(pfile.read_text())
        if old != params:
            diff = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in params.items() if old.get(k) != v)
            raise PrepareError(f"{out} holds a prepare run with other parameters or inputs ({diff}); use an empty OUT")
    else:
        _write(pfile, json.dumps(params, indent=1).encode(), tag)

    specs = plan(train, val, cfg)
    mine = [s for g, s in enumerate(specs) if g % part_n == part_i]
    todo = [s for s in mine if not _is_done(out, s)]
    for s in mine:  # leftovers of a killed run
        tar = out / f"{s.name}.tar"
        for path in (tar, index_path(tar), _record_path(out, s)):
            temporary(path, tag).unlink(missing_ok=True)
    n_imgs = sum(len(s.items) for s in todo)
    if todo:
        _check_space(out, [s for s in mine if s not in todo], todo, cfg)
    log(
        f"prepare: {plural(len(classes), 'class', 'classes')}, {len(train)} train + {len(val)} val inputs -> "
        f"{plural(len(specs), 'shard')}"
        + (f" (part {part_i}/{part_n}: {len(mine)})" if part_n > 1 else "")
        + (f"; {len(mine) - len(todo)} already written, resuming" if len(todo) < len(mine) else "")
    )
    workers = max(1, min(workers or cores(), len(todo) or 1))
    t0 = time.perf_counter()
    if todo:
        counter = mp.Value("q", 0)
        pool = mp.get_context("fork").Pool(workers, _init_worker, (counter,))
        started = list(pool._pool)  # a worker that dies is replaced, and its shard never ends: watch these
        try:
            with progress_bar(total=n_imgs, desc="prepare", unit="img", enabled=progress, smoothing=0.05) as bar:
                results = [pool.apply_async(write_shard, (s, out, cfg, tag)) for s in todo]
                while not all(r.ready() for r in results):
                    time.sleep(0.2)
                    bar.update(counter.value - bar.n)
                    if any(w.exitcode is not None for w in started):
                        raise PrepareError(
                            "a prepare worker process died (killed: out of memory? see `dmesg`); the shards written "
                            "so far are kept: run the same command again to go on"
                            + ("" if workers == 1 else f", with fewer --workers than {workers} if memory is short")
                        )
                bar.update(counter.value - bar.n)
                for r in results:
                    r.get()  # re-raises a worker's error (e.g. disk full)
            pool.close()
        except BaseException:
            _end_pool(pool)
            raise
        finally:
            pool.join()
    dt = time.perf_counter() - t0

    missing = [s.name for s in specs if not _is_done(out, s)]
    if missing:
        log(
            f"prepare: part {part_i}/{part_n} done in {dt:.0f} s; {plural(len(missing), 'shard')} of other parts "
            f"missing, "
            f"the last part to finish writes manifest.json"
        )
        return None
    records = [(s.split, json.loads(_record_path(out, s).read_text())) for s in specs]
    manifest = make_manifest(classes, asdict(cfg), records, notes, names)
    try:
        path = write_manifest(out, manifest, tag)
    except OSError as e:
        if not disk_full(e):
            raise
        raise PrepareError(
            f"{out / MANIFEST}: disk full while writing it ({_size(free_bytes(out))} free); every shard is written: "
            f"free some space and run the same command again to write it"
        ) from None
    sk, up, warned = len(manifest["skipped"]), len(manifest["upscaled"]), len(manifest["decoder_warnings"])
    rate = f", {n_imgs / dt:.0f} img/s with {plural(workers, 'worker')}" if n_imgs else ""
    log(
        f"prepare: {manifest['train']['images']} train + {manifest['val']['images']} val images in "
        f"{plural(len(manifest['train']['shards']) + len(manifest['val']['shards']), 'shard')}{rate}; "
        f"skipped {sk}{' (listed in manifest.json)' if sk else ''}; upscaled {up}"
        + (f"; {warned} kept with a harmless decoder warning" if warned else "")
        + "".join(f"; left out {n['file']} ({n['reason'].replace(': left out', '')})" for n in manifest["left_out"])
        + f"; -> {path}"
    )
    return manifest


def _check_space(out: Path, done: list[ShardSpec], todo: list[ShardSpec], cfg: PrepareConfig) -> None:
    """Stops with one line when OUT's file system clearly lacks the space for the shards still to write. Bytes
    per image: from the shards already written, else from resizing a small even sample of the inputs."""
    n_imgs = sum(len(s.items) for s in todo)
    written = [json.loads(_record_path(out, s).read_text()) for s in done]
    written = [r for r in written if r.get("bytes")]
    if written:
        per_image = sum(r["bytes"] + r["idx_bytes"] for r in written) / max(1, sum(r["images"] for r in written))
        how = f"as in the {plural(len(written), 'shard')} written"
    else:
        items = [it for s in todo for it in s.items]
        sizes = []
        for it in items[:: max(1, len(items) // 16)][:16]:
            try:
                sizes.append(len(resize_to_jpeg(it.read(), cfg.shorter_side, cfg.quality)[0]))
            except Exception:  # a bad input is skipped later, with its reason
                continue
        if not sizes:
            return
        per_image = sum(sizes) / len(sizes) + 3 * 512  # two tar headers, the .cls block, the index line
        how = f"from a sample of {len(sizes)} inputs"
    need, free = n_imgs * per_image, free_bytes(out)
    if need * 0.8 > free:  # "clearly": the estimate is good to well within 20 %
        raise PrepareError(
            f"{out}: needs about {_size(need)} for {n_imgs} images ({per_image / 1e3:.0f} KB "
            f"each, {how}) but its file system has {_size(free)} free; free some space or "
            f"choose another OUT"
        )


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
