import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from conftest import PREP, ROOT, SYNTH, damaged_jpegs, env_with_path, limit, run_cli, tree_files
from PIL import Image

from alexdata.errors import DataError
from alexdata.prepare import PrepareConfig, prepare, resize_to_jpeg
from alexdata.shards import wds_index
from alexdata.synth import SynthConfig, make_synth, wnid

QUIET = dict(progress=False, log=lambda *a: None)
SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # tarfile's extraction filter: 3.11.4+


def read_split(out, split):
    """{key: (label, PIL image)} of every sample in a split's shards, read with tarfile."""
    man = json.loads((out / "manifest.json").read_text())
    samples = {}
    for sh in man[split]["shards"]:
        with tarfile.open(out / sh["file"]) as tf:
            members = tf.getmembers()
            assert [m.name.split(".", 1)[1] for m in members] == ["jpg", "cls"] * (len(members) // 2)
            for jpg, cls in zip(members[::2], members[1::2]):
                key = jpg.name[:-4]
                assert cls.name == key + ".cls"
                samples[key] = (
                    int(tf.extractfile(cls).read().decode("ascii")),
                    Image.open(io.BytesIO(tf.extractfile(jpg).read())),
                )
            assert len(members) // 2 == sh["images"]
    return man, samples


def test_tree_with_flat_val(prepared, synth_tree):
    man, train = read_split(prepared, "train")
    _, val = read_split(prepared, "val")
    wnids = [wnid(k) for k in range(SYNTH.classes)]
    assert man["classes"] == wnids
    odd = json.loads((synth_tree / "synth.json").read_text())["oddities"]
    # every input is either in the data or listed with its reason: nothing is lost silently
    n_inputs = SYNTH.classes * SYNTH.train_per_class
    assert len(train) == man["train"]["images"] == n_inputs - 2
    reasons = {os.path.relpath(s["file"], synth_tree): s["reason"] for s in man["skipped"]}
    assert set(reasons) == {odd["truncated"], odd["empty"]}
    assert "truncated" in reasons[odd["truncated"]] and reasons[odd["empty"]] == "empty file"
    for key, (label, im) in train.items():  # label = position of the key's wnid in sorted order
        assert label == wnids.index(key.split("_")[0])
        assert im.mode == "RGB" and min(im.size) == 256
    for kind in ("cmyk", "grayscale", "png"):  # decoded to RGB, kept
        assert os.path.basename(odd[kind])[:-5] in train
    with open(synth_tree / "LOC_val_solution.csv") as f:
        truth = {r["ImageId"]: wnids.index(r["PredictionString"].split()[0]) for r in csv.DictReader(f)}
    assert {k: lab for k, (lab, _) in val.items()} == truth
    small = [p for p in man["upscaled"]]
    assert all(min(Image.open(p).size) < 256 for p in small)
    n_small = sum(
        min(Image.open(p).size) < 256
        for p in (synth_tree / "train").rglob("*.JPEG")
        if p.stat().st_size and os.path.relpath(p, synth_tree) != odd["truncated"]
    )
    n_small += sum(min(Image.open(p).size) < 256 for p in (synth_tree / "val").iterdir())
    assert len(small) == n_small


def test_training_order_is_shuffled_across_shards(prepared):
    man = json.loads((prepared / "manifest.json").read_text())
    with tarfile.open(prepared / man["train"]["shards"][0]["file"]) as tf:
        labels = [int(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".cls")]
    assert len(set(labels)) > 1


def test_index_matches_dalis_wds2idx(prepared, tmp_path):
    """Our index equals the one DALI's own wds2idx tool writes for the same tar."""
    wds2idx = shutil.which("wds2idx", path=os.path.dirname(sys.executable))
    if wds2idx is None:
        pytest.skip("DALI's wds2idx not installed beside this Python")
    for tar in sorted(prepared.glob("*.tar"))[:2]:
        subprocess.run(
            [wds2idx, str(tar), str(tmp_path / "ref.idx")], check=True, capture_output=True, timeout=limit(300)
        )
        assert (prepared / (tar.stem + ".idx")).read_text() == (tmp_path / "ref.idx").read_text()


def test_resize_matches_plain_pil_reference():
    """The DCT-domain draft path gives nearly the image a full decode + antialiased resize gives."""
    from alexdata.synth import render

    rng = np.random.default_rng(0)
    im = render(2, 5, rng, size=(1200, 900))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    out, up = resize_to_jpeg(buf.getvalue(), 256, 95)
    got = np.asarray(Image.open(io.BytesIO(out)), np.float64)
    ref = np.asarray(
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((341, 256), Image.BICUBIC), np.float64
    )
    assert got.shape == ref.shape == (256, 341, 3) and not up
    assert np.abs(got - ref).mean() < 3.0  # JPEG re-encoding + IDCT scaling, on a 0-255 scale


def test_upscales_small_images():
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (10, 200, 30)).save(buf, "JPEG", quality=95)
    out, up = resize_to_jpeg(buf.getvalue(), 256, 90)
    im = Image.open(io.BytesIO(out))
    assert up and im.size == (512, 256)
    assert np.abs(np.asarray(im, np.float64).mean((0, 1)) - [10, 200, 30]).max() < 3


