"""Shared fixtures: one small generated mini-ImageNet and its prepared shards, made once per session."""

import faulthandler
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from alexdata.prepare import PrepareConfig, prepare
from alexdata.synth import SynthConfig, make_synth

ROOT = Path(__file__).resolve().parents[1]
SYNTH = SynthConfig(classes=3, train_per_class=16, val_per_class=4, seed=7)  # 48 train inputs, 2 unreadable
PREP = PrepareConfig(shard_size=8, seed=3)


# A test that runs longer than this is taken for a hang: its worker prints every thread's stack and exits, so
# the run goes on and names the test (pytest-xdist: "worker crashed while running ..."), instead of waiting for
# CI's limit. The slowest test takes ~70 s on 2 cores.
HANG_S = float(os.environ.get("ALEXNET_TEST_HANG_S", 300))
CLI_TIMEOUT_S = 240  # one `alexnet` command in a test; the longest takes ~60 s on 2 cores


def pytest_configure(config):
    # The signal tests send SIGHUP and SIGINT to the commands they start, which inherit an ignored disposition:
    # under nohup, or a shell's background job, those tests would see a run that never stops. Start them clean.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # fd 2 before pytest captures it: where a hung test's stacks go (a CI log shows them).
    config._hang_stream = os.fdopen(os.dup(2), "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    stream = item.config._hang_stream
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=stream)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def env_with_path(*paths) -> dict:
    """os.environ with PYTHONPATH = `paths` first, then what it held already (a GPU kit's site folder, say), and
    Python's fault handler on: a command killed with SIGABRT for hanging prints its stacks."""
    old = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join([*map(str, paths), *([old] if old else [])])
    return {**os.environ, "PYTHONPATH": pythonpath, "PYTHONFAULTHANDLER": "1"}


def run_cli(*args, check=True, timeout=CLI_TIMEOUT_S, **kw):
    """Runs `alexnet ARGS` in a subprocess, as a user would; returns the CompletedProcess. A command still
    running after `timeout` seconds fails the test with its stacks (SIGABRT to its fault handler)."""
    cmd = [sys.executable, str(ROOT / "cli.py"), *map(str, args)]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env_with_path(ROOT), **kw
    ) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)
            try:
                out, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            raise AssertionError(f"alexnet {' '.join(map(str, args))} hung for {timeout} s:\n{err[-4000:]}") from None
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
