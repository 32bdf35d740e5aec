"""A run directory has one writer, a damaged checkpoint is noticed, and every failure is one line: the
directory lock, zip CRCs checked on load, NaN/inf and mismatched shapes refused in one line, a finished run's record
rewritten, SIGHUP; a full disk, an OUT that cannot be written, damaged checkpoint parts, a hand-edited manifest,
signals to prepare, DALI's errors, a mid-epoch resume onto other shards, each part's own temporary names."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import ENV, PREP, ROOT, TINY, limit, run_cli, start_train, tiny, val_images, wait_for

from alexdata.dataset import open_split
from alexdata.errors import DataError, PrepareError, StatsError, TrainError
from alexdata.files import lock_dir
from alexdata.loader import Loader, StaleLoaderState
from alexdata.prepare import prepare, write_shard
from alexdata.stats import compute_stats
from alexdata.statsfile import load_stats
from alexdata.verify import verify
from alexmodel import checkpoint
from alexmodel.train import train

HOLD = """
import sys, time
from alexdata.files import lock_dir
lock = lock_dir(sys.argv[1], what="x", error=OSError)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def run(one_epoch, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(one_epoch, d)
    return d


def _hold(directory):
    """Another process holding `directory`'s lock (as a running train would), until it is killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_of_a_run_directory_is_refused_naming_the_holder(data, tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(TrainError, match=rf"in use by another train \(pid {holder.pid} on {socket.gethostname()}"):
            train(*tiny(data, out), resume="auto")
        assert not (out / "checkpoint.pt").exists()
    finally:
        holder.kill()  # kill -9: the kernel releases the lock; the stale file holds no one
        holder.wait()
    train(*tiny(data, out), resume="auto")
    assert (out / "checkpoint.pt").is_file()


def test_a_second_prepare_of_one_out_is_refused(synth_tree, tmp_path):
    out = tmp_path / "out"
    (out / ".prepare").mkdir(parents=True)
    with lock_dir(out / ".prepare", what="prepare", error=PrepareError, name="lock.part-0-of-1"):
        with pytest.raises(PrepareError, match="in use by another prepare"):
            prepare(synth_tree, out, PREP, workers=1, progress=False, log=lambda *a: None)
        assert not list(out.glob("*.tar"))


def _flip_a_byte_of_the_largest_tensor(path):
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # fc6's weight or its momentum
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[at] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_is_noticed_and_the_spare_used(run, capsys):
    shutil.copy(run / "checkpoint.pt", run / "checkpoint.prev.pt")
    _flip_a_byte_of_the_largest_tensor(run / "checkpoint.pt")
    with pytest.raises(TrainError, match="damaged .* fails its CRC check"):
        checkpoint.load_run(run)
    saved = checkpoint.load_latest(run)
    assert saved["_loaded_from"] == checkpoint.PREVIOUS
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt is unreadable (damaged" in err[0] and "resuming from the spare" in err[0]


def test_a_finished_runs_lost_record_is_rewritten_by_a_resume(run, data):
    metrics = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").unlink()
    (run / "plot.png").unlink()
    r = run_cli("train", data, "--out", run, "--resume", "--epochs", 1)
    assert "nothing to do" in r.stderr
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "plot.png").is_file()


def _damage(run, change):
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    change(saved)
    torch.save(saved, run / "checkpoint.pt")


@pytest.mark.parametrize("where", ["weight", "stats", "mean_image"])
def test_nan_weights_or_statistics_are_refused_by_evaluate_and_predict(run, data, tmp_path, where):
    def change(saved):
        if where == "weight":
            saved["model"]["fc6.weight"][0, 0] = float("nan")
        elif where == "stats":
            saved["config"]["stats_255"]["mean_255"] = [120.0, float("inf"), 100.0]
        else:
            saved["mean_image_255"].view(-1)[5] = float("nan")

    _damage(run, change)
    img = val_images(data, tmp_path / "imgs")[0][0]
    for args in (("evaluate", data, "--checkpoint", run), ("predict", "--checkpoint", run, img)):
        r = run_cli(*args, "--device", "cpu", "--threads", 1, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "NaN or inf" in lines[0], r.stderr


def test_shapes_are_checked_against_the_config_before_the_model_is_built(run, monkeypatch):
    _damage(run, lambda saved: saved["config"]["model"].update(width=1.0))

    real = checkpoint.AlexNet

    def only_on_meta(*a, **kw):  # the meta device allocates nothing
        net = real(*a, **kw)
        assert next(net.parameters()).is_meta, "a model was built before the shapes were checked"
        return net

    monkeypatch.setattr(checkpoint, "AlexNet", only_on_meta)
    with pytest.raises(TrainError, match=r"shape .* but its config \(width 1.0"):  # on load, before any use
        checkpoint.load_run(run)


@pytest.mark.slow
def test_sighup_stops_like_sigterm(data, tmp_path):
    out = tmp_path / "run"
    p = start_train(data, out, "--epochs", 3, "--log-every", 1)
    wait_for(out / "steps.jsonl", p)
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=limit(120))
    assert p.returncode == 75, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("train: stopped by SIGHUP at step ")


def test_a_batch_larger_than_the_train_split_is_one_line(data, tmp_path):
    i = TINY.index("--batch-size")
    args = [*TINY[: i + 1], 64, *TINY[i + 2 :]]  # the train split holds 46 images
    r = run_cli("train", data, "--out", tmp_path / "run", "--epochs", 1, *args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "--batch-size 64 is more than the 46 images" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # refused before it wrote anything: no empty --out left behind


def test_the_lock_file_names_its_holder(tmp_path):
    with lock_dir(tmp_path, what="train", error=TrainError) as lock:
        host, pid = (tmp_path / ".lock").read_text().split()
        assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and lock.path.name == ".lock"
    assert not (tmp_path / ".lock").exists()  # released


# ---------------------------------------------------------------------------------- every failure is one line


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _torch_writer_on_a_full_disk(obj, f):
    """What torch.save does when a write fails: its stream writer's RuntimeError, raised while handling the OSError."""
    f.write(b"PK partial")
    try:
        _enospc()
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def _a_message_naming_a_full_disk(obj, f):
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: No space left on device")


@pytest.mark.parametrize(
    "save",
    [
        _torch_writer_on_a_full_disk,
        _a_message_naming_a_full_disk,
        _enospc,
    ],
    ids=["torch-writer", "message", "oserror"],
)
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_checkpoints(tmp_path, monkeypatch, save):
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoint.CHECKPOINT).write_bytes(b"latest")
    (run / checkpoint.PREVIOUS).write_bytes(b"spare")
    monkeypatch.setattr(checkpoint.torch, "save", save)
    parts = dict(config={}, mean_image_255=None, epoch=1, step=6, meter=None, model={}, optimizer={})
    with pytest.raises(TrainError, match="disk full") as e:
        checkpoint.save(run, **parts, plateau={}, scaler={}, ranks=[], history=[])
    assert "checkpoint.pt and checkpoint.prev.pt" in _one_line(e) and "intact" in str(e.value)
    assert set(os.listdir(run)) == {checkpoint.CHECKPOINT, checkpoint.PREVIOUS}  # no temporary left behind
    assert (run / checkpoint.CHECKPOINT).read_bytes() == b"latest" and (
        run / checkpoint.PREVIOUS
    ).read_bytes() == b"spare"


