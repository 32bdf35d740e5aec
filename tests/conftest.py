"""Shared fixtures: one small generated mini-ImageNet and its prepared shards, made once per session."""

import contextlib
import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from alexdata.prepare import PrepareConfig, prepare
from alexdata.stats import compute_stats
from alexdata.statsfile import write_stats
from alexdata.synth import SynthConfig, make_synth

# The README's command runs one pytest-xdist worker per core, and every worker's torch (and every command it
# starts) would otherwise run an OpenMP team of all the cores: 2 teams spinning on 2 cores. One share of the cores
# per worker took the suite from 394 s to 328 s on 2 cores (docs/BENCHMARKS.md). Set before torch is imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

ROOT = Path(__file__).resolve().parents[1]
SYNTH = SynthConfig(classes=3, train_per_class=16, val_per_class=4, seed=7)  # 48 train inputs, 2 unreadable
PREP = PrepareConfig(shard_size=8, seed=3)


def _time_scale() -> float:
    """How many times its normal limits every time limit in the tests gets: ALEXNET_TEST_TIME_SCALE when set,
    else the machine's load per core when it is above 1 (a box shared with other jobs runs every test slower:
    load 6 on 2 cores made the README's command take 20 minutes and one test pass its limit)."""
    if os.environ.get("ALEXNET_TEST_TIME_SCALE"):
        return max(1.0, float(os.environ["ALEXNET_TEST_TIME_SCALE"]))
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


TIME_SCALE = _time_scale()


def limit(seconds: float) -> float:
    """A time limit of the tests, scaled to this machine (`_time_scale`)."""
    return seconds * TIME_SCALE


# A test phase (setup, call or teardown) that runs longer than this is taken for a hang: its process prints every
# thread's stack and exits, instead of waiting for CI's limit. Under pytest-xdist (the README's command) the run
# goes on and names the test ("worker crashed while running ..."); without xdist the run ends there, after the
# stacks. The slowest test takes ~80 s on 2 busy cores.
HANG_S = limit(300)
CLI_TIMEOUT_S = limit(240)  # one `alexnet` command in a test; the longest takes ~60 s on 2 cores
SLOW_HINT = "slow or hung: ALEXNET_TEST_TIME_SCALE=2 gives every limit twice the time"


def pytest_configure(config):
    config._hang_stream = os.fdopen(os.dup(2), "w")  # fd 2 before pytest captures it: a CI log shows the stacks


def pytest_report_header(config):
    return (
        f"time limits x{TIME_SCALE:.2f} (ALEXNET_TEST_TIME_SCALE, else the load per core); hang watchdog {HANG_S:.0f} s"
    )


def _watched(item):
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=item.config._hang_stream)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _watched(item))


