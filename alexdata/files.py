"""Writing files so that a kill at any instant leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def temporary(path: str | os.PathLike) -> Path:
    """The name `path` is written under until it is complete: `path.tmp`, beside it."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """A binary file to write `path` through: written as `temporary(path)`, flushed to disk, then renamed over
    `path` (atomic on POSIX) when the block ends without an error."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written .tmp is left behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through `atomic_open`."""
    with atomic_open(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)