def _read_only(directory, monkeypatch):
    """Makes `directory` refuse new entries: chmod 0o555, or, for root (whom permissions do not stop), os.mkdir and
    os.open raising EACCES below it, as the kernel would."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return

    def refusing(real):
        def call(path, *a, **kw):
            if os.path.abspath(path).startswith(str(directory) + os.sep):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *a, **kw)

        return call

    monkeypatch.setattr(os, "mkdir", refusing(os.mkdir))
    monkeypatch.setattr(os, "open", refusing(os.open))


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_an_out_that_cannot_be_written_is_one_line(data, synth_tree, tmp_path, monkeypatch, command):
    ro = tmp_path / "read only"
    ro.mkdir()
    _read_only(ro, monkeypatch)
    try:
        with pytest.raises(TrainError if command == "train" else PrepareError, match="cannot write") as e:
            if command == "train":
                train(*tiny(data, ro / "run"))
            else:
                prepare(synth_tree, ro / "out", PREP, workers=1, progress=False, log=lambda *a: None)
        assert str(ro) in _one_line(e)
    finally:
        ro.chmod(0o755)


def _with_bad_rng(saved):
    saved["ranks"][0]["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)


@pytest.mark.parametrize(
    "damage, change",
    [
        ("fc8.bias has shape", lambda s: s["model"].update({"fc8.bias": torch.zeros(5)})),
        ("conv1.weight has shape None", lambda s: s["model"].pop("conv1.weight")),
        ("no optimizer", lambda s: s.pop("optimizer")),
        ("no model", lambda s: s.pop("model")),
        ("momentum buffer", lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(2))),
        ("optimizer", lambda s: s["optimizer"]["param_groups"][0].update(params=[0])),
        ("random generator", _with_bad_rng),
        ("random generator", lambda s: s["ranks"][0]["rng"]["numpy"].update(keys=torch.zeros(3, dtype=torch.int64))),
        ("loader", lambda s: s["ranks"][0].pop("loader")),
    ],
    ids=[
        "shape",
        "missing-tensor",
        "no-optimizer",
        "no-model",
        "momentum",
        "groups",
        "torch-rng",
        "numpy-rng",
        "loader",
    ],
)
def test_a_damaged_checkpoint_part_is_one_line_on_resume(run, data, damage, change):
    _damage(run, change)
    with pytest.raises(TrainError, match=damage) as e:
        train(*tiny(data, run, epochs=2), resume=True)
    assert "damaged" in _one_line(e)


def test_a_checkpoint_without_its_model_is_one_line_for_evaluate(run):
    _damage(run, lambda s: s.pop("model"))
    with pytest.raises(TrainError, match="no model") as e:
        checkpoint.model_from_checkpoint(checkpoint.load_run(run))
    _one_line(e)


def _edit_manifest(prepared, tmp_path, edit):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    man = json.loads((data / "manifest.json").read_text())
    edit(man)
    (data / "manifest.json").write_text(json.dumps(man))
    return data


@pytest.mark.parametrize(
    "field, edit",
    [
        ("train.images", lambda m: m["train"].update(images="ten")),
        ("train.images", lambda m: m["train"].update(images=m["train"]["images"] + 1)),  # not its shards' sum
        ("classes", lambda m: m.update(classes="n01440764 n01443537")),
        ("classes", lambda m: m.update(classes=[m["classes"][0]] * len(m["classes"]))),
        ("train.shards", lambda m: m["train"].pop("shards")),
        ("train.shards[0].file", lambda m: m["train"]["shards"][0].update(file="../elsewhere/train-000000.tar")),
        ("train.shards[1].file", lambda m: m["train"]["shards"][1].update(file="/data/train-000001.tar")),
        ("train.shards[0].images", lambda m: m["train"]["shards"][0].update(images=None)),
        ("val", lambda m: m.update(val=[1, 2])),
        ("params.shorter_side", lambda m: m["params"].update(shorter_side="256px")),
    ],
    ids=[
        "type",
        "sum",
        "classes-str",
        "classes-twice",
        "no-shards",
        "dotdot",
        "absolute",
        "shard-images",
        "val",
        "side",
    ],
)
def test_a_hand_edited_manifest_is_one_line_naming_the_field(prepared, tmp_path, field, edit):
    data = _edit_manifest(prepared, tmp_path, edit)
    with pytest.raises(DataError, match="manifest.json") as e:  # what train, evaluate, stats and the loader open
        open_split(data, "train")
        open_split(data, "val")
    assert field in _one_line(e)
    problems = verify(data, quick=True)["problems"]  # verify lists it among its lines
    assert problems and any(field in p and "manifest.json" in p for p in problems), problems
    assert all("\n" not in p for p in problems)


SLOW_PREPARE = """
import sys, time
import alexdata.prepare as p
real = p.resize_to_jpeg
def slow(*a, **kw):  # a worker busy long enough for the signals to arrive mid-run
    time.sleep(0.1)
    return real(*a, **kw)
