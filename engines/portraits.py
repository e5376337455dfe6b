"""Read a portrait image (file or uploaded bytes) into an ``engines.base.Portrait``; the demo portraits.

Untrusted bytes are measured before they are decoded: the width and height come from the file header
(:func:`image_dimensions`: PNG, JPEG, WebP, GIF, BMP), so an image that would decode to more than
``MAX_IMAGE_PIXELS`` pixels (a small file can claim a huge picture) is refused without allocating it.
Other formats are refused too: their size is not known before decoding.
"""

from __future__ import annotations

import struct
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

from avatarstream.engines.base import EngineError, Portrait

PORTRAITS_DIR = Path(str(files("avatarstream.engines.lite") / "portraits"))
DEMO_PORTRAITS = {"human": PORTRAITS_DIR / "astronaut.jpg", "astronaut": PORTRAITS_DIR / "astronaut.jpg",
                  "cat": PORTRAITS_DIR / "cat.jpg"}
MAX_IMAGE_BYTES = 20 * 2**20  # bytes of an encoded image file or upload
MAX_IMAGE_PIXELS = 40_000_000  # width x height of the decoded picture (40 megapixels, 480 MB as 8-bit RGB)
FORMATS = "JPEG, PNG, WebP, GIF or BMP"
_NAME_CHARS = 60  # longest file name quoted in a message


class UnreadableImageError(EngineError):
    """The bytes are not an image format we can decode."""


class ImageTooLargeError(EngineError):
    """The image file is over ``MAX_IMAGE_BYTES`` or its picture over ``MAX_IMAGE_PIXELS``."""


def _label(name: str) -> str:
    text = str(name)
    return repr(text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 3] + "...")


def _png_size(data: bytes) -> tuple[int, int] | None:
    # 8-byte signature, then the IHDR chunk: length (4), b"IHDR", width (4), height (4), big-endian
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# Start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length field


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments after SOI up to the first start-of-frame: (width, height) from it."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, EOI or start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])  # after length (2) and precision (1)
            return width, height
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas width - 1, height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame: 14-bit sizes
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit width - 1, height - 1
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    # logical screen width and height, little-endian, after the 6-byte signature
    return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])  # a negative height is a top-down bitmap
    return abs(width), abs(height)


def image_dimensions(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) in pixels read from the header of an encoded image, without decoding it;
    None for a format this does not know or a header too short or malformed to give the size."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        fmt, size = "PNG", _png_size(data)
    elif data.startswith(b"\xff\xd8\xff"):
        fmt, size = "JPEG", _jpeg_size(data)
    elif data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        fmt, size = "WebP", _webp_size(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        fmt, size = "GIF", _gif_size(data)
    elif data.startswith(b"BM"):
        fmt, size = "BMP", _bmp_size(data)
    else:
        return None
    return None if size is None else (fmt, int(size[0]), int(size[1]))


def resolve_image(name_or_path: str | Path | None) -> Path:
    """``None`` -> the demo human portrait; ``"cat"``/``"human"`` -> demo portraits; else a path."""
    if name_or_path is None:
        return DEMO_PORTRAITS["human"]
    if str(name_or_path) in DEMO_PORTRAITS:
        return DEMO_PORTRAITS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise EngineError(f"image file not found: {path} (or use one of the demo names: cat, human)")
    return path


def _too_many_bytes(name: str, size: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"image {_label(name)} is too large: {size} bytes, the limit is "
                              f"{MAX_IMAGE_BYTES // 2**20} MiB ({MAX_IMAGE_BYTES} bytes)")


def portrait_from_bytes(data: bytes, name: str = "upload", kind: str = "auto") -> Portrait:
    """Decode an encoded image (``FORMATS``) into an RGB ``Portrait``, after checking its size from the header."""
    if not data:
        raise UnreadableImageError(f"image {_label(name)} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_many_bytes(name, len(data))
    header = image_dimensions(data)
    if header is None:
        raise UnreadableImageError(f"could not decode image {_label(name)}: not a {FORMATS} file")
    fmt, width, height = header
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"could not decode image {_label(name)}: its {fmt} header gives no size")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"image {_label(name)} is too large: {width}x{height} pixels, the limit is "
                                 f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableImageError(f"could not decode image {_label(name)}: a damaged or unsupported {fmt} file")
    return Portrait(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name=name, kind=kind)


def load_portrait(name_or_path: str | Path | None, kind: str = "auto") -> Portrait:
    """A demo portrait by name (``None``, ``"human"``, ``"cat"``) or an image file; the file size is checked
    before it is read."""
    path = resolve_image(name_or_path)
    if kind == "auto" and path == DEMO_PORTRAITS["cat"]:
        kind = "animal"
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise _too_many_bytes(path.name, size)
    return portrait_from_bytes(path.read_bytes(), name=path.name, kind=kind)
