"""Check one image: does it decode, is it big enough, what is its content hash, may we link it?

Decoding uses OpenCV (C++, releases the GIL, so prep's threads run in parallel); JPEGs are decoded at 1/8
scale, which still reads the whole entropy-coded stream. PIL parses JPEG headers in Python and was half of
prep's time per image (see benchmarks/prep.py). PIL is used only for the rare JPEG that lacks its
end-of-image marker, where OpenCV would quietly return a partial image.

The size is read from the file's header, EXIF orientation applied, exactly as Ultralytics' `exif_size`
gives it: prep writes Ultralytics' label cache with it (sentinel.dataset.ultra_cache), and a wrong shape there
would silently misplace every box. JPEG and plain PNG headers are parsed here (microseconds); anything
else, or a header carrying EXIF, goes through PIL and Ultralytics' own `exif_size`.

The content hash (duplicates, leaks) is SHA-256, cut to 128 bits: OpenSSL computes it with the processor's
SHA instructions where there are some (x86 since Ice Lake and Zen, ARMv8), 1.8 GB/s here against 0.83 GB/s
for BLAKE2b, the hash before; on 345 MiB of photos that is a quarter of a second of a build's CPU.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path

from sentinel.dataset.file_bytes import read_file

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
    width: int = 0  # EXIF-corrected, as Ultralytics reads it (its label cache stores (height, width))
    height: int = 0


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


def check_image(path: str | Path, size: int = 0) -> ImageCheck:
    """Read, hash and decode `path` (`size`: its size at the last stat, if known). Never raises for a bad image:
    returns it with `problem` set."""
    try:
        data = read_file(path, size)
    except OSError as error:
        return ImageCheck(digest="", problem="unreadable_image", detail=str(error))
    return with_extension_check(check_image_bytes(data), str(path))


def with_extension_check(check: ImageCheck, path: str) -> ImageCheck:
    """`check` with `extension_mismatch` set for `path`: the one part of a check that depends on the name."""
    if check.problem or _SUFFIX_FORMATS.get(path[path.rfind(".") + 1 :].lower()) == check.format:
        return check
    return replace(check, extension_mismatch=True)


def check_image_bytes(data: bytes) -> ImageCheck:
    """Everything prep learns from an image's content; the same bytes give the same answer, whatever the name."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    if not data:
        return ImageCheck(digest=digest, problem="empty_image_file", detail="0 bytes")
    fmt = sniff_format(data)
    if not _decodes(data, fmt):
        return ImageCheck(digest=digest, format=fmt, problem="undecodable_image", detail=f"{fmt or 'unknown'} data")
    size = header_size(data, fmt)
    if size is None:
        return ImageCheck(digest=digest, format=fmt, problem="undecodable_image", detail="unreadable image header")
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
    return ImageCheck(
        digest=digest, format=fmt, must_copy=must_copy, size_bytes=len(data), width=size[0], height=size[1]
    )


def _decodes(data: bytes, fmt: str) -> bool:
    """True when OpenCV decodes the data (JPEGs at 1/8 scale: the whole stream is still entropy-decoded)."""
    import cv2
    import numpy as np

    flag = cv2.IMREAD_REDUCED_GRAYSCALE_8 if fmt == "jpeg" else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return image is not None and image.size > 0


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) with EXIF orientation applied, as Ultralytics' `exif_size`; None if PIL cannot open it."""
    fast = _jpeg_header_size(data) if fmt == "jpeg" else _png_header_size(data) if fmt == "png" else None
    return fast if fast is not None else _pil_exif_size(data)


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (DHT, JPG, DAC are not)


def _jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """The frame size from the SOF segment; None (so PIL decides) when EXIF comes first or the header is odd."""
    i, end = 2, len(data) - 9
    while i < end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\0\0":  # orientation may swap w and h: PIL reads it
            return None
        if marker in _JPEG_SOF:
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


# PNG chunks that cannot carry EXIF: with only these, IHDR's size is what PIL and Ultralytics report.
_PNG_PLAIN_CHUNKS = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"bKGD", b"pHYs", b"sBIT"}
)


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """IHDR's size when no chunk could hold EXIF (walks chunk headers only); else None so PIL decides."""
    i = 8
    while i + 8 <= len(data):
        length, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        if kind not in _PNG_PLAIN_CHUNKS:
            return None
        if kind == b"IEND":
            break
        i += 12 + length
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (width, height) if width and height else None


def _pil_exif_size(data: bytes) -> tuple[int, int] | None:
    """Ultralytics' own `exif_size` on the image, for formats and headers not parsed here."""
    from PIL import Image
    from ultralytics.data.utils import exif_size

    try:
        with Image.open(io.BytesIO(data)) as image:
            return tuple(exif_size(image))  # type: ignore[return-value]
    except Exception:  # PIL raises many types for data it cannot open
        return None


def _pil_full_decode_problem(data: bytes) -> str:
    """'' when PIL decodes the whole image, else why not (a truncated JPEG fails here, not in OpenCV)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises many types for bad data; any of them means "cannot decode"
        return f"{type(error).__name__}: {error}"
    return ""