def default_signals() -> None:
    """preexec_fn of a command that a test sends SIGHUP or SIGINT: under nohup, or as a shell's background job,
    the test run hands down an ignored disposition, and the command would never stop."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env_with_path(*paths) -> dict:
    """os.environ with PYTHONPATH = `paths` first, then what it held already (a GPU kit's site folder, say), and
    Python's fault handler on: a command killed with SIGABRT for hanging prints its stacks."""
    old = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join([*map(str, paths), *([old] if old else [])])
    return {**os.environ, "PYTHONPATH": pythonpath, "PYTHONFAULTHANDLER": "1"}


def _end_group(p: subprocess.Popen, sig: int) -> str:
    """Sends `sig` to p's process group, then SIGKILL to what is left of it; returns the stderr p wrote meanwhile."""
    err = ""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        err = p.communicate(timeout=30)[1] or ""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    return err


def run_cli(*args, check=True, timeout=CLI_TIMEOUT_S, **kw):
    """Runs `alexnet ARGS` in a subprocess, as a user would; returns the CompletedProcess. A command still
    running after `timeout` seconds fails the test with the stacks of its processes (its own process group, pool
    workers included, gets SIGABRT, which their fault handlers print), and none of it is left running."""
    cmd = [sys.executable, str(ROOT / "cli.py"), *map(str, args)]
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env_with_path(ROOT),
        start_new_session=True,
        **kw,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        err = _end_group(p, signal.SIGABRT)
        raise AssertionError(
            f"alexnet {' '.join(map(str, args))} still running after {timeout:.0f} s ({SLOW_HINT}):\n{err[-8000:]}"
        ) from None
    except BaseException:  # Ctrl-C: nothing of the command is left running
        _end_group(p, signal.SIGKILL)
        raise
    r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if check and r.returncode != 0:
        raise AssertionError(f"alexnet {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "raw"
    make_synth(out, SYNTH, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, synth_tree):
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(synth_tree, out, PREP, workers=2, progress=False, log=lambda *a: None)
    return out


def tree_files(d: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under d (the .prepare records included)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def damaged_jpegs() -> dict[str, bytes]:
    """JPEGs PIL decodes without an error: cut short but ending in an end-of-image marker (grey lower half), a
    3 KB file whose header claims 12000x12000 (flat grey), and one with stray bytes between segments (whole)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    whole = buf.getvalue()
    sof = whole.find(b"\xff\xc0")
    big = bytearray(whole[:3000])
    big[sof + 5 : sof + 9] = (12000).to_bytes(2, "big") * 2  # height, width
    return {
        "cut": whole[: len(whole) // 2] + b"\xff\xd9",
        "huge": bytes(big) + b"\xff\xd9",
        "stray": whole[:sof] + b"\x12\x34\x56" + whole[sof:],
    }


WIDTH = 0.0625  # conv1 has 6 kernels, fc6/fc7 256 neurons: a step takes milliseconds
TINY = [
    "--recipe",
    "modern",
    "--width",
    WIDTH,
    "--batch-size",
    8,
    "--device",
    "cpu",
    "--torch-threads",
    1,
    "--threads",
    1,
    "--no-progress",
    "--warmup-epochs",
    0.5,
]
ENV = env_with_path(ROOT, ROOT / "tests")


@pytest.fixture(scope="module")
def data(tmp_path_factory, prepared):
    """The session's prepared mini-ImageNet (3 classes, 46 train / 12 val images) with its stats.json."""
    d = tmp_path_factory.mktemp("train") / "data"
    shutil.copytree(prepared, d)
    write_stats(compute_stats(d, threads=1), d / "stats.json")
    return d


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory):
    """One epoch through the command line, as a user runs it."""
    out = tmp_path_factory.mktemp("runs") / "one"
    r = run_cli("train", data, "--out", out, "--epochs", 1, *TINY)
    assert "metrics.jsonl" in r.stdout
    return out


def tiny(data, out, *, epochs=1, lr=None, batch_size=8, **run):
    """Configs for the tiny model: the modern recipe with one warmup epoch, deterministic CPU threads."""
    from alexmodel.config import DataConfig, RunConfig, recipe  # torch: after OMP_NUM_THREADS is set, above

    model, aug, optim = recipe("modern", width=WIDTH, batch_size=batch_size, epochs=epochs, lr=lr)
    run = RunConfig(out=str(out), device="cpu", torch_threads=1, progress=False, **run)
    return DataConfig(str(data), threads=1, aug=aug), model, replace(optim, warmup_epochs=1.0), run


@pytest.fixture(scope="module")
def one_label_per_image(tmp_path_factory):
    """16 training images of 16 classes: an image's label names it, so the labels a rank sees say which images."""
    from alexdata.prepare import PrepareConfig, prepare
    from alexdata.synth import SynthConfig, make_synth

    root = tmp_path_factory.mktemp("unique")
    make_synth(
        root / "raw",
        SynthConfig(classes=16, train_per_class=1, val_per_class=1, oddities=False),
        workers=2,
        progress=False,
    )
    prepare(root / "raw", root / "data", PrepareConfig(shard_size=4), workers=2, progress=False, log=lambda *a: None)
    write_stats(compute_stats(root / "data", threads=1), root / "data" / "stats.json")
    return root / "data"


def start_train(data, out, *extra):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "train", str(data), "--out", str(out), *TINY_S, *map(str, extra)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # the test sends SIGHUP or SIGTERM; nohup would have SIGHUP ignored
    )


TINY_S = [str(x) for x in TINY]


def wait_for(path, proc, seconds=60):
    deadline = time.time() + limit(seconds)
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.02)


def val_images(data, dst):
    """The val split's JPEGs as files, and their labels."""
    man = json.loads((data / "manifest.json").read_text())
    dst.mkdir()
    files, labels = [], []
    for sh in man["val"]["shards"]:
        with tarfile.open(data / sh["file"]) as tf:
            members = tf.getmembers()
            for jpg, cls in zip(members[::2], members[1::2]):
                p = dst / jpg.name.replace(".jpg", ".JPEG")
                p.write_bytes(tf.extractfile(jpg).read())
                files.append(p)
                labels.append(int(tf.extractfile(cls).read()))
    return files, labels