p.resize_to_jpeg = slow
sys.argv = ["alexnet", "prepare", *sys.argv[1:]]
from cli import main
main()
"""


def _dies_on_its_second_shard(spec, out, cfg, tag=""):
    """prepare's write_shard, in a worker that the system kills (the out-of-memory killer, say) on train shard 1."""
    if (spec.split, spec.index) == ("train", 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return write_shard(spec, out, cfg, tag)


def test_a_prepare_worker_killed_by_the_system_stops_prepare_in_one_line(synth_tree, tmp_path, monkeypatch):
    """multiprocessing replaces a dead worker and its shard never ends: prepare must not wait for it forever."""
    import alexdata.prepare as p

    out = tmp_path / "out"
    monkeypatch.setattr(p, "write_shard", _dies_on_its_second_shard)
    t0 = time.time()
    with pytest.raises(PrepareError, match=r"worker process died .* run the same command again") as e:
        prepare(synth_tree, out, PREP, workers=2, progress=False, log=lambda *a: None)
    assert "\n" not in str(e.value) and time.time() - t0 < 60
    monkeypatch.undo()
    manifest = prepare(synth_tree, out, PREP, workers=2, progress=False, log=lambda *a: None)
    assert manifest["train"]["images"] == 46


def _deaf_to_sigterm(counter):
    """prepare's worker initializer, in a worker that misses the pool's SIGTERM (as one forked in that moment)."""
    import alexdata.prepare as p

    p.signal.signal(p.signal.SIGINT, p.signal.SIG_IGN)
    p.signal.signal(p.signal.SIGTERM, p.signal.SIG_IGN)


def test_a_worker_that_misses_the_pools_sigterm_is_killed_not_waited_for(synth_tree, tmp_path, monkeypatch):
    import alexdata.prepare as p

    monkeypatch.setattr(p, "_init_worker", _deaf_to_sigterm)
    monkeypatch.setattr(p, "write_shard", _dies_on_its_second_shard)
    monkeypatch.setattr(p, "END_POOL_S", 0.5)
    t0 = time.time()
    with pytest.raises(PrepareError, match=r"worker process died"):
        prepare(synth_tree, tmp_path / "out", PREP, workers=2, progress=False, log=lambda *a: None)
    assert time.time() - t0 < limit(30)  # Pool.terminate alone waited for the deaf worker forever


FORK_AFTER_DALI = r"""
import gc, sys
import alexdata.prepare as p
from alexdata.prepare import PrepareConfig
from nvidia.dali import fn, pipeline_def

real = p.write_shard
def write_shard(*a):
    gc.collect()  # a worker's collector runs (allocations trigger it; here at once)
    return real(*a)
p.write_shard = write_shard

@pipeline_def(batch_size=2, num_threads=2, device_id=None)
def noise():
    return fn.random.uniform(range=(0, 1), shape=(4,))

def garbage_pipeline():
    pipe = noise(); pipe.build(); pipe.run()  # its threads now wait on the executor's condition variables
    cycle = [pipe]; cycle.append(cycle)  # garbage once dropped, freed only by the collector

gc.disable()
garbage_pipeline()
p.prepare(sys.argv[1], sys.argv[2], PrepareConfig(shard_size=8), workers=1, progress=False, log=lambda *a: None)
print("prepared")

import torch  # a fork that is not the project's: a DataLoader's worker
class Collecting(torch.utils.data.Dataset):
    def __len__(self): return 2
    def __getitem__(self, i): gc.collect(); return i
garbage_pipeline()
print(sum(torch.utils.data.DataLoader(Collecting(), num_workers=1, timeout=20)).item())
"""


def test_prepare_after_dali_in_one_process_does_not_hang(synth_tree, tmp_path):
    """A forked worker's collector once freed a DALI pipeline that was garbage in the parent, and DALI's executor
    destructor waited forever for threads the fork did not copy (a hang in CI: prepare after training). Any fork
    of the process is covered, a torch DataLoader's worker too."""
    r = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_DALI, str(synth_tree), str(tmp_path / "out")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=limit(60),
    )
    assert r.returncode == 0 and r.stdout.split() == ["prepared", "1"], r.stderr[-2000:]


