"""Commands built on the library: `alexnet check` (check.py), `alexnet bench train` (bench.py) and `alexnet demo`
(demo.py); and what more than one of them needs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def synth_done(raw: Path, cfg) -> bool:
    """Whether `raw` holds a finished `make_synth(raw, cfg)` (its synth.json records this very SynthConfig): a
    demo or check run again reuses the images instead of generating them anew."""
    done = raw / "synth.json"
    return done.is_file() and json.loads(done.read_text()).get("config") == asdict(cfg)
