"""Runs that survive a cluster: stops on signals with exact checkpoints, a spare checkpoint, --resume auto,
resuming on another number of ranks, step-level logs, and one host sync per logging window."""

import json
import math
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import ENV, TINY, limit, run_cli, start_train, tiny, wait_for

from alexmodel.train import train

STOP_SCRIPT = r"""
import hashlib, json, os, signal, sys
from dataclasses import replace
import torch
from alexmodel.distributed import TrainStopped
from alexmodel.train import train
from conftest import tiny

data, out, stop_at, resume, batch, epochs, log_every = sys.argv[1:8]
rank = int(os.environ.get("RANK", "0"))
def on_step(epoch, step, images, labels):
    if step == int(stop_at) and rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)  # as Slurm would, to one process (rank 0 only under DDP)
d, m, o, r = tiny(data, out, epochs=int(epochs), batch_size=int(batch))
try:
    res = train(d, m, o, replace(r, log_every=int(log_every)), resume=resume == "1", on_step=on_step)
except TrainStopped as e:
    print("STOPPED", e, flush=True)
    sys.exit(75)
sd = res["model"].state_dict()
with open(os.path.join(out, f"final{rank}.json"), "w") as f:
    json.dump({"weights": hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest(),
               "history": [{k: h[k] for k in ("epoch", "step", "train_loss", "val_top1", "lr")}
                           for h in res["history"]]}, f)
"""


def _script(tmp_path):
    p = tmp_path / "stop.py"
    p.write_text(STOP_SCRIPT)
    return p


def _run(script, data, out, *, stop_at=-1, resume=False, batch=8, epochs=2, log_every=2, ranks=1):
    args = [
        str(script),
        str(data),
        str(out),
        str(stop_at),
        "1" if resume else "0",
        str(batch),
        str(epochs),
        str(log_every),
    ]
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        if ranks > 1
        else [sys.executable]
    ) + args
    return subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=limit(300))


