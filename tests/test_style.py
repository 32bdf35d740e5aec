"""The code reads one way: ruff's lint and formatter, configured in pyproject.toml, pass on the whole tree."""

import subprocess
import sys

import pytest
from conftest import ROOT, limit


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args):
    r = subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=limit(300)
    )
    assert r.returncode == 0, r.stdout + r.stderr
