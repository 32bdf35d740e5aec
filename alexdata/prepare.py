"""`alexnet prepare`: raw ILSVRC-2012 -> shorter-side-256 JPEGs in webdataset tar shards.

Input (SRC), any of the three ways ImageNet is distributed, detected automatically:
  (a) image-net.org: the archives read in place with no extraction, SRC/ILSVRC2012_img_train.tar (a tar of
      per-class tars) and SRC/ILSVRC2012_img_val.tar (flat); or extracted, SRC/train/<wnid>/*.JPEG and
      SRC/val/<wnid>/*.JPEG or a flat SRC/val/*.JPEG;
  (b) Kaggle's imagenet-object-localization-challenge download: SRC/ILSVRC/Data/CLS-LOC/{train,val,test} with
      SRC/LOC_val_solution.csv (SRC may also be the CLS-LOC folder itself); test/ has no labels and is left out;
  (c) the Hugging Face ILSVRC/imagenet-1k repository, read in place: SRC/data/train_images_{0..4}.tar.gz and
      SRC/data/val_images.tar.gz, flat members named <original stem>_<wnid>.JPEG (the label is the wnid suffix,
      the sample key the original stem); test_images.tar.gz has no labels and is left out. gzip cannot seek:
      one pass per archive (in parallel) lists its members and writes a seek index with rapidgzip
      (OUT/.prepare/gzindex/), through which the shard writers read their images in any order.
Labels of flat val images: `--val-labels FILE` when given (a Kaggle CSV, the devkit .tar.gz or folder, or plain
`<stem> <wnid>` lines); otherwise the first found of LOC_val_solution.csv (in SRC, SRC/val, or Kaggle's top
folder) and the official development kit, SRC/ILSVRC2012_devkit_t12.tar.gz as downloaded (or extracted to
SRC/ILSVRC2012_devkit_t12/): line n of data/ILSVRC2012_validation_ground_truth.txt is the ILSVRC2012_ID of
ILSVRC2012_val_<n, 8 digits>, and data/meta.mat maps ILSVRC2012_IDs to WordNet ids (read with scipy.io).
The same images give byte-identical shards whichever layout they came in.

Output (OUT):
  train-000000.tar ...  samples <key>.jpg + <key>.cls (class index, ASCII), in a seeded shuffled order
  train-000000.idx ...  the index `fn.readers.webdataset` reads (wds2idx format v1.2)
  val-000000.tar/.idx   validation samples in key order
  manifest.json         classes, per-split counts and shards (each with its and its index's size and sha256,
                        hashed as they were written), each split's largest height and width (the GPU decoder's
                        preallocation hints), parameters, skipped inputs
  .prepare/             per-shard records; they make the run resumable and the manifest reproducible

Each shard is a pure function of (input listing, parameters, shard index), written under a temporary name and
renamed, so an interrupted run resumes by writing only the missing shards, byte-identical to an uninterrupted
run, and `--part i/n` lets n machines write disjoint sets of shards into one OUT. Before writing, prepare
estimates the output's size and stops when OUT's file system clearly lacks the space.
"""
from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import signal
import tarfile
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from alexdata.errors import PrepareError
from alexdata.files import atomic_write
from pipelines.config import MAX_LABEL_DIGITS, SHORTER_SIDE  # paper §2

FORMAT_VERSION = 1
TRAIN_TAR, VAL_TAR, VAL_LABELS = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"  # the development kit: DEVKIT.tar.gz as distributed, or that folder extracted
DEVKIT_TRUTH, DEVKIT_META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
KAGGLE_ROOT = Path("ILSVRC/Data/CLS-LOC")  # inside Kaggle's download; the labels sit three folders up
HF_TRAIN, HF_VAL, HF_TEST = "train_images_*.tar.gz", "val_images.tar.gz", "test_images.tar.gz"  # SRC/data/


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


@dataclass(frozen=True)
class Item:
    """One input image: a plain file (offset < 0) or a byte range inside an archive."""
    key: str  # file stem: n01440764_10026, ILSVRC2012_val_00000001
    label: int
    path: str
    offset: int = -1
    size: int = -1

    @property
    def name(self) -> str:
        return f"{self.path}:{self.key}" if self.offset >= 0 else self.path

    def read(self) -> bytes:
        if self.offset < 0:
            with open(self.path, "rb") as f:
                return f.read()
        if self.path.endswith(".gz"):  # a member of a .tar.gz: offset and size in the decompressed stream
            f = _gz_file(self.path)
            f.seek(self.offset)
            return f.read(self.size)
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), self.size, self.offset)