def _final(out, rank=0):
    return json.loads((out / f"final{rank}.json").read_text())


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(data, tmp_path):
    script = _script(tmp_path)
    ref = _run(script, data, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    stopped = _run(script, data, tmp_path / "run", stop_at=8)  # epoch 2, its 2nd step (6 steps per epoch)
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert "STOPPED stopped by SIGTERM at step 8 (2 steps into epoch 2)" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"], ckpt["meter"]["steps"]) == (1, 8, 2)  # one process: right after the step
    resumed = _run(script, data, tmp_path / "run", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _final(tmp_path / "run") == _final(tmp_path / "ref")  # weights equal bit for bit, same history
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (tmp_path / "ref" / "steps.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and set(ref_steps) <= set(steps)  # no duplicate windows after the resume
    # The spare: the checkpoint before the latest, kept beside it.
    prev = torch.load(tmp_path / "run" / "checkpoint.prev.pt", weights_only=False)
    assert prev["step"] < torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"]


@pytest.mark.slow
def test_ddp_stop_on_one_rank_stops_both_at_the_same_step_and_resumes_exactly(one_label_per_image, tmp_path):
    script = _script(tmp_path)
    kw = dict(batch=4, epochs=2, log_every=2, ranks=2)  # 2 images per rank and step, 4 steps per epoch
    ref = _run(script, one_label_per_image, tmp_path / "ref", **kw)
    assert ref.returncode == 0, ref.stderr[-3000:]
    stopped = _run(script, one_label_per_image, tmp_path / "run", stop_at=5, **kw)
    # Asked at step 5 on rank 0 only; both ranks agree at the window's end, step 6. (The first rank to exit with
    # 75 makes torchrun end the other, already past the checkpoint: which rank's line gets out is a race.)
    assert stopped.returncode != 0 and "at step 6 (2 steps into epoch 2)" in stopped.stdout, (
        stopped.stdout + stopped.stderr[-3000:]
    )
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (ckpt["step"], ckpt["meter"]["steps"], len(ckpt["ranks"])) == (6, 2, 2)
    shutil.copytree(tmp_path / "run", tmp_path / "run_for_one")
    resumed = _run(script, one_label_per_image, tmp_path / "run", resume=True, **kw)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final(tmp_path / "run", 0) == _final(tmp_path / "run", 1) == _final(tmp_path / "ref", 0)

    # 2 ranks -> 1: the loaders' positions do not carry over, the run goes on from the next epoch boundary.
    one = _run(script, one_label_per_image, tmp_path / "run_for_one", resume=True, batch=4, epochs=3, log_every=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert (
        "resuming on 1 rank(s) a run checkpointed on 2, from the next epoch boundary; the rest of epoch 2 is "
        "skipped (8 of 16 samples) and the epoch evaluated as it stands"
    ) in one.stderr
    assert [h["epoch"] for h in _final(tmp_path / "run_for_one")["history"]] == [1, 2, 3]
    again = _run(script, one_label_per_image, tmp_path / "run_for_one", resume=True, batch=4, epochs=3, log_every=2)
    assert again.returncode == 0 and "nothing to do" in again.stderr  # the run is finished, not stuck mid-epoch

    # 1 rank -> 2, at an epoch boundary.
    single = _run(script, one_label_per_image, tmp_path / "single", batch=4, epochs=1, log_every=2)
    assert single.returncode == 0, single.stderr[-3000:]
    two = _run(script, one_label_per_image, tmp_path / "single", resume=True, batch=4, epochs=2, log_every=2, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resuming on 2 rank(s) a run checkpointed on 1, from the next epoch boundary" in two.stderr
    h = _final(tmp_path / "single", 0)["history"]
    assert [x["epoch"] for x in h] == [1, 2] and _final(tmp_path / "single", 1) == _final(tmp_path / "single", 0)


def test_only_the_number_of_host_syncs_changes_with_the_window(data, tmp_path):
    results = {}
    for every in (1, 4, 1000):
        d, m, o, r = tiny(data, tmp_path / f"w{every}", epochs=2)
        res = train(d, m, o, replace(r, log_every=every))
        results[every] = res
    keys = ("train_loss", "train_top1", "val_loss", "val_top1", "lr")
    base = results[1]
    for every, res in results.items():
        for h, b in zip(res["history"], base["history"], strict=True):  # summed in another order: round-off only
            assert {k: h[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-12, abs=0)
        a, b = res["model"].state_dict(), base["model"].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        steps = 6  # ceil(46 / 8) per epoch
        assert [h["host_syncs"] for h in res["history"]] == [math.ceil(steps / every)] * 2
        lines = (tmp_path / f"w{every}" / "steps.jsonl").read_text().splitlines()
        assert len(lines) == 2 * math.ceil(steps / every)


def test_steps_jsonl_windows_add_up_to_the_epoch(data, tmp_path):
    d, m, o, r = tiny(data, tmp_path / "run", epochs=2)
    res = train(d, m, o, replace(r, log_every=4))
    rows = [json.loads(x) for x in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [4, 6, 10, 12] and [x["steps"] for x in rows] == [4, 2, 4, 2]
    assert [x["epoch"] for x in rows] == [round(4 / 6, 4), 1.0, round(1 + 4 / 6, 4), 2.0]
    for ep, h in enumerate(res["history"]):
        w = rows[2 * ep : 2 * ep + 2]
        assert sum(x["images"] for x in w) == 46
        assert sum(x["loss"] * x["images"] for x in w) / 46 == pytest.approx(h["train_loss"], rel=1e-6)
        assert sum(x["top1"] * x["images"] for x in w) / 46 == pytest.approx(h["train_top1"], rel=1e-6)
    for x in rows:
        assert x["lr"] > 0 and x["images_per_s"] > 0 and 0 <= x["data_wait_frac"] <= 1


def test_plain_lines_off_a_terminal_and_no_progress_keeps_epoch_lines(data, tmp_path):
    args = [
        "--recipe",
        "modern",
        "--width",
        0.0625,
        "--batch-size",
        8,
        "--device",
        "cpu",
        "--torch-threads",
        1,
        "--threads",
        1,
        "--epochs",
        1,
        "--log-every",
        3,
    ]
    r = run_cli("train", data, "--out", tmp_path / "a", *args)  # captured: not a terminal
    window = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch 0.50  step 3  loss")]
    assert len(window) == 1 and "\r" not in r.stdout + r.stderr
    assert any(ln.startswith("epoch   1/1  loss") for ln in r.stdout.splitlines())
    q = run_cli("train", data, "--out", tmp_path / "b", *args, "--no-progress")
    assert not [ln for ln in q.stdout.splitlines() if "  step " in ln]
    assert any(ln.startswith("epoch   1/1  loss") for ln in q.stdout.splitlines())


def test_resume_auto_starts_then_continues(data, tmp_path):
    out = tmp_path / "run"
    run_cli("train", data, "--out", out, "--epochs", 1, *TINY, "--resume", "auto")
    run_cli("train", data, "--out", out, "--epochs", 2, *TINY, "--resume", "auto")
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_an_unreadable_checkpoint_falls_back_to_the_spare(data, tmp_path):
    out = tmp_path / "run"
    run_cli("train", data, "--out", out, "--epochs", 2, *TINY)
    prev_step = torch.load(out / "checkpoint.prev.pt", weights_only=False)["step"]
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:5000])  # a damaged write
    r = run_cli("train", data, "--out", out, "--resume", "--epochs", 2)
    assert (
        "checkpoint.pt is unreadable" in r.stderr
        and f"resuming from the spare checkpoint.prev.pt (epoch 1, step {prev_step})" in r.stderr
    )
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "checkpoint.unreadable.pt").is_file()  # kept for a look, never made the spare
    assert torch.load(out / "checkpoint.prev.pt", weights_only=True)["step"] == prev_step


def test_a_crash_between_the_two_renames_resumes_from_the_newest(data, tmp_path):
    out = tmp_path / "run"
    run_cli("train", data, "--out", out, "--epochs", 1, *TINY)
    shutil.copytree(out, tmp_path / "p")
    newest = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    (out / "checkpoint.pt").rename(out / "checkpoint.pt.new")  # save_atomic: moved the old away, not this in yet
    r = run_cli("train", data, "--out", out, "--resume", "--epochs", 2)
    assert "unreadable" not in r.stderr
    h = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in h] == [1, 2] and h[0]["step"] == newest
    (tmp_path / "p" / "checkpoint.pt").rename(tmp_path / "p" / "checkpoint.prev.pt")
    again = run_cli("train", data, "--out", tmp_path / "p", *TINY, check=False)  # a spare alone is a run too
    assert again.returncode == 1 and "already holds a run" in again.stderr


@pytest.mark.slow
def test_cli_sigterm_is_one_line_and_the_resume_finishes(data, tmp_path):
    out = tmp_path / "run"
    p = start_train(data, out, "--epochs", 3, "--log-every", 1)
    wait_for(out / "steps.jsonl", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=limit(120))
    assert p.returncode == 75, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("train: stopped by SIGTERM at step ")
    assert lines[-1].endswith(f"continue with: alexnet train {data} --out {out} --resume")
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.new"))
    step = int(lines[-1].removeprefix("train: stopped by SIGTERM at step ").split()[0])
    r = run_cli("train", data, "--out", out, "--resume")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    into = step % 6  # 46 images in batches of 8: 6 steps an epoch
    where = (
        f"{into} step{'s' * (into != 1)} into epoch {step // 6 + 1}/3" if into else f"start of epoch {step // 6 + 1}/3"
    )
    assert f"train: resumed {out} after step {step}, " in r.stderr and where in r.stderr


@pytest.mark.slow
def test_a_second_signal_exits_at_once_even_during_a_save(data, tmp_path):
    """Ctrl-C twice, the second while a checkpoint is written: no traceback, no .tmp, the checkpoint readable."""
    script = tmp_path / "twice.py"
    script.write_text(r"""
import os, signal, sys
from dataclasses import replace
import alexmodel.checkpoint as ck
from alexmodel.train import train
from conftest import tiny

real = ck.save_atomic
def save_with_a_signal(obj, path, previous=None):
    os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C arrives while this checkpoint is being written
    return real(obj, path, previous)
def on_step(epoch, step, images, labels):
    if step == 2:
        ck.save_atomic = save_with_a_signal
        os.kill(os.getpid(), signal.SIGINT)
d, m, o, r = tiny(sys.argv[1], sys.argv[2], epochs=2)
train(d, m, o, r, on_step=on_step)
""")
    r = subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "run")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=limit(120),
    )
    assert r.returncode == 128 + signal.SIGINT, r.stderr
    assert "Traceback" not in r.stderr and "second SIGINT: exiting at once" in r.stderr
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith((".tmp", ".new"))]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2


def test_tensorboard_missing_is_one_line(data, tmp_path):
    pytest.importorskip("matplotlib")
    try:
        import torch.utils.tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    r = run_cli("train", data, "--out", tmp_path / "run", *TINY, "--epochs", 1, "--tensorboard", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "pip install tensorboard" in r.stderr


def test_the_resume_command_is_the_launchers_own(monkeypatch):
    from alexmodel.distributed import launcher

    typed = ["/usr/bin/python3", "/venv/bin/torchrun", "--nproc_per_node", "8", "--no-python", "alexnet", "train"]
    assert launcher("/venv/bin/alexnet", typed) == ["torchrun", "--nproc_per_node", "8", "--no-python", "alexnet"]
    module = ["/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "/w/cli.py"]
    assert launcher("/w/cli.py", [*module, "train", "DATA"]) == module
    assert launcher("/w/cli.py", ["bash", "-c", "something else"]) == []  # not found: the plain command
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert launcher(sys.argv[0]) == []  # no launcher's worker: nothing read
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # pytest's parent is no launcher: its command line lacks argv0
    assert launcher("/nowhere/alexnet-not-a-program") == []