def test_val_in_class_folders_gives_same_labels(prepared, synth_tree, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_tree / "train", src / "train")
    with open(synth_tree / "LOC_val_solution.csv") as f:
        for r in csv.DictReader(f):
            d = src / "val" / r["PredictionString"].split()[0]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(synth_tree / "val" / f"{r['ImageId']}.JPEG", d)
    prepare(src, tmp_path / "out", PREP, workers=2, **QUIET)
    ref = tree_files(prepared)
    got = tree_files(tmp_path / "out")
    for name in ref:
        if name.endswith((".tar", ".idx")):
            assert got[name] == ref[name], name


def _val_labels(src):
    from alexdata.sources import scan

    _, _, val, _ = scan(src)
    return {it.key: it.label for it in val}


def _src_with_devkit(synth_tree, tmp_path, devkit: str):
    """A copy of the synth tree whose val labels come from a devkit instead of the Kaggle CSV: devkit "gz" (the
    .tar.gz as downloaded), "extracted" (its folder), or "none" (no labels at all)."""
    from alexdata.synth import write_devkit

    src = tmp_path / "src"
    shutil.copytree(synth_tree, src, ignore=shutil.ignore_patterns("LOC_val_solution.csv"))
    if devkit == "none":
        return src
    with open(synth_tree / "LOC_val_solution.csv") as f:
        truth = {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}
    write_devkit(src, sorted(set(truth.values())), truth, seed=0)
    if devkit == "extracted":
        gz = src / "ILSVRC2012_devkit_t12.tar.gz"
        with tarfile.open(gz) as tf:
            tf.extractall(src, **SAFE)
        gz.unlink()
    return src


@pytest.mark.parametrize("devkit", ["gz", "extracted"])
def test_devkit_labels_equal_the_csv(synth_tree, tmp_path, devkit):
    """The official devkit (ground truth IDs + meta.mat), as the .tar.gz or extracted, labels every val image as
    the Kaggle CSV does; its IDs are not in sorted-WNID order, so only meta.mat can map them."""
    from alexdata.synth import devkit_ids

    classes = sorted({wnid(k) for k in range(SYNTH.classes)})
    ids = devkit_ids(classes, 0)
    assert [ids[w] for w in classes] != list(range(1, len(classes) + 1))
    assert _val_labels(_src_with_devkit(synth_tree, tmp_path, devkit)) == _val_labels(synth_tree)