# ---------------------------------------------------------------- .tar.gz archives, read in place

_GZ_INDEX_DIR: dict[str, Path] = {}  # archive path -> folder of its seek index (set by the scan)
_GZ_OPEN: dict[str, object] = {}  # archive path -> an open rapidgzip file with its index, one per process


def _rapidgzip():
    try:
        import rapidgzip
    except ImportError:
        raise PrepareError("reading .tar.gz archives in place needs rapidgzip (pip install rapidgzip)") from None
    return rapidgzip


def _gz_file(path: str):
    f = _GZ_OPEN.get(path)
    if f is None:
        import atexit

        rg = _rapidgzip()
        f = rg.RapidgzipFile(path, parallelization=1)
        f.import_index(str(_GZ_INDEX_DIR[path] / (Path(path).name + ".rgidx")))
        if not _GZ_OPEN:
            atexit.register(_close_gz_files)  # rapidgzip aborts an interpreter that exits with a file open
        _GZ_OPEN[path] = f
    return f


def _close_gz_files() -> None:
    for f in _GZ_OPEN.values():
        f.close()
    _GZ_OPEN.clear()


def _gz_members(job: tuple[str, str]) -> list[tuple[str, int, int]]:
    """(name, offset, size) of the regular files in one .tar.gz, offsets in the decompressed stream; one
    decompressing pass that also writes the archive's seek index, both kept in `index_dir` and reused while the
    archive's size and mtime stay the same."""
    path, index_dir = Path(job[0]), Path(job[1])
    st = path.stat()
    listing, index = index_dir / (path.name + ".json"), index_dir / (path.name + ".rgidx")
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if listing.is_file() and index.is_file():
        rec = json.loads(listing.read_text())
        if rec.get("archive") == stamp:
            return [tuple(m) for m in rec["members"]]
    rg = _rapidgzip()
    try:
        with rg.RapidgzipFile(str(path), parallelization=1) as f:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                members = [(m.name, m.offset_data, m.size) for m in tf if m.isfile()]
            f.export_index(str(index) + ".tmp")
    except (tarfile.TarError, OSError, RuntimeError, ValueError) as e:
        raise PrepareError(f"{path}: not a readable .tar.gz ({_first_line(e)})") from None
    os.replace(str(index) + ".tmp", index)
    atomic_write(listing, json.dumps({"archive": stamp, "members": members}))
    return members


def _scan_gz(archives: list[Path], index_dir: Path, workers: int | None) -> list[list[tuple[str, int, int]]]:
    """Members of every archive, one process per archive: the decompression is not serialised on one core."""
    from concurrent.futures import ProcessPoolExecutor

    index_dir.mkdir(parents=True, exist_ok=True)
    for a in archives:
        _GZ_INDEX_DIR[str(a)] = index_dir
    jobs = [(str(a), str(index_dir)) for a in archives]
    n = max(1, min(len(jobs), workers or len(os.sched_getaffinity(0))))
    if n == 1:
        return [_gz_members(j) for j in jobs]
    with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(_gz_members, jobs))


# ---------------------------------------------------------------- scanning the input


def _key(name: str, where: str) -> str:
    key = name.rsplit(".", 1)[0]
    if "." in key or "/" in key or not key:
        raise PrepareError(f"{where}: key {key!r} may not contain '.' (webdataset splits sample names at dots)")
    return key


def _tar_members(path: Path, offset: int = 0):
    """(name, absolute data offset, size) of the regular files in the tar starting at `offset` in `path`."""
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        yield m.name, m.offset_data, m.size
        except tarfile.TarError as e:
            raise PrepareError(f"{path}: not a readable tar archive ({e})") from None


