"""alexmodel.predict's image list: every file that cannot be trusted is named with why, before any decoding."""

from conftest import damaged_jpegs

from alexmodel.predict import image_files


def test_damaged_jpegs_that_decode_as_grey_are_named_and_whole_ones_pass(tmp_path):
    """A JPEG cut short (ending in an end-of-image marker) and a header bomb decode without an error, as grey:
    predict names them as prepare does; stray bytes between segments leave the image whole and it is kept."""
    for name, data in damaged_jpegs().items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    why = {p.rsplit("/", 1)[-1]: w for p, w in image_files([tmp_path])}
    assert why["stray.jpg"] is None
    for name in ("cut.jpg", "huge.jpg"):
        assert why[name].startswith("truncated or corrupt JPEG data (libjpeg: "), why


def test_a_file_name_that_is_not_utf8_is_named_and_the_others_kept(tmp_path):
    """DALI's file reader takes UTF-8 names only: such a name reached it and stopped the whole batch."""
    import os

    whole = damaged_jpegs()["stray"]
    (tmp_path / "fine.jpg").write_bytes(whole)
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")  # Latin-1, as an old camera or archive names it
    with open(odd, "wb") as f:
        f.write(whole)
    why = {os.fsencode(p).rsplit(b"/", 1)[-1]: w for p, w in image_files([tmp_path])}
    assert why == {
        b"fine.jpg": None,
        b"caf\xe9.jpg": "a file name that is not UTF-8 (DALI reads UTF-8 names only): rename the file",
    }
