"""One root for the errors a user can fix: the CLI catches `UserError` once and prints its one line; anything
else is a bug and keeps its traceback. Below them, the one-line readings of what the system (a full disk) and DALI
(a sample that does not decode) raise."""

from __future__ import annotations

import errno
import os
import re

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, an exceeded quota


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """A count and its noun for a message: "1 shard", "2 shards" (`nouns`: an irregular plural, "1 class")."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


class UserError(Exception):
    """Bad input, data, options or state: one line saying what and what to do."""


class ConfigError(UserError, ValueError):
    """An option or config value out of range (a ValueError too, for callers that catch that)."""


class DataError(UserError):
    """The data directory is missing or is not a prepare output / class tree; one line naming the path."""


class StatsError(DataError):
    """A stats pass that cannot run or a stats.json that is missing or malformed; one line naming the file."""


class StatsMissing(StatsError):
    """No stats file where one was looked for; the CLI adds how to point at another (--stats)."""


class PrepareError(UserError):
    """Bad input or output directory: one line naming the file, raised before any shard is written."""


class TrainError(UserError):
    """A run cannot start or go on: one line saying why and what to do."""


class LinkedFileError(UserError):
    """A file the project writes in place (a log it appends to, a lock) is a symbolic link or has other hard
    links: writing through it would change a file outside the directory. One line naming it."""


# ---------------------------------------------------------------- the system's and DALI's errors, in one line


def disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised from or while handling, is a full disk or an exceeded quota. torch.save
    raises its stream writer's RuntimeError ("unexpected pos ...") while handling the OSError of the failed write."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        if any(os.strerror(n) in str(e) for n in DISK_FULL):
            return True
        e = e.__cause__ or e.__context__
    return False


def os_error_line(e: OSError) -> str:
    """An OSError as one line: the file, whole (no quotes, not cut at a space), what the system said, and for a full
    disk or a read-only file system what to do."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    if e.errno in DISK_FULL:
        return f"{where}the disk is full ({what}); free some space and run the same command again"
    if e.errno == errno.EROFS:
        return f"{where}{what}; choose a location that can be written"
    return f"{where}{what}"


_DALI_NAMED = (
    (re.compile(r"Failed to decode sample #\d+ : (.+)"), "cannot be decoded"),
    (re.compile(r"File mapping failed: (.+)"), "cannot be read (an empty file?)"),
    # a short read: the file is shorter than its index says (cut short, or being rewritten, while a run reads it)
    (re.compile(r"Error reading from a file (.+)"), "ends before a sample its index lists (cut short?)"),
    (
        re.compile(r'Malformed index file at "(.+?)" line \d+ - offset is outside of the archive file'),
        "lists a sample past its tar's end (the tar cut short?)",
    ),
)


def dali_reason(e: BaseException) -> tuple[str | None, str]:
    """(the file or shard sample DALI's error names, or None; why) in one line. DALI's text is the pipeline's
    traceback around one line: "Failed to decode sample #3 : SOURCE" or "File mapping failed: PATH" (SOURCE and PATH
    run to the end of the line: a path may hold spaces), or, for bytes no decoder can parse, nvImageCodec's own words
    without a file ("nvImageCodec failure: '#4'")."""
    text = str(e)
    for pattern, why in _DALI_NAMED:
        m = pattern.search(text)
        if m:
            return m.group(1).strip(), why
    lines = [
        ln.strip()
        for ln in text.split("encountered:", 1)[-1].splitlines()
        if ln.strip() and not ln.strip().startswith(("Critical error", "Current pipeline", "File ", "Error in"))
    ]
    return None, re.sub(r"\s*C\+\+ context:.*", "", lines[0] if lines else type(e).__name__)[:200]