def _scan_train(src: Path, notes: list[dict]) -> tuple[list[str], list[tuple[str, str, str, int, int]]]:
    """Class names and (wnid, file name, path, offset, size) of every training input."""
    tdir = src / "train"
    found: list[tuple[str, str, str, int, int]] = []
    if tdir.is_dir():
        wnids = sorted(p.name for p in tdir.iterdir() if p.is_dir())
        for p in sorted(tdir.iterdir()):
            if not p.is_dir():
                notes.append({"file": str(p), "reason": "not inside a class folder"})
        for w in wnids:
            files = sorted(p for p in (tdir / w).iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise PrepareError(f"{tdir / w}: empty class folder")
            found += [(w, p.name, str(p), -1, -1) for p in files]
        if not wnids:
            raise PrepareError(f"{tdir}: no class folders")
        return wnids, found
    tar = src / TRAIN_TAR
    if tar.is_file():
        wnids = []
        for name, off, _ in list(_tar_members(tar)):
            if not name.endswith(".tar"):
                notes.append({"file": f"{tar}:{name}", "reason": "not a per-class tar"})
                continue
            w = Path(name).stem
            inner = [(w, Path(n).name, str(tar), o, s) for n, o, s in _tar_members(tar, off)
                     if not Path(n).name.startswith(".")]
            if not inner:
                raise PrepareError(f"{tar}:{name}: empty class archive")
            wnids.append(w)
            found += inner
        if not wnids:
            raise PrepareError(f"{tar}: no per-class tars inside")
        order = sorted(range(len(wnids)), key=wnids.__getitem__)
        return [wnids[i] for i in order], found
    hint = ""
    if (src / "manifest.json").is_file():
        hint = " (it holds a prepare output: did you swap SRC and OUT?)"
    raise PrepareError(f"{src}: found none of train/, {TRAIN_TAR}, Kaggle's {KAGGLE_ROOT}/ or Hugging Face's "
                       f"data/{HF_TRAIN}{hint}")


def _hf_name(member: str, where: str) -> tuple[str, str]:
    """(sample key, wnid) of a Hugging Face member `<original stem>_<wnid>.JPEG`."""
    stem = Path(member).name.rsplit(".", 1)[0]
    key, sep, w = stem.rpartition("_")
    if not sep or not key or not w:
        raise PrepareError(f"{where}:{member}: expected a name <stem>_<wnid>.JPEG")
    return _key(f"{key}.JPEG", f"{where}:{member}"), w


def _scan_hf(data: Path, index_dir: Path | None, workers: int | None, notes: list[dict]):
    """Training classes and inputs, and the val entries (key, path, offset, size, wnid), of the repository."""
    archives = sorted(data.glob(HF_TRAIN))
    val = data / HF_VAL
    if (data / HF_TEST).is_file():
        notes.append({"file": str(data / HF_TEST), "reason": "unlabelled test images: left out", "left_out": True})
    if index_dir is None:  # a listing only (bench prepare): the indexes go with the process
        import atexit

        index_dir = Path(tempfile.mkdtemp(prefix="alexnet-gzindex-"))
        atexit.register(shutil.rmtree, index_dir, True)
    listed = _scan_gz(archives + ([val] if val.is_file() else []), index_dir, workers)
    found, wnids = [], set()
    for a, members in zip(archives, listed):
        for name, off, size in members:
            key, w = _hf_name(name, str(a))
            wnids.add(w)
            found.append((w, key + ".JPEG", str(a), off, size))
    if not found:
        raise PrepareError(f"{data}: the {HF_TRAIN} archives hold no images")
    val_entries = []
    if val.is_file():
        for name, off, size in listed[-1]:
            key, w = _hf_name(name, str(val))
            val_entries.append((key, str(val), off, size, w))
    else:
        notes.append({"file": str(val), "reason": "no val archive: no val split written"})
    return sorted(wnids), found, val_entries


def _label_file(p: Path) -> tuple[Path, dict[str, str]]:
    """{val key: wnid} from `--val-labels`: a Kaggle CSV, the devkit (.tar.gz or folder), or `<stem> <wnid>` lines."""
    if p.is_dir() or p.name.endswith(".tar.gz"):
        found = _devkit_at(p)
        if found is None:
            raise PrepareError(f"{p}: no such devkit")
        return found[0], devkit_labels(*found)
    if not p.is_file():
        raise PrepareError(f"{p}: no such file (--val-labels)")
    if p.suffix.lower() == ".csv":
        return p, _csv_labels(p)
    labels = {}
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) != 2:
            raise PrepareError(f"{p}: line {n} is {line.strip()[:60]!r}, expected '<stem> <wnid>'")
        labels[f[0].rsplit(".", 1)[0] if f[0].lower().endswith((".jpeg", ".jpg", ".png")) else f[0]] = f[1]
    if not labels:
        raise PrepareError(f"{p}: no '<stem> <wnid>' lines")
    return p, labels


