"""The three ways users get ImageNet (image-net.org, Kaggle, Hugging Face), --val-labels, the disk-space checks."""

import csv
import errno
import json
import shutil

import pytest
from conftest import PREP, SYNTH, run_cli, tree_files

import alexdata.prepare as prep
from alexdata.errors import PrepareError
from alexdata.prepare import prepare
from alexdata.synth import SynthConfig, make_synth

QUIET = dict(progress=False, log=lambda *a: None)


def _shards(d):
    return {n: b for n, b in tree_files(d).items() if n.endswith((".tar", ".idx")) and "/" not in n}


def _key_of(entry: str) -> str:
    """The sample key in a skipped entry's file: a path, `archive:key` or a Hugging Face member."""
    name = entry.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name.split(".", 1)[0]


@pytest.mark.parametrize("layout", ["kaggle", "hf"])
def test_every_layout_gives_the_trees_shards_byte_for_byte(prepared, tmp_path, layout):
    raw = tmp_path / "raw"
    make_synth(raw, SynthConfig(**{**SYNTH.__dict__, "layout": layout}), workers=2, progress=False)
    man = prepare(raw, tmp_path / "out", PREP, workers=2, **QUIET)
    ref_man = json.loads((prepared / "manifest.json").read_text())
    ref, got = _shards(prepared), _shards(tmp_path / "out")
    assert ref and got == ref
    assert sorted((_key_of(s["file"]), s["reason"]) for s in man["skipped"]) == sorted(
        (_key_of(s["file"]), s["reason"]) for s in ref_man["skipped"]
    )
    assert man["train"] == ref_man["train"] and man["val"] == ref_man["val"]  # counts, sizes, hashes
    left = man["left_out"]
    assert len(left) == 1 and "unlabelled test images" in left[0]["reason"]
    assert ("test" if layout == "kaggle" else "test_images.tar.gz") in left[0]["file"]
    # The same command again writes no shard (for hf: the archives' listings and seek indexes are reused).
    before = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    prepare(raw, tmp_path / "out", PREP, workers=2, **QUIET)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_kaggle_cls_loc_folder_as_src_finds_the_labels_three_folders_up(prepared, tmp_path):
    raw = tmp_path / "raw"
    make_synth(raw, SynthConfig(**{**SYNTH.__dict__, "layout": "kaggle"}), workers=2, progress=False)
    prepare(raw / "ILSVRC" / "Data" / "CLS-LOC", tmp_path / "out", PREP, workers=2, **QUIET)
    assert _shards(tmp_path / "out") == _shards(prepared)


def _tree_without_labels(synth_tree, dst):
    shutil.copytree(synth_tree, dst)
    (dst / "LOC_val_solution.csv").unlink()
    with open(synth_tree / "LOC_val_solution.csv", newline="") as f:
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}


@pytest.mark.parametrize("form", ["plain", "csv", "devkit"])
def test_val_labels_file_of_any_form(prepared, synth_tree, tmp_path, form):
    src = tmp_path / "src"
    labels = _tree_without_labels(synth_tree, src)
    if form == "plain":
        f = tmp_path / "labels.txt"
        f.write_text("".join(f"{k}.JPEG {w}\n" if i % 2 else f"{k} {w}\n" for i, (k, w) in enumerate(labels.items())))
    elif form == "csv":
        f = tmp_path / "elsewhere.csv"
        shutil.copy(synth_tree / "LOC_val_solution.csv", f)
    else:
        arch = tmp_path / "arch"
        make_synth(arch, SynthConfig(**{**SYNTH.__dict__, "layout": "archives"}), workers=2, progress=False)
        f = arch / "ILSVRC2012_devkit_t12.tar.gz"
    r = run_cli(
        "prepare",
        src,
        tmp_path / "out",
        "--shard-size",
        PREP.shard_size,
        "--seed",
        PREP.seed,
        "--val-labels",
        f,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert _shards(tmp_path / "out") == _shards(prepared)


def test_val_labels_override_discovery_and_bad_files_are_one_line(synth_tree, tmp_path):
    src = tmp_path / "src"
    labels = _tree_without_labels(synth_tree, src)
    shutil.copy(synth_tree / "LOC_val_solution.csv", src)  # discovery would find this one ...
    first = next(iter(labels))
    wrong = tmp_path / "wrong.txt"  # ... but the override wins: a label of an unknown class
    wrong.write_text("".join(f"{k} {'n00000001' if k == first else w}\n" for k, w in labels.items()))
    for f, culprit in ((wrong, "n00000001"), (tmp_path / "missing.txt", "no such file")):
        r = run_cli("prepare", src, tmp_path / "out", "--val-labels", f, check=False)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(err) == 1 and culprit in err[0], r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001 n01440764 extra\n")
    with pytest.raises(PrepareError, match="line 1 .* expected '<stem> <wnid>'"):
        prepare(src, tmp_path / "out2", PREP, val_labels=bad, **QUIET)


def test_not_enough_space_is_refused_before_writing(synth_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "free_bytes", lambda path: 10_000)
    with pytest.raises(PrepareError, match=r"needs about .* MB for 60 images .* has 0.0 MB free") as e:
        prepare(synth_tree, tmp_path / "out", PREP, workers=2, **QUIET)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "out").glob("*.tar"))
    # The estimate, from a sample of the inputs, is within 25 % of what prepare then writes.
    monkeypatch.undo()
    est = {}
    monkeypatch.setattr(prep, "free_bytes", lambda path: est.setdefault("free", 0))
    with pytest.raises(PrepareError, match=r"needs about ([0-9.]+) MB") as e:
        prepare(synth_tree, tmp_path / "out2", PREP, workers=2, **QUIET)
    need = float(str(e.value).split("needs about ")[1].split(" MB")[0]) * 1e6
    monkeypatch.undo()
    prepare(synth_tree, tmp_path / "out2", PREP, workers=2, **QUIET)
    wrote = sum(p.stat().st_size for p in (tmp_path / "out2").glob("*-*.*"))
    assert 0.75 < need / wrote < 1.25, (need, wrote)


