"""Finding prepare's inputs: the training and validation images of raw ILSVRC-2012 and their labels.

SRC, any of the three ways ImageNet is distributed, detected automatically (`layout`):
  (a) image-net.org: the archives read in place with no extraction, SRC/ILSVRC2012_img_train.tar (a tar of
      per-class tars) and SRC/ILSVRC2012_img_val.tar (flat); or extracted, SRC/train/<wnid>/*.JPEG and
      SRC/val/<wnid>/*.JPEG or a flat SRC/val/*.JPEG;
  (b) Kaggle's imagenet-object-localization-challenge download: SRC/ILSVRC/Data/CLS-LOC/{train,val,test} with
      SRC/LOC_val_solution.csv (SRC may also be the CLS-LOC folder itself); test/ has no labels and is left out;
  (c) the Hugging Face ILSVRC/imagenet-1k repository, read in place: SRC/data/train_images_{0..4}.tar.gz and
      SRC/data/val_images.tar.gz, flat members named <original stem>_<wnid>.JPEG (the label is the wnid suffix,
      the sample key the original stem); test_images.tar.gz has no labels and is left out. gzip cannot seek:
      one pass per archive (in parallel) lists its members and writes a seek index with rapidgzip (`GzIndex`),
      through which the shard writers read their images in any order.
Labels of flat val images: `--val-labels FILE` when given (a Kaggle CSV, the devkit .tar.gz or folder, or plain
`<stem> <wnid>` lines); otherwise the first found of LOC_val_solution.csv (in SRC, SRC/val, or Kaggle's top
folder) and the official development kit, SRC/ILSVRC2012_devkit_t12.tar.gz as downloaded (or extracted to
SRC/ILSVRC2012_devkit_t12/): line n of data/ILSVRC2012_validation_ground_truth.txt is the ILSVRC2012_ID of
ILSVRC2012_val_<n, 8 digits>, and data/meta.mat maps ILSVRC2012_IDs to WordNet ids (read with scipy.io).
Every layout gives the same `Item`s (key, label, where its bytes are), so the same images give byte-identical
shards whichever layout they came in.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import multiprocessing as mp
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from alexdata.errors import PrepareError, plural
from alexdata.files import atomic_write, process_tag, remove_dead_temporaries, temporary
from alexdata.host import cores
from alexdata.shards import printable, safe_key
from pipelines.config import MAX_LABEL_DIGITS

TRAIN_TAR, VAL_TAR, VAL_LABELS = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"  # the development kit: DEVKIT.tar.gz as distributed, or that folder extracted
DEVKIT_TRUTH, DEVKIT_META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
KAGGLE_ROOT = Path("ILSVRC/Data/CLS-LOC")  # inside Kaggle's download; the labels sit three folders up
HF_TRAIN, HF_VAL, HF_TEST = "train_images_*.tar.gz", "val_images.tar.gz", "test_images.tar.gz"  # SRC/data/
SYNSET_MAPPING = "LOC_synset_mapping.txt"  # Kaggle's class names: "n01440764 tench, Tinca tinca" per line


# ---------------------------------------------------------------- .tar.gz archives, read in place


class GzIndex:
    """The seek indexes of .tar.gz archives, kept in `folder`: one decompressing pass per archive (`scan`) lists
    its members and writes its rapidgzip index, both reused while the archive's size and mtime stay the same;
    `read` then seeks through the index to any member. Sent to another process (pickled) it travels as its
    folder, and there is that process's one GzIndex of the folder (`at`), whose open files it reuses."""

    _per_process: dict[Path, GzIndex] = {}

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._open: dict[str, object] = {}  # archive path -> an open rapidgzip file with its index

    @classmethod
    def at(cls, folder: Path) -> GzIndex:
        """This process's GzIndex of `folder`."""
        folder = Path(folder)
        if folder not in cls._per_process:
            cls._per_process[folder] = cls(folder)
        return cls._per_process[folder]

    def __reduce__(self):
        return GzIndex.at, (self.folder,)

    def _paths(self, archive: Path) -> tuple[Path, Path]:
        """The member listing and the seek index of `archive`."""
        return self.folder / (archive.name + ".json"), self.folder / (archive.name + ".rgidx")

    def members(self, archive: str) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
        """(name, offset, size) of the regular files in one .tar.gz, offsets in the decompressed stream, and (name,
        reason) of its links and special files (`_not_regular`)."""
        path = Path(archive)
        st = path.stat()
        listing, index = self._paths(path)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if listing.is_file() and index.is_file():
            rec = json.loads(listing.read_text())
            if rec.get("archive") == stamp and "not_regular" in rec:  # a listing from before lacks them: rescan
                return [tuple(m) for m in rec["members"]], [tuple(m) for m in rec["not_regular"]]
        rg = _rapidgzip()
        members, other = [], []
        tag = process_tag()  # the parts of one prepare may index an archive at once: each under its own name
        for leftover in (index, listing):
            remove_dead_temporaries(leftover)
        try:
            with rg.RapidgzipFile(str(path), parallelization=1) as f:
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if m.isfile():
                            members.append((m.name, m.offset_data, m.size))
                        elif why := _not_regular(m):
                            other.append((m.name, why))
                f.export_index(str(temporary(index, tag)))
        except (tarfile.TarError, OSError, RuntimeError, ValueError) as e:
            temporary(index, tag).unlink(missing_ok=True)
            raise PrepareError(f"{path}: not a readable .tar.gz ({_first_line(e)})") from None
        os.replace(temporary(index, tag), index)
        atomic_write(listing, json.dumps({"archive": stamp, "members": members, "not_regular": other}), tag)
        return members, other

    def scan(
        self, archives: list[Path], workers: int | None
    ) -> list[tuple[list[tuple[str, int, int]], list[tuple[str, str]]]]:
        """`members` of every archive, one process per archive: the decompression is not serialised on one core."""
        from concurrent.futures import ProcessPoolExecutor

        self.folder.mkdir(parents=True, exist_ok=True)
        jobs = [str(a) for a in archives]
        n = max(1, min(len(jobs), workers or cores()))
        if n == 1:
            return [self.members(j) for j in jobs]
        with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
            return list(pool.map(self.members, jobs))

    def read(self, archive: str, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of the decompressed stream of `archive`, one of the archives scanned."""
        f = self._open.get(archive)
        if f is None:
            import atexit

            f = _rapidgzip().RapidgzipFile(archive, parallelization=1)
            f.import_index(str(self._paths(Path(archive))[1]))
            if not self._open:
                atexit.register(self.close)  # rapidgzip aborts an interpreter that exits with a file open
            self._open[archive] = f
        f.seek(offset)
        return f.read(size)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def _rapidgzip():
    try:
        import rapidgzip
    except ImportError:
        raise PrepareError("reading .tar.gz archives in place needs rapidgzip (pip install rapidgzip)") from None
    return rapidgzip


@dataclass(frozen=True)
class Item:
    """One input image: a plain file (offset < 0) or a byte range inside an archive (of a .tar.gz: inside its
    decompressed stream, read through `gz`)."""

    key: str  # file stem: n01440764_10026, ILSVRC2012_val_00000001
    label: int
    path: str
    offset: int = -1
    size: int = -1
    gz: GzIndex | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.path}:{self.key}" if self.offset >= 0 else self.path

    def read(self) -> bytes:
        if self.offset < 0:
            with open(self.path, "rb") as f:
                return f.read()
        if self.gz is not None:
            return self.gz.read(self.path, self.offset, self.size)
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), self.size, self.offset)


# ---------------------------------------------------------------- scanning the input


def _key(name: str, where: str) -> str:
    """The sample key of a file name: its stem. Shards store it as `safe_key(key)` (alexdata/shards.py)."""
    key = name.rsplit(".", 1)[0]
    if "/" in key or not key:
        raise PrepareError(f"{where}: no sample key in the file name {key!r}")
    return key


def _not_regular(m: tarfile.TarInfo) -> str | None:
    """Why the tar member `m` is not read as an image (a link or a device has no image bytes of its own, and
    following a link could read outside the archive); None for a regular file or a folder."""
    if m.isfile() or m.isdir():
        return None
    if m.issym():
        return f"a symbolic link (to {m.linkname!r}) in the archive: not followed"
    if m.islnk():
        return f"a hard link (to {m.linkname!r}) in the archive: not followed"
    return "a device, FIFO or other special file in the archive: not a regular file"


def _tar_members(path: Path, notes: list[dict], offset: int = 0, where: str | None = None):
    """(name, absolute data offset, size) of the regular files in the tar starting at `offset` in `path`; links and
    special files go to `notes` as skipped, named `where:member` (`where` defaults to `path`)."""
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        yield m.name, m.offset_data, m.size
                    elif why := _not_regular(m):
                        notes.append({"file": f"{where or path}:{m.name}", "reason": why})
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
        for name, off, _ in list(_tar_members(tar, notes)):
            if not name.endswith(".tar"):
                notes.append({"file": f"{tar}:{name}", "reason": "not a per-class tar"})
                continue
            w = Path(name).stem
            inner = [
                (w, Path(n).name, str(tar), o, s)
                for n, o, s in _tar_members(tar, notes, off, f"{tar}:{name}")
                if not Path(n).name.startswith(".")
            ]
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
    raise PrepareError(
        f"{src}: found none of train/, {TRAIN_TAR}, Kaggle's {KAGGLE_ROOT}/ or Hugging Face's data/{HF_TRAIN}{hint}"
    )


def _hf_name(member: str, where: str) -> tuple[str, str]:
    """(sample key, wnid) of a Hugging Face member `<original stem>_<wnid>.JPEG`."""
    stem = Path(member).name.rsplit(".", 1)[0]
    key, sep, w = stem.rpartition("_")
    if not sep or not key or not w:
        raise PrepareError(f"{where}:{member}: expected a name <stem>_<wnid>.JPEG")
    return _key(f"{key}.JPEG", f"{where}:{member}"), w


def _scan_hf(data: Path, gz: GzIndex, workers: int | None, notes: list[dict]):
    """Training classes and inputs, and the val entries (key, path, offset, size, wnid), of the repository."""
    archives = sorted(data.glob(HF_TRAIN))
    val = data / HF_VAL
    if (data / HF_TEST).is_file():
        notes.append({"file": str(data / HF_TEST), "reason": "unlabelled test images: left out", "left_out": True})
    listed = gz.scan(archives + ([val] if val.is_file() else []), workers)
    for a, (_, other) in zip(archives + [val], listed):
        notes += [{"file": f"{a}:{name}", "reason": why} for name, why in other]
    listed = [members for members, _ in listed]
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


def _label_file(p: Path) -> tuple[Path, dict[str, str], bool]:
    """(where, {val key: wnid}, whether line n labels val image n) from `--val-labels`: a Kaggle CSV, the devkit
    (.tar.gz or folder), or `<stem> <wnid>` lines."""
    if p.is_dir() or p.name.endswith(".tar.gz"):
        found = _devkit_at(p)
        if found is None:
            raise PrepareError(f"{p}: no such devkit")
        return found[0], devkit_labels(*found), True
    if not p.is_file():
        raise PrepareError(f"{p}: no such file (--val-labels)")
    if p.suffix.lower() == ".csv":
        return p, _csv_labels(p), False
    labels = {}
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) != 2:
            raise PrepareError(f"{p}: line {n} is {line.strip()[:60]!r}, expected '<stem> <wnid>'")
        key = f[0].rsplit(".", 1)[0] if f[0].lower().endswith((".jpeg", ".jpg", ".png")) else f[0]
        if key in labels:  # two labels for one image: neither can be trusted
            raise PrepareError(f"{p}: line {n} labels {key!r} a second time")
        labels[key] = f[1]
    if not labels:
        raise PrepareError(f"{p}: no '<stem> <wnid>' lines")
    return p, labels, False


def _read_val_labels(dirs: list[Path]) -> tuple[Path, dict[str, str], bool]:
    """(where the labels came from, {val key: wnid}, whether they are the devkit's: one line per val image) from
    the Kaggle CSV or the official devkit in `dirs`."""
    for d in dirs:
        for p in (d / VAL_LABELS, d / "val" / VAL_LABELS):
            if p.is_file():
                return p, _csv_labels(p), False
    for d in dirs:
        found = _devkit_files(d)
        if found:
            return found[0], devkit_labels(*found), True
    raise PrepareError(
        f"{dirs[0]}: flat val images need labels: {VAL_LABELS} (in {dirs[-1]} or its val/), the "
        f"devkit {DEVKIT}.tar.gz (or its extracted folder), or --val-labels FILE"
    )


def _csv_labels(p: Path) -> dict[str, str]:
    labels = {}
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rd = csv.DictReader(f)
            if not rd.fieldnames or not {"ImageId", "PredictionString"} <= set(rd.fieldnames):
                raise PrepareError(f"{p}: expected columns ImageId,PredictionString, got {rd.fieldnames}")
            for row in rd:
                pred = (row["PredictionString"] or "").split()
                if not pred:
                    raise PrepareError(f"{p}: {row['ImageId']} has an empty PredictionString")
                if row["ImageId"] in labels:  # a later row would silently win: neither can be trusted
                    raise PrepareError(f"{p}: ImageId {row['ImageId']!r} appears twice (line {rd.line_num})")
                labels[row["ImageId"]] = pred[0]
    except (UnicodeDecodeError, csv.Error) as e:
        raise PrepareError(f"{p}: not a UTF-8 CSV file ({_first_line(e)})") from None
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
        raise PrepareError(
            f"{where}: {DEVKIT_META} is not the devkit's synset table ({type(e).__name__}: {_first_line(e)})"
        ) from None
    lines = truth.decode("ascii", "replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    labels = {}
    for n, line in enumerate(lines, 1):  # one ID per line: a blank or doubled line would shift every later label
        if not line.strip().isdigit() or int(line) not in wnid_of:
            raise PrepareError(
                f"{where}: line {n} of {DEVKIT_TRUTH} is {line!r}, not one ILSVRC2012_ID of {DEVKIT_META}"
            )
        labels[f"ILSVRC2012_val_{n:08d}"] = wnid_of[int(line)]
    return labels


def find_class_names(src: str | os.PathLike, wnids: list[str]) -> tuple[list[str | None] | None, str | None]:
    """(a human-readable name per wnid, in their order, None where the source names none; a note when the names are
    there but cannot be read), from Kaggle's LOC_synset_mapping.txt or else the devkit's meta.mat (its `words`,
    read with scipy when it is installed). (None, None) when the source has neither (the Hugging Face layout)."""
    dirs = layout(Path(src))[2]
    for d in dirs:
        p = d / SYNSET_MAPPING
        if p.is_file():
            pairs = (line.strip().partition(" ") for line in p.read_text(errors="replace").splitlines())
            return _in_order({w: name.strip() for w, _, name in pairs if w and name.strip()}, wnids), None
    for d in dirs:
        try:
            found = _devkit_files(d)
        except PrepareError:  # a damaged devkit: the val labels say so when they need it
            found = None
        if found is None:
            continue
        try:
            import scipy.io
        except ImportError:
            return None, f"{found[0]}: class names not recorded (reading its meta.mat needs scipy: pip install scipy)"
        try:
            syn = scipy.io.loadmat(io.BytesIO(found[2]), squeeze_me=True)["synsets"]
            return _in_order({str(w): str(t) for w, t in zip(syn["WNID"], syn["words"])}, wnids), None
        except Exception as e:  # scipy raises many kinds on a file that is not a MAT file
            return None, f"{found[0]}: class names not recorded ({DEVKIT_META}: {type(e).__name__})"
    return None, None


def _in_order(names: dict[str, str], wnids: list[str]) -> list[str | None] | None:
    got = [names.get(w) for w in wnids]
    return got if any(got) else None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _scan_val(
    src: Path,
    classes: dict[str, int],
    notes: list[dict],
    label_dirs: list[Path],
    val_labels: Path | None,
    entries: list | None = None,
    gz: GzIndex | None = None,
) -> list[Item]:
    """Val items in key order. `entries` (key, path, offset, size, wnid from the name) come from a Hugging Face
    archive, read through `gz`; otherwise SRC/val/ or ILSVRC2012_img_val.tar is listed here."""
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
        listed = [
            (_key(p.name, str(p)), str(p), -1, -1)
            for p in files
            if p.is_file() and not p.name.startswith(".") and p.name != VAL_LABELS
        ]
    elif vtar.is_file():
        listed = [(_key(Path(n).name, f"{vtar}:{n}"), str(vtar), o, s) for n, o, s in _tar_members(vtar, notes)]
    else:
        notes.append({"file": str(src), "reason": "no val/ or ILSVRC2012_img_val.tar: no val split written"})
        return []
    if val_labels is not None:
        label_path, labels, by_line = _label_file(val_labels)
    elif named:
        label_path, labels, by_line = Path(listed[0][1]), named, False
    else:
        label_path, labels, by_line = _read_val_labels(label_dirs)
    if by_line and len(labels) != len(listed):
        # Line n labels val image n: a line too many or too few means the file is not this val set's, or is
        # damaged, and a missing line shifts every later label without a single lookup failing.
        raise PrepareError(
            f"{label_path}: {DEVKIT_TRUTH} has {len(labels)} lines, the val set {len(listed)} images; "
            f"line n must label ILSVRC2012_val_<n> of exactly these images"
        )
    items = []
    for key, path, off, size in listed:
        where = path if off < 0 else f"{path}:{key}"
        if key not in labels:
            raise PrepareError(f"{where}: no label in {label_path}")
        if labels[key] not in classes:
            raise PrepareError(f"{label_path}: {key} names unknown class {labels[key]!r} (not in train)")
        items.append(Item(key, classes[labels[key]], path, off, size, gz))
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


def looks_like_source(path: Path) -> bool:
    """Whether `path` holds raw ImageNet in one of the layouts `layout` knows (a hint for swapped arguments)."""
    kind, root, _ = layout(path)
    return kind != "tree" or (root / "train").is_dir()


def scan(
    src: str | os.PathLike,
    *,
    val_labels: str | os.PathLike | None = None,
    index_dir: Path | None = None,
    workers: int | None = None,
) -> tuple[list[str], list[Item], list[Item], list[dict]]:
    """(classes, train items in sorted order, val items in key order, notes) for SRC; raises PrepareError.

    val_labels: a label file overriding discovery. index_dir: where the seek indexes of .tar.gz archives go
    (default: a temporary folder). Notes with "left_out" are inputs not prepared on purpose (unlabelled tests)."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such directory")
    notes: list[dict] = []
    kind, root, label_dirs = layout(src)
    hf_val, gz = None, None
    if kind == "hf":
        if index_dir is None:  # a listing only (bench prepare): the indexes go with the process
            import atexit

            index_dir = Path(tempfile.mkdtemp(prefix="alexnet-gzindex-"))
            atexit.register(shutil.rmtree, index_dir, True)
        gz = GzIndex.at(index_dir)
        wnids, found, hf_val = _scan_hf(root, gz, workers, notes)
    else:
        wnids, found = _scan_train(root, notes)
        if kind == "kaggle" and (root / "test").is_dir():
            n = sum(1 for p in (root / "test").iterdir() if p.is_file())
            why = f"{plural(n, 'unlabelled test image')}: left out"
            notes.append({"file": str(root / "test"), "reason": why, "left_out": True})
    if len(wnids) > 10**MAX_LABEL_DIGITS:
        raise PrepareError(f"{src}: {len(wnids)} classes; labels are stored as at most {MAX_LABEL_DIGITS} digits")
    classes = {w: i for i, w in enumerate(wnids)}  # class index = position of the wnid in sorted order
    train = sorted(
        (
            Item(_key(fname, p if off < 0 else f"{p}:{fname}"), classes[w], p, off, size, gz)
            for w, fname, p, off, size in found
        ),
        key=lambda it: (it.label, it.key),
    )
    val = _scan_val(root, classes, notes, label_dirs, Path(val_labels) if val_labels else None, hf_val, gz)
    for split, items in (("train", train), ("val", val)):
        seen: set[str] = set()
        for it in items:
            stored = safe_key(it.key)
            if it.key in seen or stored in seen:
                raise PrepareError(f"{printable(it.name)}: duplicate {split} key {stored!r}")
            seen.update((it.key, stored))
    return wnids, train, val, notes