@pytest.mark.parametrize(
    "case", ["unknown_id", "blank_line", "extra_line", "missing_line", "not_mat", "no_labels", "corrupt_gzip"]
)
def test_bad_devkit_is_one_line_error(synth_tree, tmp_path, case):
    devkit = {"no_labels": "none", "corrupt_gzip": "gz"}.get(case, "extracted")
    src = _src_with_devkit(synth_tree, tmp_path, devkit)
    data = src / "ILSVRC2012_devkit_t12" / "data"
    if case == "corrupt_gzip":  # bytes flipped inside the deflate stream: a bad block or a CRC mismatch
        gz = src / "ILSVRC2012_devkit_t12.tar.gz"
        raw = bytearray(gz.read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 8):
            raw[i] ^= 0x55
        gz.write_bytes(bytes(raw))
        culprit = "not a readable .tar.gz"
    elif case in ("unknown_id", "blank_line"):
        lines = (data / "ILSVRC2012_validation_ground_truth.txt").read_text().splitlines()
        lines[2] = "977" if case == "unknown_id" else ""  # a blank line must not shift the later labels
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
        culprit = "line 3"
    elif case in ("extra_line", "missing_line"):  # line n labels image n: one line more or less shifts them all
        truth = data / "ILSVRC2012_validation_ground_truth.txt"
        lines = truth.read_text().splitlines()
        n = len(lines)
        lines = lines + lines[:1] if case == "extra_line" else lines[:1] + lines[2:]
        truth.write_text("\n".join(lines) + "\n")
        culprit = f"{len(lines)} lines, the val set {n} images"
    elif case == "not_mat":
        (data / "meta.mat").write_bytes(b"not a MAT file")
        culprit = "meta.mat"
    else:
        culprit = "ILSVRC2012_devkit_t12"
    r = run_cli("prepare", src, tmp_path / "out", check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and err[0].startswith("Error:") and culprit in err[0], r.stderr
    assert _no_shards(tmp_path / "out")


def test_archives_give_identical_shards(prepared, tmp_path):
    """The original tars, read in place, give byte-identical shards to the extracted tree (val labels from the
    devkit there, from the Kaggle CSV here)."""
    make_synth(tmp_path / "raw", SynthConfig(**{**SYNTH.__dict__, "layout": "archives"}), workers=2, progress=False)
    assert not (tmp_path / "raw" / "train").exists() and not (tmp_path / "raw" / "LOC_val_solution.csv").exists()
    man = prepare(tmp_path / "raw", tmp_path / "out", PREP, workers=2, **QUIET)
    ref, got = tree_files(prepared), tree_files(tmp_path / "out")
    shards = [n for n in ref if n.endswith((".tar", ".idx"))]
    assert shards and all(got[n] == ref[n] for n in shards)
    assert sorted(n for n in got if n.endswith(".tar")) == sorted(n for n in ref if n.endswith(".tar"))
    assert len(man["skipped"]) == 2 and all("ILSVRC2012_img_train.tar:" in s["file"] for s in man["skipped"])


def test_rerun_is_byte_identical_and_writes_nothing(prepared, synth_tree, tmp_path):
    prepare(synth_tree, tmp_path / "a", PREP, workers=1, **QUIET)
    assert tree_files(tmp_path / "a") == tree_files(prepared)  # other worker count, same bytes
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").glob("*.tar")}
    prepare(synth_tree, tmp_path / "a", PREP, workers=2, **QUIET)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").glob("*.tar")} == before


def test_resume_writes_only_missing_shards(prepared, synth_tree, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    shards = sorted(out.glob("train-*.tar"))
    shards[1].unlink()  # as if killed before this shard's rename ...
    (out / ".prepare" / f"{shards[1].stem}.json").unlink()
    (out / f"{shards[2].name}.part-0-of-1.tmp").write_bytes(b"half a shard")  # ... while this one was being written
    (out / "manifest.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in shards if p != shards[1]}
    prepare(synth_tree, out, PREP, workers=2, **QUIET)
    assert tree_files(out) == tree_files(prepared)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_resume_after_sigkill(prepared, synth_tree, tmp_path):
    """A real `kill -9` mid-run, then the same command: the result equals an uninterrupted run."""
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(ROOT / "cli.py"),
        "prepare",
        str(synth_tree),
        str(out),
        "--shard-size",
        "2",
        "--seed",
        str(PREP.seed),
        "--workers",
        "1",
    ]
    ref = tmp_path / "ref"
    prepare(synth_tree, ref, PrepareConfig(shard_size=2, seed=PREP.seed), workers=2, **QUIET)
    p = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env_with_path(ROOT)
    )
    deadline = time.time() + limit(60)
    while len(list(out.glob("*.tar"))) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.005)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists(), "the run finished before the kill; the test proves nothing"
    n_written = len(list(out.glob("*.tar")))
    assert 0 < n_written < len(list(ref.glob("*.tar")))
    r = run_cli("prepare", synth_tree, out, "--shard-size", 2, "--seed", PREP.seed, "--workers", 2)
    assert "resuming" in r.stdout
    assert "\r" not in r.stderr and "prepare: 100% " in r.stderr  # a log, not a terminal: plain lines, no frames
    assert tree_files(out) == tree_files(ref)


