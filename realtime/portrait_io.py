"""Read a portrait image (file or uploaded bytes) into an ``engines.base.Portrait``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

from avatarstream.engines.base import EngineError, Portrait

PORTRAITS_DIR = Path(str(files("avatarstream.engines.lite") / "portraits"))
DEMO_PORTRAITS = {"human": PORTRAITS_DIR / "astronaut.jpg", "astronaut": PORTRAITS_DIR / "astronaut.jpg",
                  "cat": PORTRAITS_DIR / "cat.jpg"}
MAX_IMAGE_BYTES = 20 * 2**20


class UnreadableImageError(EngineError):
    """The bytes are not an image format we can decode."""


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


def portrait_from_bytes(data: bytes, name: str = "upload", kind: str = "auto") -> Portrait:
    if not data:
        raise UnreadableImageError(f"image {name!r} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise UnreadableImageError(f"image {name!r} is too large ({len(data)} bytes; limit {MAX_IMAGE_BYTES})")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableImageError(f"could not decode image {name!r}: not a JPEG, PNG, BMP or WebP file")
    return Portrait(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name=name, kind=kind)


def load_portrait(name_or_path: str | Path | None, kind: str = "auto") -> Portrait:
    path = resolve_image(name_or_path)
    if kind == "auto" and path == DEMO_PORTRAITS["cat"]:
        kind = "animal"
    return portrait_from_bytes(path.read_bytes(), name=path.name, kind=kind)
