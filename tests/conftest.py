"""Shared fixtures: one small generated mini-ImageNet and its prepared shards, made once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alexdata.prepare import PrepareConfig, prepare
from alexdata.synth import SynthConfig, make_synth

ROOT = Path(__file__).resolve().parents[1]
SYNTH = SynthConfig(classes=3, train_per_class=16, val_per_class=4, seed=7)  # 48 train inputs, 2 unreadable
PREP = PrepareConfig(shard_size=8, seed=3)


def env_with_path(*paths) -> dict:
    """os.environ with PYTHONPATH = `paths` first, then what it held already (a GPU kit's site folder, say)."""
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), *([old] if old else [])])}


def run_cli(*args, check=True, **kw):
    """Runs `alexnet ARGS` in a subprocess, as a user would; returns the CompletedProcess."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_with_path(ROOT),
        **kw,
    )
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