def test_parts_together_equal_one_machine(prepared, synth_tree, tmp_path):
    out = tmp_path / "out"
    n_shards = len(list(prepared.glob("*.tar")))
    assert prepare(synth_tree, out, PREP, workers=1, part="0/3", **QUIET) is None  # others still missing
    assert not (out / "manifest.json").exists()
    first = {p.name for p in out.glob("*.tar")}
    assert first == {sorted(prepared.glob("*.tar"))[g].name for g in range(0, n_shards, 3)}
    prepare(synth_tree, out, PREP, workers=1, part="2/3", **QUIET)
    man = prepare(synth_tree, out, PREP, workers=1, part="1/3", **QUIET)  # the last part writes the manifest
    assert man is not None
    assert tree_files(out) == tree_files(prepared)


def _no_shards(out):
    return not out.exists() or not list(out.glob("*.tar"))


@pytest.mark.parametrize(
    "case", ["missing_src", "empty_class", "unlabelled_val", "unknown_wnid", "repeated_id", "binary_csv", "bad_part"]
)
def test_bad_input_is_one_line_error(synth_tree, tmp_path, case):
    src, out = tmp_path / "src", tmp_path / "out"
    if case != "missing_src":
        shutil.copytree(synth_tree, src)
    extra = []
    if case == "empty_class":
        (src / "train" / "n99999999").mkdir()
        culprit = "n99999999"
    elif case == "unlabelled_val":
        shutil.copy(src / "val" / "ILSVRC2012_val_00000001.JPEG", src / "val" / "ILSVRC2012_val_00000999.JPEG")
        culprit = "ILSVRC2012_val_00000999"
    elif case == "unknown_wnid":
        text = (src / "LOC_val_solution.csv").read_text().replace(wnid(1), "n12345678", 1)
        (src / "LOC_val_solution.csv").write_text(text)
        culprit = "n12345678"
    elif case == "repeated_id":  # a second row for one image: today the last row would silently win
        rows = (src / "LOC_val_solution.csv").read_text().splitlines()
        (src / "LOC_val_solution.csv").write_text("\n".join(rows + [rows[1].replace(wnid(0), wnid(1))]) + "\n")
        culprit = f"{rows[1].split(',')[0]}' appears twice"
    elif case == "binary_csv":
        (src / "LOC_val_solution.csv").write_bytes(b"ImageId,PredictionString\n\xff\xfe\x00\x81,n0 1 2 3 4\n")
        culprit = "not a UTF-8 CSV"
    elif case == "bad_part":
        extra, culprit = ["--part", "3/3"], "--part"
    else:
        culprit = "src"
    r = run_cli("prepare", src, out, *extra, check=False)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:") and culprit in err[0], r.stderr
    assert _no_shards(out)


