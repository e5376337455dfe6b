"""Reading portraits from bytes: formats measured from their headers, decompression bombs refused before decoding."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.engines.portraits import (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageTooLargeError, UnreadableImageError,
                                            image_dimensions, load_portrait, portrait_from_bytes)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG, all black: IHDR, one IDAT (zlib, no row filters), IEND.

    The rows are compressed in blocks, never held whole: 20000 x 20000 is 50 MB of rows, about 50 KB of file."""
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then width bits of zeros
    rows_per_block = max(1, (4 << 20) // len(row))
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, height - start)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16 x 16 baseline JPEG (JFIF, tables, scan) whose frame header (SOF0) claims ``width`` x ``height``."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5:sof + 9]) == (16, 16)
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"png-20000": black_png(20000, 20000), "png-40000": black_png(40000, 40000),
            "jpeg-20000": jpeg_claiming(20000, 20000), "jpeg-40000": jpeg_claiming(40000, 40000)}


def test_crafted_png_is_a_valid_image():
    data = black_png(97, 71)
    assert image_dimensions(data) == ("PNG", 97, 71)
    portrait = portrait_from_bytes(data, name="small.png")
    assert portrait.image.shape == (71, 97, 3) and portrait.image.max() == 0


class DecodeSpy:
    """Stands in for ``cv2.imdecode``: counts the calls and decodes nothing (a bomb's picture is never allocated,
    even when the code under test would decode it)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, buf: np.ndarray, flags: int) -> None:
        self.calls += 1
        return None


@pytest.mark.parametrize("name", ["png-20000", "png-40000", "jpeg-20000", "jpeg-40000"])
def test_pixel_bombs_are_refused_from_the_header(bombs, name, monkeypatch):
    data = bombs[name]
    side = int(name.split("-")[1])
    assert len(data) < 400_000 < MAX_IMAGE_BYTES  # small files: only the pixel limit can stop them
    assert image_dimensions(data)[1:] == (side, side)
    decode = DecodeSpy()
    monkeypatch.setattr(cv2, "imdecode", decode)
    with pytest.raises(UnreadableImageError):  # the spy is on the decode path: a small image reaches it
        portrait_from_bytes(black_png(97, 71))
    assert decode.calls == 1
    with pytest.raises(ImageTooLargeError) as err:  # not MemoryError: nothing of the picture is allocated
        portrait_from_bytes(data, name=f"{name}.img")
    assert decode.calls == 1  # refused from the header: the decoder was never called
    message = str(err.value)
    assert f"{side}x{side} pixels" in message and f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels" in message
    assert len(message) < 160
    assert isinstance(err.value, EngineError)


def test_pixel_limit_boundary():
    at_limit = jpeg_claiming(8000, MAX_IMAGE_PIXELS // 8000)
    assert image_dimensions(at_limit)[1] * image_dimensions(at_limit)[2] == MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError):
        portrait_from_bytes(jpeg_claiming(8000, MAX_IMAGE_PIXELS // 8000 + 1))


@pytest.mark.parametrize("ext,params,fmt", [
    (".png", [], "PNG"),
    (".jpg", [], "JPEG"),
    (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"),  # lossy (VP8)
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"),  # lossless (VP8L)
    (".bmp", [], "BMP"),
])
def test_header_sizes_of_encoded_images(ext, params, fmt):
    image = np.random.default_rng(0).integers(0, 255, (77, 93, 3), np.uint8)
    ok, buf = cv2.imencode(ext, image, params)
    assert ok
    data = buf.tobytes()
    assert image_dimensions(data) == (fmt, 93, 77)
    assert portrait_from_bytes(data).image.shape == (77, 93, 3)


def test_header_sizes_of_webp_extended_and_gif():
    vp8x = b"RIFF" + struct.pack("<I", 22) + b"WEBP" + b"VP8X" + struct.pack("<I", 10) + bytes(4)
    vp8x += (29999).to_bytes(3, "little") + (19999).to_bytes(3, "little")
    assert image_dimensions(vp8x) == ("WebP", 30000, 20000)
    with pytest.raises(ImageTooLargeError):
        portrait_from_bytes(vp8x)
    gif = b"GIF89a" + struct.pack("<HH", 65535, 65535) + bytes(3)
    assert image_dimensions(gif) == ("GIF", 65535, 65535)
    with pytest.raises(ImageTooLargeError):
        portrait_from_bytes(gif)


def test_unknown_or_truncated_formats_are_unreadable():
    ok, tiff = cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))  # decodable, but its size is not in a fixed header
    for data in (b"definitely not a picture", tiff.tobytes(), b"\x89PNG\r\n\x1a\n\x00\x00", b"\xff\xd8\xff\xd9",
                 black_png(0, 10)):
        with pytest.raises(UnreadableImageError, match="could not decode image"):
            portrait_from_bytes(data)
    with pytest.raises(UnreadableImageError, match="empty"):
        portrait_from_bytes(b"")


def test_damaged_image_with_a_good_header_is_unreadable():
    data = black_png(96, 80)
    with pytest.raises(UnreadableImageError, match="damaged or unsupported PNG"):
        portrait_from_bytes(data[:40])


def test_byte_limit_names_the_limit_and_not_the_input():
    with pytest.raises(ImageTooLargeError, match=f"the limit is {MAX_IMAGE_BYTES // 2**20} MiB"):
        portrait_from_bytes(b"\xff\xd8\xff" + bytes(MAX_IMAGE_BYTES))
    with pytest.raises(UnreadableImageError) as err:
        portrait_from_bytes(b"junk" * 1000, name="x" * 5000)
    assert len(str(err.value)) < 160 and "junk" not in str(err.value)


def test_large_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:  # sparse: MAX_IMAGE_BYTES + 1 bytes on disk costs nothing
        f.write(b"\xff\xd8\xff")
        f.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(ImageTooLargeError, match="huge.jpg"):
        load_portrait(path)
