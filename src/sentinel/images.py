"""Check one image: does it decode, is it big enough, what is its content hash, may we link it?

Decoding uses OpenCV (C++, releases the GIL, so prep's threads run in parallel); JPEGs are decoded at 1/8
scale, which still reads the whole entropy-coded stream. PIL parses JPEG headers in Python and was half of
prep's time per image (see benchmarks/prep.py). PIL is used only for the rare JPEG that lacks its
end-of-image marker, where OpenCV would quietly return a partial image.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})
MIN_SIDE = 10  # Ultralytics rejects images under 10 px (ultralytics/data/utils.py verify_image_label)
_SUFFIX_FORMATS = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "mpo": "jpeg",
    "png": "png",
    "bmp": "bmp",
    "tif": "tiff",
    "tiff": "tiff",
    "webp": "webp",
    "dng": "tiff",
    "pfm": "pfm",
}


@dataclass(frozen=True)
class ImageCheck:
    """What prep needs to know about one image file."""

    digest: str
    format: str = ""
    problem: str = ""  # "" when usable, else a reason counted in the report
    detail: str = ""
    # Ultralytics re-saves a JPEG that lacks its end-of-image marker IN PLACE ("corrupt JPEG restored and
    # saved", ultralytics/data/utils.py verify_image_label). Through a hard link or symlink that would
    # rewrite the user's source file, so such images are copied, never linked.
    must_copy: bool = False
    extension_mismatch: bool = False
    size_bytes: int = 0


def sniff_format(data: bytes) -> str:
    """The image format from its first bytes (what decoders go by), whatever the file is named."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] in (b"PF", b"Pf"):
        return "pfm"
    return ""


def check_image(path: str | Path) -> ImageCheck:
    """Read, hash and decode `path`. Never raises for a bad image: returns it with `problem` set."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return ImageCheck(digest="", problem="unreadable_image", detail=str(error))
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if not data:
        return ImageCheck(digest=digest, problem="empty_image_file", detail="0 bytes")
    fmt = sniff_format(data)
    size = _decoded_size(data, fmt)
    if size is None:
        return ImageCheck(digest=digest, format=fmt, problem="undecodable_image", detail=f"{fmt or 'unknown'} data")
    must_copy = fmt == "jpeg" and not data.endswith(b"\xff\xd9")  # Ultralytics reads exactly the last 2 bytes
    if must_copy:
        problem = _pil_full_decode_problem(data)
        if problem:
            return ImageCheck(digest=digest, format=fmt, problem="undecodable_image", detail=problem)
    if min(size) < MIN_SIDE:
        return ImageCheck(
            digest=digest,
            format=fmt,
            problem="image_too_small",
            detail=f"{size[0]}x{size[1]} px, Ultralytics needs {MIN_SIDE}+",
        )
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    return ImageCheck(
        digest=digest,
        format=fmt,
        must_copy=must_copy,
        extension_mismatch=_SUFFIX_FORMATS.get(suffix) != fmt,
        size_bytes=len(data),
    )


def _decoded_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) after a successful decode, None when OpenCV cannot decode the data."""
    import cv2
    import numpy as np

    buffer = np.frombuffer(data, np.uint8)
    reduced = fmt == "jpeg"
    image = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8 if reduced else cv2.IMREAD_GRAYSCALE)
    if image is None or image.size == 0:
        return None
    height, width = image.shape[:2]
    if reduced and min(width, height) * 8 <= 2 * MIN_SIDE:  # too coarse to judge "under 10 px": decode fully
        image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
        if image is None:
            return None
        return image.shape[1], image.shape[0]
    return (width * 8, height * 8) if reduced else (width, height)


def _pil_full_decode_problem(data: bytes) -> str:
    """'' when PIL decodes the whole image, else why not (a truncated JPEG fails here, not in OpenCV)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises many types for bad data; any of them means "cannot decode"
        return f"{type(error).__name__}: {error}"
    return ""