def _read_val_labels(dirs: list[Path]) -> tuple[Path, dict[str, str]]:
    """(where the labels came from, {val key: wnid}) from the Kaggle CSV or the official devkit in `dirs`."""
    for d in dirs:
        for p in (d / VAL_LABELS, d / "val" / VAL_LABELS):
            if p.is_file():
                return p, _csv_labels(p)
    for d in dirs:
        found = _devkit_files(d)
        if found:
            return found[0], devkit_labels(*found)
    raise PrepareError(f"{dirs[0]}: flat val images need labels: {VAL_LABELS} (in {dirs[-1]} or its val/), the "
                       f"devkit {DEVKIT}.tar.gz (or its extracted folder), or --val-labels FILE")


def _csv_labels(p: Path) -> dict[str, str]:
    labels = {}
    with open(p, newline="") as f:
        rd = csv.DictReader(f)
        if not rd.fieldnames or not {"ImageId", "PredictionString"} <= set(rd.fieldnames):
            raise PrepareError(f"{p}: expected columns ImageId,PredictionString, got {rd.fieldnames}")
        for row in rd:
            pred = (row["PredictionString"] or "").split()
            if not pred:
                raise PrepareError(f"{p}: {row['ImageId']} has an empty PredictionString")
            labels[row["ImageId"]] = pred[0]
    return labels


def _devkit_files(src: Path) -> tuple[Path, bytes, bytes] | None:
    """(where, ground-truth text, meta.mat bytes) of the devkit in SRC, extracted or as the .tar.gz; None if absent."""
    if (src / DEVKIT).is_dir():
        return _devkit_at(src / DEVKIT)
    return _devkit_at(src / f"{DEVKIT}.tar.gz")