def test_a_full_disk_is_one_line_and_the_same_command_resumes(prepared, synth_tree, tmp_path, monkeypatch):
    real = prep.atomic_write

    def fill_up(path, data, *tag):  # the disk fills on the third shard: workers are forked, so they see this too
        if str(path).endswith(".tar") and "train-000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, *tag)

    monkeypatch.setattr(prep, "atomic_write", fill_up)
    with pytest.raises(
        PrepareError,
        match=r"train-000002.tar: disk full while writing .*B free\); free some "
        r"space and run the same command again to resume",
    ) as e:
        prepare(synth_tree, tmp_path / "out", PREP, workers=1, **QUIET)
    assert "\n" not in str(e.value) and not list((tmp_path / "out").glob("*.tmp"))
    monkeypatch.undo()
    prepare(synth_tree, tmp_path / "out", PREP, workers=2, **QUIET)
    assert tree_files(tmp_path / "out") == tree_files(prepared)


def _read(item) -> bytes:
    return item.read()


def test_an_archive_member_reads_the_same_in_a_fresh_process(tmp_path):
    """A .tar.gz member's Item carries its archive's seek index (alexdata/sources.py GzIndex) to a worker as the
    index's folder: a spawned process, which inherits nothing of the scan, reads the same bytes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from alexdata.sources import scan

    raw = tmp_path / "raw"
    make_synth(
        raw,
        SynthConfig(classes=2, train_per_class=3, val_per_class=1, oddities=False, layout="hf"),
        workers=2,
        progress=False,
    )
    _, train, val, _ = scan(raw, index_dir=tmp_path / "gzindex", workers=1)
    items = train[:2] + val[:1]
    assert all(it.path.endswith(".tar.gz") and it.gz is not None for it in items)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        assert list(pool.map(_read, items)) == [it.read() for it in items]


def _add_specials(tar_bytes: bytes, gz: bool = False) -> bytes:
    """`tar_bytes` (a tar, or a .tar.gz with `gz`) with a symbolic link, a hard link and a character device added."""
    import gzip
    import io
    import tarfile

    raw = gzip.decompress(tar_bytes) if gz else tar_bytes
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        first = None
        for m in src:
            dst.addfile(m, src.extractfile(m))
            first = first or m.name
        for name, kind in (
            ("sym.JPEG", tarfile.SYMTYPE),
            ("hard.JPEG", tarfile.LNKTYPE),
            ("dev.JPEG", tarfile.CHRTYPE),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, first if kind != tarfile.CHRTYPE else ""
            dst.addfile(info)
    return gzip.compress(buf.getvalue(), mtime=0) if gz else buf.getvalue()


@pytest.mark.parametrize("layout", ["archives", "hf"])
def test_links_and_devices_in_archives_are_listed_as_skipped(tmp_path, layout):
    """Tar members that are links or devices (and a per-class tar that is a link) carry no image bytes of their
    own: each is named in manifest.json's skipped entries with its reason and counted in the summary line."""
    import io
    import tarfile

    raw = tmp_path / "raw"
    cfg = SynthConfig(classes=2, train_per_class=3, val_per_class=1, oddities=False, layout=layout)
    make_synth(raw, cfg, workers=2, progress=False)
    if layout == "archives":
        train = raw / "ILSVRC2012_img_train.tar"
        buf = io.BytesIO()
        with tarfile.open(train) as src, tarfile.open(fileobj=buf, mode="w") as dst:
            for j, m in enumerate(src):
                blob = src.extractfile(m).read()
                if j == 0:
                    blob = _add_specials(blob)
                    m.size = len(blob)
                dst.addfile(m, io.BytesIO(blob))
            link = tarfile.TarInfo("n99999999.tar")  # a symlinked class archive
            link.type, link.linkname = tarfile.SYMTYPE, m.name
            dst.addfile(link)
        train.write_bytes(buf.getvalue())
        val = raw / "ILSVRC2012_img_val.tar"
        val.write_bytes(_add_specials(val.read_bytes()))
        want = 3 + 1 + 3
    else:
        val = raw / "data" / "val_images.tar.gz"
        val.write_bytes(_add_specials(val.read_bytes(), gz=True))
        want = 3
    lines = []
    man = prepare(raw, tmp_path / "out", PREP, workers=1, progress=False, log=lines.append)
    reasons = [s["reason"] for s in man["skipped"]]
    assert len(reasons) == want, man["skipped"]
    assert sum("symbolic link" in r for r in reasons) == (3 if layout == "archives" else 1)
    assert sum("hard link" in r for r in reasons) == want // 3 and sum("device" in r for r in reasons) == want // 3
    if layout == "archives":
        assert any(s["file"].endswith(":n99999999.tar") for s in man["skipped"])
    assert man["train"]["images"] == 6 and man["val"]["images"] == 2
    assert f"skipped {want} (listed in manifest.json)" in lines[-1]
