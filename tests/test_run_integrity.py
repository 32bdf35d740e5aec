"""A run directory has one writer, and a damaged checkpoint is noticed (issue 19): the directory lock, zip CRCs
checked on load, NaN/inf and mismatched shapes refused in one line, a finished run's record rewritten, SIGHUP."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import PREP, run_cli
from test_preemption import _start, _wait_for
from test_train import ENV, TINY, data, one_epoch, tiny  # noqa: F401  (fixtures)
from test_usability import _val_images

from alexdata.errors import PrepareError, TrainError
from alexdata.files import lock_dir
from alexdata.prepare import prepare
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
    img = _val_images(data, tmp_path / "imgs")[0][0]
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

    saved = checkpoint.load_run(run)
    monkeypatch.setattr(checkpoint, "AlexNet", only_on_meta)
    with pytest.raises(TrainError, match=r"shape .* but its config \(width 1.0"):
        checkpoint.model_from_checkpoint(saved)


@pytest.mark.slow
def test_sighup_stops_like_sigterm(data, tmp_path):
    out = tmp_path / "run"
    p = _start(data, out, "--epochs", 3, "--log-every", 1)
    _wait_for(out / "steps.jsonl", p)
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("train: stopped by SIGHUP at step ")


def test_a_batch_larger_than_the_train_split_is_one_line(data, tmp_path):
    i = TINY.index("--batch-size")
    args = [*TINY[: i + 1], 64, *TINY[i + 2 :]]  # the train split holds 46 images
    r = run_cli("train", data, "--out", tmp_path / "run", "--epochs", 1, *args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "--batch-size 64 is more than the 46 images" in lines[0], r.stderr


def test_the_lock_file_names_its_holder(tmp_path):
    with lock_dir(tmp_path, what="train", error=TrainError) as lock:
        host, pid = (tmp_path / ".lock").read_text().split()
        assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and lock.path.name == ".lock"
    assert not (tmp_path / ".lock").exists()  # released