def test_changed_parameters_are_refused(prepared, synth_tree, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    r = run_cli(
        "prepare", synth_tree, out, "--shard-size", PREP.shard_size, "--seed", PREP.seed, "--quality", 80, check=False
    )
    assert r.returncode != 0 and "quality 90 -> 80" in r.stderr


def test_wds_index_of_a_handmade_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in [("a.jpg", b"xyz"), ("a.cls", b"1"), ("b.jpg", b"q" * 600), ("b.cls", b"22")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # headers are 512 bytes, data padded to 512: a.jpg at 512, a.cls at 1536, b.jpg at 2560, b.cls at 2560+512+1024
    assert wds_index(buf.getvalue()) == (
        "v1.2 2\njpg 512 3 a.jpg cls 1536 1 a.cls\njpg 2560 600 b.jpg cls 4096 2 b.cls\n"
    )


def test_raw_tree_splits_follow_the_training_classes(tmp_path):
    from alexdata.dataset import DataError, open_split

    for split, classes in (("train", ["a", "b", "c"]), ("val", ["b"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / f"{c}.png")
    val = open_split(tmp_path, "val")
    assert val.classes == ("a", "b", "c") and val.labels == (1,)  # b is class 1 of the training classes
    (tmp_path / "val" / "zz").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "zz" / "z.png")
    with pytest.raises(DataError, match="not among the training classes"):
        open_split(tmp_path, "val")
    with pytest.raises(DataError, match="no val/ folder"):
        open_split(tmp_path / "train", "val")  # a bare class tree has no val split: never reuse train
    assert open_split(tmp_path / "train", "train").images == 3


def test_manifest_records_each_splits_largest_image(prepared, tmp_path):
    """The GPU decoder's preallocation hints (pipelines/common.py decoder_kw): the tallest and the widest stored
    image of each split, against every JPEG in the shards read back with PIL."""
    from alexdata.dataset import open_split

    for split in ("train", "val"):
        man, samples = read_split(prepared, split)
        sizes = [im.size for _, im in samples.values()]  # (W, H)
        hw = (max(h for _, h in sizes), max(w for w, _ in sizes))
        assert (man[split]["max_height"], man[split]["max_width"]) == hw
        assert open_split(prepared, split).max_hw == hw
    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    man = json.loads((old / "manifest.json").read_text())
    for split in ("train", "val"):
        del man[split]["max_height"], man[split]["max_width"]
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(
        DataError,
        match=r"train\.max_height and max_width \(the largest image\) are missing: a "
        r"manifest\.json of an older prepare; run `alexnet prepare SRC OUT` again",
    ):
        open_split(old, "train")  # a manifest from before: refused in one line, not read with guesses


ODD_NAMES = ["with space", "new\nline", "x" * 120, os.fsdecode(b"caf\xe9"), "two.dots", "ok_name"]


def test_odd_file_names_are_stored_under_safe_keys(tmp_path):
    """Names a tar header or DALI's index cannot hold as they are (a space or newline splits an index line, a
    name over 100 bytes does not fit a USTAR header, non-UTF-8 bytes, a dot splits the key) are stored under a
    safe key, their originals in manifest.json's "renamed"; DALI's webdataset reader reads every sample back."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    from alexdata.shards import read_index

    src = tmp_path / "src"
    for c, names in (("a", ODD_NAMES[:3]), ("b", ODD_NAMES[3:])):
        (src / "train" / c).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (40, 30), (len(name), 9, 9)).save(src / "train" / c / f"{name}.JPEG")
    (src / "val" / "b").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(src / "val" / "b" / "v al.JPEG")
    man = prepare(src, tmp_path / "out", PREP, workers=1, **QUIET)
    assert man["train"]["images"] == len(ODD_NAMES) and man["val"]["images"] == 1 and not man["skipped"]
    renamed = {r["file"].rsplit("/", 1)[-1]: r["key"] for r in man["renamed"] if "/val/" not in r["file"]}
    want = [f"{n}.JPEG" for n in ODD_NAMES[:-1] if n != ODD_NAMES[3]] + ["caf\\xe9.JPEG"]  # bytes as \x escapes
    assert sorted(renamed) == sorted(want)
    assert len(man["renamed"]) == len(renamed) + 1
    keys = [k for s in man["train"]["shards"] for k in _stored_keys(tmp_path / "out" / s["file"])]
    assert sorted(keys) == sorted([*renamed.values(), "ok_name"])
    assert all(len(k) <= 90 and "." not in k and k.isascii() and k.isprintable() and " " not in k for k in keys)
    tars = [str(tmp_path / "out" / s["file"]) for s in man["train"]["shards"]]
    assert sum(len(read_index(t[:-4] + ".idx")) for t in tars) == len(ODD_NAMES)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def p():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + ".idx" for t in tars], ext=["jpg", "cls"])
        return cls

    pipe = p()
    pipe.build()
    labels = sorted(int(bytes(np.array(pipe.run()[0][0]))) for _ in ODD_NAMES)
    assert labels == [0, 0, 0, 1, 1, 1]


def _stored_keys(tar):
    with tarfile.open(tar) as tf:
        return [m.name[:-4] for m in tf.getmembers() if m.name.endswith(".jpg")]


def test_jpegs_with_missing_data_are_skipped_and_harmless_warnings_kept(tmp_path):
    from alexdata.jpegcheck import is_damaged, jpeg_warning

    bad = damaged_jpegs()
    for data in bad.values():
        Image.open(io.BytesIO(data)).load()  # PIL alone finds nothing wrong
    assert [is_damaged(jpeg_warning(d)) for d in bad.values()] == [True, True, False]
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / "train" / c).mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(src / "train" / c / f"fine_{c}.JPEG")
    for name, data in bad.items():
        (src / "train" / "a" / f"{name}.JPEG").write_bytes(data)
    (src / "val").mkdir()
    shutil.copytree(src / "train" / "b", src / "val" / "b")
    lines = []
    man = prepare(src, tmp_path / "out", PREP, workers=1, progress=False, log=lines.append)
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in man["skipped"]}
    assert sorted(skipped) == ["cut.JPEG", "huge.JPEG"]
    assert all(r.startswith("truncated or corrupt JPEG data") for r in skipped.values())
    assert man["train"]["images"] == 3  # fine x2, stray
    assert [w["file"].rsplit("/", 1)[-1] for w in man["decoder_warnings"]] == ["stray.JPEG"]
    assert "skipped 2 " in lines[-1] and "1 kept with a harmless decoder warning" in lines[-1]


def test_raw_tree_stats_refuse_a_jpeg_with_missing_data(tmp_path):
    from alexdata.errors import StatsError
    from alexdata.stats import compute_stats

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "train" / c / f"fine_{c}.JPEG")
    compute_stats(tmp_path / "train", threads=1)
    (tmp_path / "train" / "a" / "cut.JPEG").write_bytes(damaged_jpegs()["cut"])
    with pytest.raises(
        StatsError, match=r"cut\.JPEG: truncated or corrupt JPEG data \(libjpeg: Corrupt JPEG data"
    ) as e:
        compute_stats(tmp_path / "train", threads=1)
    assert "\n" not in str(e.value)


def test_a_missing_decoder_library_stops_prepare_instead_of_skipping_every_image(synth_tree, tmp_path):
    # The first GPU check ran on a machine without simplejpeg: prepare skipped 20999 of 21000 images, each
    # "ModuleNotFoundError", and exited 0. A missing dependency is the machine's fault, not the images'.
    block = tmp_path / "block"
    block.mkdir()
    (block / "simplejpeg.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'simplejpeg'\", name='simplejpeg')\n"
    )
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "prepare", str(synth_tree), str(out)],
        capture_output=True,
        text=True,
        env=env_with_path(block, ROOT),
        timeout=limit(300),
    )
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "simplejpeg" in lines[0] and "not installed" in lines[0], r.stderr
    assert not (out / "manifest.json").exists()


def _tree_with(tmp_path, files: dict[str, bytes]):
    """A raw tree of one class: the synth-like good JPEG a.JPEG plus `files` under train/n00000001/."""
    d = tmp_path / "raw" / "train" / "n00000001"
    d.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(buf, "JPEG")
    (d / "a.JPEG").write_bytes(buf.getvalue())
    for name, data in files.items():
        (d / name).write_bytes(data)
    return tmp_path / "raw"


def test_an_eps_named_jpeg_is_skipped_and_runs_no_program(tmp_path, monkeypatch):
    """Pillow opens EPS through Ghostscript (`gs` on PATH): prepare opens JPEG and PNG only, so the planted gs
    never runs and the file is listed as skipped with what it is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "gs-ran"
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\n"
    src = _tree_with(tmp_path, {"evil.JPEG": eps, "gif.JPEG": b"GIF89a" + bytes(40)})
    man = prepare(src, tmp_path / "out", PrepareConfig(), workers=1, **QUIET)
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in man["skipped"] if ".JPEG" in s["file"]}
    assert reasons == {"evil.JPEG": "not a JPEG or PNG (PostScript/EPS)", "gif.JPEG": "not a JPEG or PNG (GIF)"}
    assert man["train"]["images"] == 1 and not ran.exists()


def test_a_16_bit_grayscale_png_keeps_its_grey_levels():
    """Pillow's own RGB conversion of a 16-bit PNG clips every level to white; prepare scales it to 8 bits."""
    levels = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, "PNG")
    jpg, _ = resize_to_jpeg(buf.getvalue(), 256, 95)
    got = np.asarray(Image.open(io.BytesIO(jpg)).convert("L"), np.float64)
    want = levels.astype(np.float64) * 255 / 65535
    assert np.abs(got - want).mean() < 2 and got.min() < 10 and got.max() > 245


def test_an_image_past_the_aspect_limit_is_skipped_before_it_is_decoded(tmp_path):
    """A 1 x 20,000 JPEG of a few KB would resize to 256 x 5.1 M pixels (3.9 GB): skipped with its size."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 20000, 3), np.uint8)).save(buf, "JPEG")
    src = _tree_with(tmp_path, {"wide.JPEG": buf.getvalue()})
    man = prepare(src, tmp_path / "out", PrepareConfig(), workers=1, **QUIET)
    assert [s["reason"] for s in man["skipped"] if s["file"].endswith("wide.JPEG")] == [
        "20000x1: an aspect ratio past 32:1"
    ]
    assert man["train"]["images"] == 1