def test_sigterm_to_prepare_stops_it_in_one_line_and_a_second_signal_changes_nothing(synth_tree, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "slow_prepare.py"
    script.write_text(SLOW_PREPARE)
    args = [synth_tree, out, "--workers", 2, "--shard-size", 4]
    p = subprocess.Popen(
        [sys.executable, str(script), *map(str, args)], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + limit(60)
    while p.poll() is None and time.time() < deadline and not list((out / ".prepare").glob("train-*.json")):
        time.sleep(0.02)  # a worker has written its first shard: the pool is busy
    p.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)  # a second one during the pool's shutdown
    _, err = p.communicate(timeout=limit(60))
    lines = [ln for ln in err.split("\n") if ln.strip() and "img/s" not in ln]  # the progress bar aside
    assert p.returncode not in (0, None) and "Traceback" not in err and "Error" not in err, err
    assert len(lines) == 1 and "prepare: interrupted" in lines[0], err
    assert not list(out.glob("*.tmp")) or p.returncode  # leftovers are removed by the next run


def test_a_signal_while_a_stopped_run_shuts_down_exits_at_once_in_one_line(capfd):
    from alexmodel.distributed import end_on_signal

    pid = os.fork()
    if pid == 0:  # the child: a command whose run stopped with its checkpoint written, ending its process
        try:
            end_on_signal(75)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while DALI shuts down
            time.sleep(30)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    err = capfd.readouterr().err
    assert os.waitstatus_to_exitcode(status) == 75 and "Traceback" not in err, err
    assert err.strip().count("\n") == 0 and "SIGINT" in err, err


@pytest.mark.parametrize(
    "text, place, why",
    [
        (
            'Error in CPU operator `nvidia.dali.fn.decoders.image`,\n  File "x.py", line 3\nencountered:\n\n'
            "Failed to decode sample #0 : /data/my runs/train-000000.tar:512:n01442764_16.jpg\n"
            "Current pipeline object is no longer valid.",
            "/data/my runs/train-000000.tar:512:n01442764_16.jpg",
            "cannot be decoded",
        ),
        (
            "Critical error in pipeline:\nencountered:\n\nFile mapping failed: /raw tree/n01/im 1.JPEG\n",
            "/raw tree/n01/im 1.JPEG",
            "cannot be read",
        ),
        ("Critical error in pipeline:\nencountered:\n\nnvImageCodec failure: '#4'\nCurrent pipeline", None, "#4"),
    ],
    ids=["decode", "mapping", "unnamed"],
)
def test_dali_errors_are_read_whole(text, place, why):
    from alexdata.errors import dali_reason

    got_place, got_why = dali_reason(RuntimeError(text))
    assert got_place == place and why in got_why and "\n" not in got_why


def test_a_sample_that_does_not_decode_is_named_with_its_whole_path(tmp_path):
    import io

    from PIL import Image

    tree = tmp_path / "raw tree"
    for c in ("n01", "n02"):
        (tree / "train" / c).mkdir(parents=True)
        for i in range(2):
            buf = io.BytesIO()
            Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(buf, "JPEG")
            (tree / "train" / c / f"im {i}.JPEG").write_bytes(buf.getvalue())
    bad = tree / "train" / "n01" / "im 1.JPEG"
    bad.write_bytes(bad.read_bytes().replace(b"\xff\xc0", b"\xff\xc7", 1))  # a JPEG process no decoder has
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "eigval": [1, 1, 1], "eigvec": np.eye(3).tolist()}
    with pytest.raises(DataError) as e:
        for _ in Loader(tree, mode="center", stats=stats, batch_size=2, threads=1):
            pass
    assert f"{bad}: " in _one_line(e) and "prepare" in str(e.value)  # the file whole, not from "1.JPEG" on
    with pytest.raises(StatsError) as e:
        compute_stats(tree, threads=1)
    assert f"{bad}: " in _one_line(e)


