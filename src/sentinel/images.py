"""Check one image: does it decode, how big is it, what is its content hash, may we link it?"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})
MIN_SIDE = 10  # Ultralytics rejects images under 10 px (ultralytics/data/utils.py verify_image_label)


@dataclass(frozen=True)
class ImageCheck:
    """What prep needs to know about one image file."""

    digest: str
    width: int = 0
    height: int = 0
    format: str = ""
    problem: str = ""  # "" when usable, else a reason counted in the report
    detail: str = ""
    # Ultralytics re-saves a JPEG that lacks its end-of-image marker IN PLACE ("corrupt JPEG restored and
    # saved", ultralytics/data/utils.py verify_image_label). Through a hard link or symlink that would
    # rewrite the user's source file, so such images are copied, never linked.
    must_copy: bool = False
    extension_mismatch: bool = False
    size_bytes: int = 0


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def check_image(path: Path) -> ImageCheck:
    """Read, hash and fully decode `path`. Never raises for a bad image: returns it with `problem` set."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as error:
        return ImageCheck(digest="", problem="unreadable_image", detail=str(error))
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if not data:
        return ImageCheck(digest=digest, problem="empty_image_file", detail="0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = (image.format or "").lower()
            width, height = image.size
            if fmt == "jpeg":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # DCT-scaled decode: fast
            image.load()
    except Exception as error:  # PIL raises many types for bad data; any of them means "cannot decode"
        return ImageCheck(digest=digest, problem="undecodable_image", detail=f"{type(error).__name__}: {error}")
    if min(width, height) < MIN_SIDE:
        return ImageCheck(
            digest=digest,
            width=width,
            height=height,
            format=fmt,
            problem="image_too_small",
            detail=f"{width}x{height} px, Ultralytics needs {MIN_SIDE}+",
        )
    suffix = path.suffix.lower().lstrip(".")
    mismatch = not (
        suffix == fmt or (fmt == "jpeg" and suffix in ("jpg", "jpeg")) or (fmt == "tiff" and suffix == "tif")
    )
    return ImageCheck(
        digest=digest,
        width=width,
        height=height,
        format=fmt,
        must_copy=fmt == "jpeg" and not data.endswith(b"\xff\xd9"),  # Ultralytics reads exactly the last 2 bytes
        extension_mismatch=mismatch,
        size_bytes=len(data),
    )
