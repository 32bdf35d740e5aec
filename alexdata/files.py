"""Writing files so that a kill at any instant leaves either the old file or the new one, never half of one, and
so that a link planted where the project writes makes it write nowhere else: every temporary is created afresh
(O_CREAT | O_EXCL | O_NOFOLLOW, after removing whatever had its name, a link itself and not its target), the
rename replaces a link at the final name rather than following it, and files written in place (appended logs,
locks) refuse a symbolic link or a file with other hard links in one line."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from alexdata.errors import LinkedFileError

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create_fresh(path: Path) -> int:
    """A descriptor of a new, empty regular file at `path`, which this call created: whatever had the name (a
    killed writer's leftover, or a link planted there) is unlinked first, not written through."""
    for _ in range(3):
        try:
            return os.open(path, _NEW, 0o644)
        except FileExistsError:
            path.unlink(missing_ok=True)  # a symbolic or hard link goes, its target stays as it was
    raise LinkedFileError(f"{path}: recreated each time it is removed (another process?); cannot write it safely")


def _check_own(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"has {st.st_nlink} hard links"
        raise LinkedFileError(f"{path}: {what}; writing it would change another file: remove it and run again")


def open_in_place(path: str | os.PathLike, flags: int) -> int:
    """os.open of a file the project writes in place (O_CREAT added), refusing a symbolic link (O_NOFOLLOW) and a
    file with other hard links, each in one line (LinkedFileError)."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LinkedFileError(
                f"{path}: a symbolic link; writing it would change the file it points to: remove it and run again"
            ) from None
        raise
    _check_own(fd, path)
    return fd


def append_open(path: str | os.PathLike):
    """A text file to append lines to (a log), through `open_in_place`."""
    return os.fdopen(open_in_place(path, os.O_WRONLY | os.O_APPEND), "a")


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
        with os.fdopen(_create_fresh(tmp), "wb") as f:
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
            fd = open_in_place(path, os.O_RDWR)
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