def _devkit_at(path: Path) -> tuple[Path, bytes, bytes] | None:
    """The devkit at `path`: its extracted folder or the .tar.gz; None if there is nothing at `path`."""
    folder = path
    if folder.is_dir():
        try:
            return folder, (folder / DEVKIT_TRUTH).read_bytes(), (folder / DEVKIT_META).read_bytes()
        except OSError as e:
            raise PrepareError(f"{folder}: not the extracted devkit ({e.strerror}: {e.filename})") from None
    if not path.is_file():
        return None
    got: dict[str, bytes] = {}
    try:  # decompress it whole first (~2.5 MB): that checks the gzip CRC, which a member-by-member read may not
        data = gzip.decompress(path.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                for want in (DEVKIT_TRUTH, DEVKIT_META):
                    if m.isfile() and (m.name.endswith("/" + want) or m.name == want):
                        got[want] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise PrepareError(f"{path}: not a readable .tar.gz ({_first_line(e)})") from None
    missing = [w for w in (DEVKIT_TRUTH, DEVKIT_META) if w not in got]
    if missing:
        raise PrepareError(f"{path}: has no {' or '.join(missing)} (not the ILSVRC-2012 devkit?)")
    return path, got[DEVKIT_TRUTH], got[DEVKIT_META]


def devkit_labels(where: Path, truth: bytes, meta: bytes) -> dict[str, str]:
    """{"ILSVRC2012_val_00000001": wnid, ...}: line n of the ground truth is the ILSVRC2012_ID of val image n, and
    meta.mat's `synsets` table maps ILSVRC2012_IDs to WNIDs (the IDs do not follow sorted WNID order)."""
    try:
        import scipy.io
    except ImportError:
        raise PrepareError(f"{where}: reading the devkit's meta.mat needs scipy (pip install scipy)") from None
    try:
        syn = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        wnid_of = {int(i): str(w) for i, w in zip(syn["ILSVRC2012_ID"], syn["WNID"])}
    except Exception as e:  # scipy raises many kinds on a file that is not a MAT file
        raise PrepareError(f"{where}: {DEVKIT_META} is not the devkit's synset table ({type(e).__name__}: "
                           f"{_first_line(e)})") from None
    lines = truth.decode("ascii", "replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    labels = {}
    for n, line in enumerate(lines, 1):  # one ID per line: a blank or doubled line would shift every later label
        if not line.strip().isdigit() or int(line) not in wnid_of:
            raise PrepareError(f"{where}: line {n} of {DEVKIT_TRUTH} is {line!r}, not one ILSVRC2012_ID of "
                               f"{DEVKIT_META}")
        labels[f"ILSVRC2012_val_{n:08d}"] = wnid_of[int(line)]
    return labels


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _scan_val(src: Path, classes: dict[str, int], notes: list[dict], label_dirs: list[Path],
              val_labels: Path | None, entries: list | None = None) -> list[Item]:
    """Val items in key order. `entries` (key, path, offset, size, wnid from the name) come from a Hugging Face
    archive; otherwise SRC/val/ or ILSVRC2012_img_val.tar is listed here."""
    vdir, vtar = src / "val", src / VAL_TAR
    named: dict[str, str] = {}  # labels carried by the file names (Hugging Face)
    listed: list[tuple[str, str, int, int]] = []  # (key, path, offset, size)
    if entries is not None:
        listed = [(k, p, o, n) for k, p, o, n, _ in entries]
        named = {k: w for k, _, _, _, w in entries}
    elif vdir.is_dir():
        subdirs = sorted(p for p in vdir.iterdir() if p.is_dir())
        if subdirs and val_labels is None:  # class folders
            items = []
            for d in subdirs:
                if d.name not in classes:
                    raise PrepareError(f"{d}: val class folder names unknown class {d.name!r} (not in train/)")
                for p in sorted(q for q in d.iterdir() if q.is_file() and not q.name.startswith(".")):
                    items.append(Item(_key(p.name, str(p)), classes[d.name], str(p)))
            return sorted(items, key=lambda it: it.key)
        files = [p for d in (subdirs or [vdir]) for p in sorted(d.iterdir())]
        listed = [(_key(p.name, str(p)), str(p), -1, -1) for p in files
                  if p.is_file() and not p.name.startswith(".") and p.name != VAL_LABELS]
    elif vtar.is_file():
        listed = [(_key(Path(n).name, f"{vtar}:{n}"), str(vtar), o, s) for n, o, s in _tar_members(vtar)]
    else:
        notes.append({"file": str(src), "reason": "no val/ or ILSVRC2012_img_val.tar: no val split written"})
        return []
    if val_labels is not None:
        label_path, labels = _label_file(val_labels)
    elif named:
        label_path, labels = Path(listed[0][1]), named
    else:
        label_path, labels = _read_val_labels(label_dirs)
    items = []
    for key, path, off, size in listed:
        where = path if off < 0 else f"{path}:{key}"
        if key not in labels:
            raise PrepareError(f"{where}: no label in {label_path}")
        if labels[key] not in classes:
            raise PrepareError(f"{label_path}: {key} names unknown class {labels[key]!r} (not in train)")
        items.append(Item(key, classes[labels[key]], path, off, size))
    return sorted(items, key=lambda it: it.key)


def layout(src: Path) -> tuple[str, Path, list[Path]]:
    """(layout name, the folder holding train/ and val/ or their archives, folders to look for val labels in)."""
    if (src / KAGGLE_ROOT).is_dir():
        return "kaggle", src / KAGGLE_ROOT, [src / KAGGLE_ROOT, src]
    if src.name == KAGGLE_ROOT.name and src.parent.name == "Data" and src.parent.parent.name == "ILSVRC":
        return "kaggle", src, [src, src.parents[2]]  # SRC is the CLS-LOC folder: the CSV is three folders up
    if (src / "data").is_dir() and any((src / "data").glob(HF_TRAIN)):
        return "hf", src / "data", [src]
    if src.name == "data" and any(src.glob(HF_TRAIN)):
        return "hf", src, [src.parent]
    return ("archives" if (src / TRAIN_TAR).is_file() and not (src / "train").is_dir() else "tree"), src, [src]


def scan(src: str | os.PathLike, *, val_labels: str | os.PathLike | None = None, index_dir: Path | None = None,
         workers: int | None = None) -> tuple[list[str], list[Item], list[Item], list[dict]]:
    """(classes, train items in sorted order, val items in key order, notes) for SRC; raises PrepareError.

    val_labels: a label file overriding discovery. index_dir: where the seek indexes of .tar.gz archives go
    (default: a temporary folder). Notes with "left_out" are inputs not prepared on purpose (unlabelled tests)."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such directory")
    notes: list[dict] = []
    kind, root, label_dirs = layout(src)
    hf_val = None
    if kind == "hf":
        wnids, found, hf_val = _scan_hf(root, index_dir, workers, notes)
    else:
        wnids, found = _scan_train(root, notes)
        if kind == "kaggle" and (root / "test").is_dir():
            n = sum(1 for p in (root / "test").iterdir() if p.is_file())
            notes.append({"file": str(root / "test"), "reason": f"{n} unlabelled test images: left out",
                          "left_out": True})
    if len(wnids) > 10 ** MAX_LABEL_DIGITS:
        raise PrepareError(f"{src}: {len(wnids)} classes; labels are stored as at most {MAX_LABEL_DIGITS} digits")
    classes = {w: i for i, w in enumerate(wnids)}  # class index = position of the wnid in sorted order
    train = sorted((Item(_key(fname, p if off < 0 else f"{p}:{fname}"), classes[w], p, off, size)
                    for w, fname, p, off, size in found), key=lambda it: (it.label, it.key))
    val = _scan_val(root, classes, notes, label_dirs, Path(val_labels) if val_labels else None, hf_val)
    for split, items in (("train", train), ("val", val)):
        seen: set[str] = set()
        for it in items:
            if it.key in seen:
                raise PrepareError(f"{it.name}: duplicate {split} key {it.key!r}")
            seen.add(it.key)
    return wnids, train, val, notes


# ---------------------------------------------------------------- one image


def resize_to_jpeg(data: bytes, shorter_side: int, quality: int) -> tuple[bytes, bool]:
    """Decode any PIL format to RGB, resize the shorter side to `shorter_side` (aspect kept, antialiased), encode
    JPEG. Returns (jpeg bytes, whether it was upscaled). Raises on unreadable or truncated data."""
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    scale = shorter_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    box = None
    if im.format == "JPEG" and scale <= 0.5:
        # Decode at 1/2, 1/4 or 1/8 in the DCT domain (never below `size`): far less IDCT and resize work.
        drafted = im.draft(None, size)
        box = drafted[1] if drafted else None
    im.load()  # a truncated file raises here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
    if im.mode != "RGB":  # CMYK, grayscale, palette, RGBA -> RGB
        im = im.convert("RGB")
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
        return f"{self.split}-{self.index:06d}"


def plan(train: list[Item], val: list[Item], cfg: PrepareConfig) -> list[ShardSpec]:
    """Every shard of the output, in order; the training items are shuffled with cfg.seed first."""
    import numpy as np

    order = np.random.default_rng(cfg.seed).permutation(len(train))
    shuffled = [train[i] for i in order]
    specs = []
    for split, items in (("train", shuffled), ("val", val)):
        for j in range(0, len(items), cfg.shard_size):
            specs.append(ShardSpec(split, j // cfg.shard_size, tuple(items[j:j + cfg.shard_size])))
    return specs


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


def _reason(e: Exception, data: bytes | None) -> str:
    """A reproducible one-line reason (PIL's own messages for unidentified images embed a memory address)."""
    if data is not None and len(data) == 0:
        return "empty file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can identify"
    return f"{type(e).__name__}: {e}"


_progress = None  # a shared counter of processed images, set in each worker


def _init_worker(counter) -> None:
    global _progress
    _progress = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool


def write_shard(spec: ShardSpec, out: Path, cfg: PrepareConfig) -> dict:
    """Processes and writes one shard (record, index, then the tar last: the tar's presence means done)."""
    buf = io.BytesIO()
    skipped, upscaled, n, max_hw = [], [], 0, [0, 0]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for it in spec.items:
            data = None
            try:
                data = it.read()
                jpg, up = resize_to_jpeg(data, cfg.shorter_side, cfg.quality)
            except Exception as e:  # unreadable, truncated, empty, not an image: left out and listed
                skipped.append({"file": it.name, "reason": _reason(e, data)})
            else:
                add_to_tar(tf, f"{it.key}.jpg", jpg)
                w, h = Image.open(io.BytesIO(jpg)).size  # the header only
                max_hw = [max(max_hw[0], h), max(max_hw[1], w)]
                add_to_tar(tf, f"{it.key}.cls", str(it.label).encode())
                n += 1
                if up:
                    upscaled.append(it.name)
            if _progress is not None:
                with _progress.get_lock():
                    _progress.value += 1
    record = {"file": f"{spec.name}.tar", "images": n, "skipped": skipped, "upscaled": upscaled}
    data = buf.getvalue()
    idx = wds_index(data).encode()
    if n:  # hashed from the bytes in memory, as they are written: `alexnet verify` needs no second read here
        record.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), idx_bytes=len(idx),
                      idx_sha256=hashlib.sha256(idx).hexdigest(), max_hw=max_hw)
    _write(out / ".prepare" / f"{spec.name}.json", json.dumps(record, indent=1).encode())
    if n:
        _write(out / f"{spec.name}.idx", idx)
        _write(out / f"{spec.name}.tar", data)
    return record


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (for this user)."""
    return shutil.disk_usage(path).free


def _write(path: Path, data: bytes) -> None:
    """atomic_write, with a full disk (or quota) reported as one line naming the file and the space left."""
    try:
        atomic_write(path, data)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PrepareError(f"{path}: disk full while writing {_size(len(data))} ({_size(free_bytes(path.parent))} "
                           f"free); free some space and run the same command again to resume") from None


def _is_done(out: Path, spec: ShardSpec) -> bool:
    rec = out / ".prepare" / f"{spec.name}.json"
    if not rec.is_file():
        return False
    n = json.loads(rec.read_text())["images"]
    return n == 0 or ((out / f"{spec.name}.tar").is_file() and (out / f"{spec.name}.idx").is_file())


def _fingerprint(classes: list[str], train: list[Item], val: list[Item]) -> str:
    h = hashlib.sha256(json.dumps(classes).encode())
    for it in train + val:
        h.update(f"{it.key} {it.label} {it.size}\n".encode())
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


def prepare(src: str | os.PathLike, out: str | os.PathLike, cfg: PrepareConfig = PrepareConfig(),
            workers: int | None = None, part: str | None = None, progress: bool = True,
            log=print, val_labels: str | os.PathLike | None = None) -> dict | None:
    """Runs `alexnet prepare`. Returns the manifest, or None when other parts' shards are still missing.

    val_labels: a label file that overrides discovery (see the module docstring)."""
    part_i, part_n = parse_part(part)
    out = Path(out)
    if out.is_dir() and not (out / ".prepare").is_dir():
        others = sorted(p.name for p in out.iterdir())
        if others:  # shards mixed into a raw tree (or anything else) could not be told apart from it
            raise PrepareError(f"{out} holds other files ({', '.join(others[:3])}{' ...' if len(others) > 3 else ''})"
                               f"; prepare writes into an empty folder or into its own earlier output")
    classes, train, val, notes = scan(src, val_labels=val_labels, index_dir=out / ".prepare" / "gzindex",
                                      workers=workers)
    if not train:
        raise PrepareError(f"{src}: no training images")
    params = {"format_version": FORMAT_VERSION, **asdict(cfg),
              "inputs": _fingerprint(classes, train, val)}
    out.mkdir(parents=True, exist_ok=True)
    (out / ".prepare").mkdir(exist_ok=True)
    pfile = out / ".prepare" / "params.json"
    if pfile.is_file():
        old = json.loads(pfile.read_text())
        if old != params:
            diff = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in params.items() if old.get(k) != v)
            raise PrepareError(f"{out} holds a prepare run with other parameters or inputs ({diff}); "
                               f"use an empty OUT")
    else:
        atomic_write(pfile, json.dumps(params, indent=1).encode())

    specs = plan(train, val, cfg)
    mine = [s for g, s in enumerate(specs) if g % part_n == part_i]
    todo = [s for s in mine if not _is_done(out, s)]
    for s in mine:  # leftovers of a killed run
        for tmp in (out / f"{s.name}.tar.tmp", out / f"{s.name}.idx.tmp", out / ".prepare" / f"{s.name}.json.tmp"):
            tmp.unlink(missing_ok=True)
    n_imgs = sum(len(s.items) for s in todo)
    for n in notes:
        if n.get("left_out"):
            log(f"prepare: {n['file']}: {n['reason']}")
    if todo:
        _check_space(out, [s for s in mine if s not in todo], todo, cfg)
    log(f"prepare: {len(classes)} classes, {len(train)} train + {len(val)} val inputs -> {len(specs)} shards"
        + (f" (part {part_i}/{part_n}: {len(mine)})" if part_n > 1 else "")
        + (f"; {len(mine) - len(todo)} already written, resuming" if len(todo) < len(mine) else ""))
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo) or 1))
    t0 = time.perf_counter()
    if todo:
        counter = mp.Value("q", 0)
        pool = mp.get_context("fork").Pool(workers, _init_worker, (counter,))
        try:
            with tqdm(total=n_imgs, desc="prepare", unit="img", disable=not progress, smoothing=0.05) as bar:
                results = [pool.apply_async(write_shard, (s, out, cfg)) for s in todo]
                while not all(r.ready() for r in results):
                    time.sleep(0.2)
                    bar.update(counter.value - bar.n)
                bar.update(counter.value - bar.n)
                for r in results:
                    r.get()  # re-raises a worker's error (e.g. disk full)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    dt = time.perf_counter() - t0

    missing = [s.name for s in specs if not _is_done(out, s)]
    if missing:
        log(f"prepare: part {part_i}/{part_n} done in {dt:.0f} s; {len(missing)} shards of other parts missing, "
            f"the last part to finish writes manifest.json")
        return None
    manifest = _manifest(out, specs, classes, cfg, notes)
    atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    sk, up = len(manifest["skipped"]), len(manifest["upscaled"])
    rate = f", {n_imgs / dt:.0f} img/s with {workers} workers" if n_imgs else ""
    log(f"prepare: {manifest['train']['images']} train + {manifest['val']['images']} val images in "
        f"{len(manifest['train']['shards']) + len(manifest['val']['shards'])} shards{rate}; "
        f"skipped {sk}{' (listed in manifest.json)' if sk else ''}; upscaled {up}"
        + "".join(f"; left out {n['file']} ({n['reason'].replace(': left out', '')})" for n in manifest["left_out"])
        + f"; -> {out / 'manifest.json'}")
    return manifest


def _check_space(out: Path, done: list[ShardSpec], todo: list[ShardSpec], cfg: PrepareConfig) -> None:
    """Stops with one line when OUT's file system clearly lacks the space for the shards still to write. Bytes
    per image: from the shards already written, else from resizing a small even sample of the inputs."""
    n_imgs = sum(len(s.items) for s in todo)
    written = [json.loads((out / ".prepare" / f"{s.name}.json").read_text()) for s in done]
    written = [r for r in written if r.get("bytes")]
    if written:
        per_image = sum(r["bytes"] + r["idx_bytes"] for r in written) / max(1, sum(r["images"] for r in written))
        how = f"as in the {len(written)} shards written"
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
        raise PrepareError(f"{out}: needs about {_size(need)} for {n_imgs} images ({per_image / 1e3:.0f} KB "
                           f"each, {how}) but its file system has {_size(free)} free; free some space or "
                           f"choose another OUT")


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _manifest(out: Path, specs: list[ShardSpec], classes: list[str], cfg: PrepareConfig, notes: list[dict]):
    man = {"format_version": FORMAT_VERSION, "classes": classes, "params": asdict(cfg),
           "train": {"images": 0, "shards": []}, "val": {"images": 0, "shards": []},
           "skipped": [n for n in notes if not n.get("left_out")], "upscaled": [],
           "left_out": [{k: n[k] for k in ("file", "reason")} for n in notes if n.get("left_out")]}
    largest = {"train": [0, 0], "val": [0, 0]}  # None once a shard record predates them (a resumed old run)
    for s in specs:
        rec = json.loads((out / ".prepare" / f"{s.name}.json").read_text())
        man["skipped"] += rec["skipped"]
        man["upscaled"] += rec["upscaled"]
        if rec["images"]:
            man[s.split]["images"] += rec["images"]
            man[s.split]["shards"].append({k: rec[k] for k in ("file", "images", "bytes", "sha256", "idx_bytes",
                                                                "idx_sha256") if k in rec})
            hw, m = rec.get("max_hw"), largest[s.split]
            largest[s.split] = [max(m[0], hw[0]), max(m[1], hw[1])] if hw and m else None
    for split, hw in largest.items():
        if hw and man[split]["images"]:  # pixels; alexdata/dataset.py reads them as Split.max_hw
            man[split].update(max_height=hw[0], max_width=hw[1])
    return man
