"""Writing files so that a kill at any instant leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def temporary(path: str | os.PathLike, tag: str = "") -> Path:
    """The name `path` is written under until it is complete: `path.tmp` beside it, or `path.TAG.tmp` for a writer
    that shares the directory with others writing the same names at once (`prepare --part i/n`: part-i-of-n), so
    one never renames or truncates another's half-written file."""
    path = Path(path)
    return path.with_name(path.name + (f".{tag}" if tag else "") + ".tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, tag: str = ""):
    """A binary file to write `path` through: written as `temporary(path, tag)`, flushed to disk, then renamed over
    `path` (atomic on POSIX) when the block ends without an error."""
    path = Path(path)
    tmp = temporary(path, tag)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written .tmp is left behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, tag: str = "") -> Path:
    """Write `data` to `path` through `atomic_open`."""
    with atomic_open(path, tag) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def process_tag() -> str:
    """A `temporary` tag no other live process shares, on any host of a shared file system: "HOST-PID"."""
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def remove_dead_temporaries(path: str | os.PathLike) -> None:
    """Removes the `temporary(path, process_tag())` files that processes of this host left when they were killed
    (their pid runs no more); those of live processes, and of other hosts, stay."""
    import socket

    path, host = Path(path), socket.gethostname()
    for tmp in path.parent.glob(f"{path.name}.{host}-*.tmp"):
        pid = tmp.name[len(f"{path.name}.{host}-") : -len(".tmp")]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                tmp.unlink(missing_ok=True)
            except PermissionError:  # alive, another user's
                pass


LOCK = ".lock"  # in a directory one process writes at a time: the holder's "host pid", removed on release


class DirLock:
    """An exclusive lock on a directory for one writer (`lock_dir`): an open lock file with `flock` on it, which
    the kernel releases when the process ends, however it ends (kill -9 too), so a stale file never blocks.
    `close` removes the file (a run directory or prepare output is left as without the lock)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def close(self) -> None:
        if self.fd >= 0:
            self.path.unlink(missing_ok=True)  # still held: a process that opened it now sees another inode, retries
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1

    __del__ = close

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lock_dir(directory: str | os.PathLike, *, what: str, error: type[Exception], name: str = LOCK) -> DirLock:
    """Takes `directory/name` exclusively (creating the directory) for the caller's whole run, or raises `error`
    with one line naming the holder's host and pid. what: the writer, for that line ("train", "prepare")."""
    import fcntl
    import socket

    directory = Path(directory)
    path = directory / name
    while True:
        try:  # the first write of a run into its directory: a read-only or full one is refused here, in one line
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise error(
                f"{directory}: {what} cannot write there ({e.strerror or e}); choose another directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)  # e.g. Lustre mounted without flock: say so rather than blame another process
                raise error(f"{path}: cannot lock ({e.strerror}); this file system does not support flock") from None
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {holder[1]} on {holder[0]}" if len(holder) >= 2 else "another process"
            raise error(
                f"{directory} is in use by another {what} ({who}, holding {path.name}); wait for it to end, or "
                f"choose another directory"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder released and removed this file between our open and flock: take the new one
    os.ftruncate(fd, 0)  # a holder killed by -9 left its line
    os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
    return DirLock(fd, path)
