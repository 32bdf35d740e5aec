"""One root for the errors a user can fix: the CLI catches `UserError` once and prints its one line; anything
else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, data, options or state: one line saying what and what to do."""


class ConfigError(UserError, ValueError):
    """An option or config value out of range (a ValueError too, for callers that catch that)."""


class DataError(UserError):
    """The data directory is missing or is not a prepare output / class tree; one line naming the path."""


class StatsError(DataError):
    """A stats pass that cannot run or a stats.json that is missing or malformed; one line naming the file."""


class PrepareError(UserError):
    """Bad input or output directory: one line naming the file, raised before any shard is written."""


class TrainError(UserError):
    """A run cannot start or go on: one line saying why and what to do."""
