"""alexdata.files: a link planted where the project writes (a temporary, an appended log, a lock) never makes it
write the file the link points to; a kill leaves the old file or the new one."""

import os

import pytest

from alexdata.errors import LinkedFileError, TrainError
from alexdata.files import append_open, atomic_write, lock_dir, temporary


@pytest.fixture
def outside(tmp_path):
    """A file outside the directory the project writes, with the bytes it must keep."""
    f = tmp_path / "outside" / "precious"
    f.parent.mkdir()
    f.write_bytes(b"keep me")
    (tmp_path / "out").mkdir()
    return f


@pytest.mark.parametrize("tag", ["", "host-1"])
@pytest.mark.parametrize("kind", ["symlink", "hardlink", "dangling"])
def test_a_link_at_the_temporary_name_is_replaced_not_written_through(outside, tag, kind):
    target = outside.parent / "new-file" if kind == "dangling" else outside
    path = outside.parent.parent / "out" / "config.json"
    tmp = temporary(path, tag)
    os.link(outside, tmp) if kind == "hardlink" else os.symlink(target, tmp)
    atomic_write(path, b"{}", tag)
    assert path.read_bytes() == b"{}" and not path.is_symlink() and not tmp.exists()
    assert outside.read_bytes() == b"keep me" and not (outside.parent / "new-file").exists()
    assert os.stat(outside).st_nlink == 1


def test_a_link_at_the_final_name_is_replaced(outside):
    path = outside.parent.parent / "out" / "stats.json"
    os.symlink(outside, path)
    atomic_write(path, b"new")
    assert not path.is_symlink() and path.read_bytes() == b"new" and outside.read_bytes() == b"keep me"


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink"])
def test_an_appended_log_that_is_a_link_is_refused_in_one_line(outside, kind):
    log = outside.parent.parent / "out" / "steps.jsonl"
    if kind == "hardlink":
        os.link(outside, log)
    else:
        os.symlink(outside if kind == "symlink" else outside.parent / "created", log)
    with pytest.raises(LinkedFileError, match="steps.jsonl: (a symbolic link|has 2 hard links)"):
        append_open(log)
    assert outside.read_bytes() == b"keep me" and not (outside.parent / "created").exists()
    log.unlink()
    with append_open(log) as f:  # a plain file appends as before
        f.write("a\n")
    with append_open(log) as f:
        f.write("b\n")
    assert log.read_text() == "a\nb\n"


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_file_that_is_a_link_is_refused(outside, kind):
    out = outside.parent.parent / "out"
    (os.link if kind == "hardlink" else os.symlink)(outside, out / ".lock")
    with pytest.raises(LinkedFileError, match=r"\.lock: (a symbolic link|has 2 hard links)"):
        lock_dir(out, what="train", error=TrainError)
    assert outside.read_bytes() == b"keep me"
    (out / ".lock").unlink()
    with lock_dir(out, what="train", error=TrainError):
        assert (out / ".lock").read_text().split()[1] == str(os.getpid())