def test_a_zero_std_is_refused_when_stats_json_is_read(data, tmp_path):
    rec = json.loads((data / "stats.json").read_text())
    rec["std"][1] = 0.0
    rec.pop("mean_image_file", None), rec.pop("mean_image_sha256", None)
    (tmp_path / "stats.json").write_text(json.dumps(rec))
    with pytest.raises(StatsError, match=r"std .* 0") as e:  # not a NaN loss blamed on the learning rate later
        load_stats(tmp_path / "stats.json")
    assert "stats.json" in _one_line(e)


@pytest.mark.parametrize(
    "garble",
    [
        lambda st: {**st, "dali": 5},
        lambda st: {**st, "dali": st["dali"][:7] + b"\xff" + st["dali"][8:]},
        lambda st: {k: v for k, v in st.items() if k != "dali"},
        lambda st: "not a loader state",
    ],
    ids=["not-bytes", "garbled-bytes", "no-dali", "not-a-dict"],
)
def test_a_garbled_loader_state_is_stale_not_a_data_error(prepared, garble):
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "eigval": [1, 1, 1], "eigvec": np.eye(3).tolist()}
    loader = Loader(prepared, mode="train", stats=stats, batch_size=4, threads=1)
    state = loader.state_dict()
    with pytest.raises(StaleLoaderState) as e:
        Loader(prepared, mode="train", stats=stats, batch_size=4, threads=1).load_state_dict(garble(state))
    assert "prepare" not in _one_line(e)


