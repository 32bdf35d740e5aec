"""`alexnet verify` and the Loader's quick check: shards copied elsewhere are the bytes prepare wrote."""

import hashlib
import json
import os
import re
import shutil
import signal

import pytest
from conftest import damaged_jpegs, run_cli

from alexdata.dataset import DataError, open_split
from alexdata.verify import verify


@pytest.fixture
def copy(prepared, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(prepared, d)
    return d


def test_manifest_records_what_is_on_disk(prepared):
    man = json.loads((prepared / "manifest.json").read_text())
    for s in man["train"]["shards"] + man["val"]["shards"]:
        tar, idx = (prepared / s["file"]).read_bytes(), (prepared / s["file"]).with_suffix(".idx").read_bytes()
        assert (s["bytes"], s["sha256"]) == (len(tar), hashlib.sha256(tar).hexdigest())
        assert (s["idx_bytes"], s["idx_sha256"]) == (len(idx), hashlib.sha256(idx).hexdigest())


def test_a_clean_copy_verifies(copy):
    r = run_cli("verify", copy)
    assert "\r" not in r.stderr and "verify: 100% " in r.stderr  # a log, not a terminal: plain lines
    assert "verify: 0 bad files; checked sha256 of" in r.stdout
    assert verify(copy, quick=True)["problems"] == []


def test_damage_of_every_kind_is_one_line_per_file(copy):
    shards = sorted(copy.glob("train-*.tar"))
    with open(shards[0], "r+b") as f:  # one flipped byte inside a JPEG: sizes agree, only the hash can tell
        f.seek(2000)
        b = f.read(1)
        f.seek(2000)
        f.write(bytes([b[0] ^ 0xFF]))
    with open(shards[1], "r+b") as f:
        f.truncate(shards[1].stat().st_size // 2)
    shards[2].with_suffix(".idx").unlink()
    r = run_cli("verify", copy, check=False)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 1 and lines[-1].startswith("verify: 3 bad files")
    bad = sorted(lines[:-1])
    assert len(bad) == 3
    assert bad[0].startswith(f"{shards[0]}: sha256") and "damaged" in bad[0]
    assert bad[1].startswith(f"{shards[1]}: ") and "bytes, manifest.json says" in bad[1]
    assert bad[2] == f"{shards[2].with_suffix('.idx')}: missing (listed in manifest.json)"
    q = run_cli("verify", copy, "--quick", check=False)  # sizes only: the flipped byte goes unseen
    assert q.returncode == 1 and q.stdout.strip().splitlines()[-1].startswith("verify: 2 bad files")


def test_an_older_manifest_without_hashes_is_refused_in_one_line(copy):
    man = json.loads((copy / "manifest.json").read_text())
    for split in ("train", "val"):
        man[split]["shards"] = [{"file": s["file"], "images": s["images"]} for s in man[split]["shards"]]
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match=r"train\.shards\[0\]\.bytes is missing: a manifest\.json of an older prepare"):
        open_split(copy, "train")
    r = run_cli("verify", copy, check=False)
    assert r.returncode == 1 and "train.shards[0].sha256 is missing: a manifest.json of an older prepare" in r.stdout


def test_the_loader_refuses_a_partial_copy_before_any_step(copy):
    from alexdata.loader import Loader

    shard = sorted(copy.glob("train-*.tar"))[1]
    with open(shard, "r+b") as f:
        f.truncate(1024)
    with pytest.raises(DataError, match=rf"{shard.name}: 1024 bytes, manifest.json says \d+ .*alexnet verify") as e:
        Loader(
            copy,
            stats={
                "mean": [1, 2, 3],
                "std": [1, 1, 1],
                "eigval": [1, 1, 1],
                "eigvec": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            },
            batch_size=4,
        )
    assert "\n" not in str(e.value)
    r = run_cli("stats", copy, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "alexnet verify" in r.stderr


def test_a_shard_cut_short_while_a_run_reads_it_is_one_line_not_sigbus(copy):
    """Mapped with mmap, a page past a truncated file's end is SIGBUS: the process dies, naming nothing."""
    from alexdata.loader import Loader

    stats = {"mean": [1, 2, 3], "std": [1, 1, 1], "eigval": [1, 1, 1], "eigvec": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}
    loader = Loader(copy, stats=stats, batch_size=4, threads=1)
    it = iter(loader)
    next(it)
    for shard in copy.glob("train-*.tar"):
        os.truncate(shard, 3000)  # a few headers left of each: every sample still to come lies past the end
    with pytest.raises(DataError, match=r"a shard changed since prepare wrote it: `alexnet verify ") as e:
        for _ in it:  # the rest of this pass, and the next
            pass
        for _ in loader:
            pass
    assert "\n" not in str(e.value) and re.search(r"unreadable sample \S+/train-00000\d\.(tar|idx): ", str(e.value))


def test_an_index_dali_cannot_parse_fails_even_when_its_hash_matches(copy):
    """An older prepare stored a name with a space as it was: its index line splits into too many fields, which
    DALI's reader cannot parse, yet the manifest's hash is of those very bytes."""
    man = json.loads((copy / "manifest.json").read_text())
    shard = man["train"]["shards"][0]
    idx = (copy / shard["file"]).with_suffix(".idx")
    lines = idx.read_text().splitlines()
    f = lines[1].split(" ")
    f[3], f[7] = "a b.jpg", "a b.cls"  # what `wds_index` wrote for the key "a b"
    lines[1] = " ".join(f)
    data = ("\n".join(lines) + "\n").encode()
    idx.write_bytes(data)
    shard.update(idx_bytes=len(data), idx_sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(man))
    for quick in (True, False):
        problems = verify(copy, quick=quick)["problems"]
        assert len(problems) == 1 and problems[0].startswith(f"{idx}: line 2 does not list one .jpg and one .cls")


@pytest.mark.parametrize("in_process_bytes", [0, 1 << 30])
def test_a_flipped_byte_is_found_by_the_pool_and_in_process(copy, monkeypatch, in_process_bytes):
    import alexdata.verify

    monkeypatch.setattr(alexdata.verify, "IN_PROCESS_BYTES", in_process_bytes)
    tar = sorted(copy.glob("train-*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    problems = verify(copy, workers=2)["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"{tar}: sha256") and "(damaged)" in problems[0]


def _killed(path):
    os.kill(os.getpid(), signal.SIGKILL)  # the out-of-memory killer, say


def test_a_verify_worker_killed_by_the_system_is_one_line(copy, monkeypatch):
    from click.testing import CliRunner

    import alexdata.verify
    from cli import main

    monkeypatch.setattr(alexdata.verify, "_sha256", _killed)
    monkeypatch.setattr(alexdata.verify, "IN_PROCESS_BYTES", 0)  # the pool, whatever the size: its worker dies
    r = CliRunner().invoke(main, ["verify", str(copy), "--workers", "2"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: a worker process died (killed: out of memory?")


def _rewrite_index(copy, edit):
    """Applies edit(fields of sample line 1) to the first train shard's index, and records the new index's size
    and hash in manifest.json, as a copy whose damage matched its manifest would: only parsing can tell."""
    man = json.loads((copy / "manifest.json").read_text())
    shard = man["train"]["shards"][0]
    tar = copy / shard["file"]
    idx = tar.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    f = lines[-1].split(" ")
    edit(f, tar.stat().st_size)
    lines[-1] = " ".join(f)
    data = ("\n".join(lines) + "\n").encode()
    idx.write_bytes(data)
    shard.update(idx_bytes=len(data), idx_sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(man))
    return idx, len(lines)


def _past_the_end(f, tar_bytes):
    j = f.index("jpg")
    f[j + 2] = str(tar_bytes)  # the last sample's JPEG now runs past the tar: DALI read there and crashed


def _unaligned(f, tar_bytes):
    j = f.index("jpg")
    f[j + 1] = str(int(f[j + 1]) + 3)


@pytest.mark.parametrize("edit, why", [(_past_the_end, "ends at byte"), (_unaligned, "is not at a tar block")])
def test_an_index_pointing_outside_its_tar_is_one_line_before_dali_reads_it(copy, edit, why):
    """Every command that opens the data parses each .idx first: a member past the tar's end (DALI read unmapped
    memory there: SIGSEGV) or off a tar block is refused in one line naming the index and its line."""
    idx, n = _rewrite_index(copy, edit)
    with pytest.raises(DataError, match=f"{idx}: line {n}: the .jpg member {why}"):
        open_split(copy, "train")
    problems = verify(copy, quick=True)["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"{idx}: line {n}: the .jpg member {why}")
    if edit is _past_the_end:  # the command that crashed: one line and exit 1, not SIGSEGV (exit 139)
        r = run_cli("train", copy, "--out", copy.parent / "run", "--epochs", "1", "--batch-size", "8", check=False)
        assert (
            r.returncode == 1 and f"{idx}: line {n}: the .jpg member ends at byte" in r.stderr.strip().splitlines()[-1]
        )


def test_verify_once_hashes_on_first_use_and_again_after_a_change(copy, tmp_path, monkeypatch):
    """The full sha256 check on a data directory's first use, skipped while no file changed (a stamp in the
    user's cache, not in DATA), repeated after one did: a flipped byte of the same size is one line."""
    from alexdata.verify import verify_once

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = sorted(p.name for p in copy.iterdir())
    assert verify_once(copy) is True and verify_once(copy) is False
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing written into DATA
    tar = copy / json.loads((copy / "manifest.json").read_text())["train"]["shards"][0]["file"]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{tar}: sha256 .* \(damaged\): the shards are not the bytes prepare wrote"):
        verify_once(copy)
    with pytest.raises(DataError, match="damaged"):  # no stamp was left for the damaged state
        verify_once(copy)
    r = run_cli("train", copy, "--out", tmp_path / "run", "--epochs", 1, "--batch-size", 8, check=False)
    assert r.returncode == 1 and "the shards are not the bytes prepare wrote" in r.stderr.strip().splitlines()[-1]


def test_a_raw_tree_is_checked_strictly_once_and_again_after_a_change(tmp_path, monkeypatch):
    import alexdata.dataset as dataset
    from alexdata.verify import check_raw_once

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    for c in ("a", "b"):
        (tree / c).mkdir(parents=True)
        (tree / c / f"{c}.JPEG").write_bytes(damaged_jpegs()["stray"])  # whole: stray bytes between segments
    decoded = []
    real = dataset.jpeg_warning
    monkeypatch.setattr(dataset, "jpeg_warning", lambda data: decoded.append(1) or real(data))
    once = lambda: check_raw_once(tree, open_split(tree, "train"), "train", threads=1, gather=lambda m: [m])  # noqa: E731
    once()
    assert len(decoded) == 2  # the first use: every file entropy-decoded
    once()
    assert len(decoded) == 2  # remembered: first and last bytes only
    (tree / "a" / "cut.JPEG").write_bytes(damaged_jpegs()["cut"])  # ends in its marker: grey to DALI
    with pytest.raises(DataError, match=r"cut\.JPEG: truncated or corrupt JPEG data \(libjpeg: .*1 of 3 files") as e:
        once()
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"cut\.JPEG"):  # a refused tree is never remembered as checked
        once()
