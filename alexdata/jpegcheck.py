"""Strict JPEG checking: the libjpeg warnings that PIL and DALI let pass.

libjpeg recovers from missing or corrupt entropy-coded data with a warning and fills the rest of the image
with grey: a download cut short that still ends in an end-of-image marker decodes with a grey lower half, and a
3 KB file whose header claims 12000x12000 decodes to a flat grey image, both without an error. simplejpeg's
strict mode (TurboJPEG's TJFLAG_STOPONWARNING) raises on the first such warning instead. The check decodes at
1/8 scale: every coefficient is still entropy-decoded, so missing data is still found, with a fraction of the
IDCT work.
"""

from __future__ import annotations

import simplejpeg  # imported here: a missing install fails at start, not as one skip per image

# libjpeg's JWRN_EXTRANEOUS_DATA: stray bytes between two segments; the image data itself is whole.
HARMLESS = "extraneous bytes before marker"
# libjpeg's warnings of missing or damaged image data (jerror.h: JWRN_JPEG_EOF, JWRN_HIT_MARKER, JWRN_MUST_RESYNC,
# JWRN_HUFF_BAD_CODE, ...).
DAMAGED = ("Corrupt JPEG data", "Premature end of JPEG file")


class DamagedJPEG(ValueError):
    """A JPEG whose decoder warns of missing or corrupt image data."""


def jpeg_warning(data: bytes) -> str | None:
    """libjpeg's first warning about the JPEG `data`, None when it decodes without one (or is not a JPEG, or is
    one TurboJPEG cannot decode at all: PIL judges those)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        out = "CMYK" if colorspace in ("CMYK", "YCCK") else "GRAY"  # GRAY: the luma plane alone, the least work
        simplejpeg.decode_jpeg(data, colorspace=out, strict=True, min_factor=8)
    except ValueError as e:
        text = str(e).strip()
        return text if text.startswith(DAMAGED) else None
    return None


def is_damaged(warning: str | None) -> bool:
    """Whether a `jpeg_warning` means missing or corrupt image data (not stray bytes between segments)."""
    return warning is not None and HARMLESS not in warning