def test_a_full_disk_at_the_manifest_write_is_one_line(prepared, synth_tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    (out / "manifest.json").unlink()  # every shard written: the rerun writes the manifest only
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(PrepareError, match="disk full") as e:
        prepare(synth_tree, out, PREP, workers=1, progress=False, log=lambda *a: None)
    assert "manifest.json" in _one_line(e) and "Errno" not in str(e.value)
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp"))


def test_an_os_error_line_keeps_the_whole_path():
    from alexdata.errors import os_error_line

    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/my runs/metrics.jsonl")
    line = os_error_line(e)
    assert "/data/my runs/metrics.jsonl" in line and "disk is full" in line and "Errno" not in line


class _Enough(Exception):
    pass


def _stop_at(step):
    def on_step(epoch, at, images, labels):
        if at == step:
            raise _Enough

    return on_step


def test_a_mid_epoch_resume_onto_re_prepared_data_is_refused_and_a_boundary_one_noticed(
    data, run, synth_tree, tmp_path, capsys
):
    other = tmp_path / "other"  # the same images, prepared again with another shard size
    prepare(synth_tree, other, replace(PREP, shard_size=4), workers=2, progress=False, log=lambda *a: None)
    for f in ("stats.json", "stats.mean_image.npy"):
        shutil.copy(data / f, other / f)
    mid = tmp_path / "mid"
    with pytest.raises(_Enough):  # checkpointed at step 2 of 6, then stopped
        train(*tiny(data, mid, checkpoint_every=2), on_step=_stop_at(2))
    with pytest.raises(TrainError, match="mid-epoch") as e:
        train(*tiny(other, mid), resume=True)
    assert str(other) in _one_line(e)
    capsys.readouterr()
    h = train(*tiny(other, run, epochs=2), resume=True)["history"]  # `run` stopped at an epoch's end
    assert [m["epoch"] for m in h] == [1, 2]
    notice = [ln for ln in capsys.readouterr().err.splitlines() if "train data" in ln]
    assert len(notice) == 1 and "epoch boundary" in notice[0], notice


def test_parts_write_shared_files_under_their_own_temporary_names(prepared, synth_tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    (out / "manifest.json").unlink()
    (out / ".prepare" / "params.json").unlink()
    renamed, real = [], os.replace
    monkeypatch.setattr(
        os, "replace", lambda a, b: (renamed.append((os.path.basename(a), os.path.basename(b))), real(a, b))[1]
    )
    prepare(synth_tree, out, PREP, workers=1, part="1/2", progress=False, log=lambda *a: None)
    assert {b for _, b in renamed} == {"params.json", "manifest.json"}
    assert all(a == f"{b}.part-1-of-2.tmp" for a, b in renamed), renamed
