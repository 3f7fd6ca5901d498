"""Decode an image file with Pillow into RGB ``uint8`` pixels, or say clearly that it is unreadable.

Every readable image comes out as 3-channel RGB: CMYK and YCbCr JPEGs, grayscale (``L``, ``I;16``),
palette (``P``) images and PNGs saved under a ``.jpg`` name are all converted; transparent pixels
are composited over white. EXIF orientation is not applied (as in ``torchvision.datasets.ImageFolder``).

Zero-byte, truncated and non-image files raise :class:`CorruptImageError` naming the file, so a
dataset can skip them (Microsoft's ``PetImages`` download has several).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


class CorruptImageError(ValueError):
    """An image file that Pillow cannot decode; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any Pillow mode: alpha over white, 16-bit gray scaled to 8 bits, rest converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16/32-bit gray: convert("L") would clip
        gray = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(gray.max()), 1.0)
        gray8 = np.clip(np.rint(gray * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray8, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | Path, min_size: int | None = None) -> Image.Image:
    """The decoded image at ``path`` as a loaded RGB Pillow image.

    ``min_size`` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while it decodes (Pillow's
    ``draft``), keeping both sides >= ``min_size``: several times faster for large photos that
    are resized to a small size afterwards. Raises :class:`CorruptImageError` for unreadable
    files; a missing file raises ``FileNotFoundError`` as usual.
    """
    data = Path(path).read_bytes()
    if not data:
        raise CorruptImageError(path, "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        if min_size is not None:
            img.draft("RGB", (min_size, min_size))
        img.load()  # decodes; truncated data raises here (ImageFile.LOAD_TRUNCATED_IMAGES is off)
        return _to_rgb(img)
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise CorruptImageError(path, f"{type(exc).__name__}: {exc}") from exc


def decode_image(path: str | Path) -> np.ndarray:
    """Full-resolution RGB pixels of the image at ``path``: ``(H, W, 3)`` ``uint8``."""
    return np.asarray(open_rgb(path))
