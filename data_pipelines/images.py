"""The one image-file reader of the project (dataset builds and ``algrnet predict``), and the JPEG encoder
of the records.

:func:`load_image` reads any image OpenCV decodes as RGB uint8 ``[H, W, 3]`` and refuses, with a
:class:`~data_pipelines.errors.BadInputError` naming the file, what OpenCV would silently half-decode:

- a missing, unreadable or empty file;
- a JPEG (``FF D8`` magic) without its end-of-image marker (truncated), or one the libjpeg decoder warns
  about ("Corrupt JPEG data: ...", "Premature end of JPEG file": damaged data decoded into grey);
- a PNG (``89 PNG`` magic) without its ``IEND`` chunk (truncated);
- anything that does not decode.

The file type is told by its first bytes, not by its extension.
"""
from __future__ import annotations

import os
import re
import sys

import cv2
import numpy as np

from algrnet_jax.verbosity import stderr_captured
from data_pipelines.errors import BadInputError

JPEG_MAGIC = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND"
JPEG_QUALITY = 95           # the records' JPEG quality

# libjpeg's warnings for damaged data ("Corrupt JPEG data: ...", "Premature end of JPEG file", ...).
_JPEG_WARNING = re.compile(r"^.*(corrupt jpeg|premature end|jpeg datastream|invalid jpeg|bogus|"
                           r"unsupported marker|huffman|warning).*$", re.IGNORECASE | re.MULTILINE)



def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB uint8 ``[H, W, 3]`` (grey images are repeated to 3 channels).

    Raises:
      BadInputError: naming the file when it is missing, unreadable, empty, truncated (JPEG without its
        end marker, PNG without its IEND chunk), damaged (the JPEG decoder warns) or cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: image file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadInputError(f"{path}: cannot read ({e.strerror})") from e
    return decode_image(data, path)


def decode_image(data: bytes, path: str) -> np.ndarray:
    """Decodes the bytes of an image file (named ``path`` in errors) as RGB uint8 ``[H, W, 3]``.

    The checks of :func:`load_image`; raises BadInputError.
    """
    if not data:
        raise BadInputError(f"{path}: image file is empty")
    body = data.rstrip(b"\x00")                     # some writers pad files with zeros
    if data.startswith(JPEG_MAGIC):
        if JPEG_END not in body[-64:]:
            raise BadInputError(f"{path}: corrupt image (truncated JPEG: no end-of-image marker)")
        image, warning = decode_jpeg_strict(data)
        if warning:
            raise BadInputError(f"{path}: corrupt image (the JPEG decoder reports: {warning})")
    else:
        if data.startswith(PNG_MAGIC) and PNG_END not in body[-16:]:
            raise BadInputError(f"{path}: corrupt image (truncated PNG: no IEND chunk)")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadInputError(f"{path}: corrupt image (cannot be decoded)")
    return np.ascontiguousarray(image[..., ::-1])


def decode_jpeg_strict(data: bytes) -> tuple[np.ndarray | None, str]:
    """Decodes JPEG bytes with OpenCV; returns (BGR image ``[H, W, 3]`` or None, the decoder's warning or "").

    libjpeg decodes damaged data (e.g. a zeroed second half) into a grey-filled image and only prints a
    warning to the C stderr. The warning is captured (``verbosity.stderr_captured``) for the call; anything else
    written there meanwhile is passed on to stderr.
    """
    with stderr_captured() as captured:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    text = captured[0]
    warnings = [m.group(0).strip() for m in _JPEG_WARNING.finditer(text)]
    rest = _JPEG_WARNING.sub("", text).strip()
    if rest:
        print(rest, file=sys.stderr)
    return image, "; ".join(warnings)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB uint8 ``[H, W, 3]`` -> JPEG bytes (OpenCV, 4:2:0, given quality)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BadInputError("JPEG encoding failed")
    return buf.tobytes()
