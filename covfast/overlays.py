"""Overlays: an X-ray with its infection in red and its lungs outlined in cyan, and a caption band below it.

NumPy and Pillow only: `covfast predict` draws them in its writer threads without loading matplotlib or fastai.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache

import numpy as np

__all__ = ["LUNG_RGB", "CAPTION_BACKGROUND", "overlay", "readable", "captioned"]


# the lungs' outline on overlays: cyan, apart from the infection's red
LUNG_RGB = (0.0, 220.0, 220.0)
# the band under an overlay that holds its caption
CAPTION_BACKGROUND = (20, 20, 20)


def _outline(mask: np.ndarray) -> np.ndarray:
    "The pixels of `mask` with a 4-neighbour outside it: its outline, one pixel wide."
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.5, lung: np.ndarray | None = None) -> np.ndarray:
    "RGB uint8: the X-ray (gray, uint8) blended with red exactly where `mask` is set, and the outline of `lung` in cyan."
    rgb = np.repeat(gray[..., None], 3, axis=2)
    # only the outlined pixels are blended (in float, rounded half up): the rest stay the X-ray's own gray
    blended = (1 - alpha) * rgb[mask].astype(np.float32) + alpha * np.array([255.0, 0.0, 0.0], np.float32)
    rgb[mask] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if lung is not None:
        lung = lung.astype(bool)
        edge = _outline(lung)
        if max(gray.shape) >= 512:  # two pixels wide on large X-rays, so it stays visible when shrunk
            edge = edge | _outline(lung & ~edge)
        rgb[edge] = LUNG_RGB
    return rgb


def readable(rgb: np.ndarray, min_width: int = 256) -> np.ndarray:
    """`rgb` enlarged by the smallest whole factor that makes it at least `min_width` pixels wide (each pixel a
    block, so the outline stays exactly the mask's); as it is when it is that wide already."""
    factor = -(-min_width // max(1, rgb.shape[1]))
    return rgb if factor <= 1 else np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def captioned(rgb: np.ndarray, text: str, min_width: int = 256) -> np.ndarray:
    """An RGB image with `text` in a dark band below it, wrapped to its width (PIL's own font, no font files). An
    image narrower than `min_width` is enlarged first (`readable`), so its caption reads as lines, not a column of
    words."""
    rgb = readable(rgb, min_width)
    width = rgb.shape[1]
    size = max(10, min(24, width // 28))
    per_line = max(8, int(width / (0.55 * size)))
    lines = textwrap.wrap(text, per_line) or [""]
    band = np.full(((size + 4) * len(lines) + 6, width, 3), CAPTION_BACKGROUND, np.uint8)
    for i, line in enumerate(lines):  # light text on dark: each line's strip laid over the band by maximum
        rows = band[i * (size + 4):i * (size + 4) + size + 10]
        np.maximum(rows, _caption_line(line, width, size), out=rows)
    return np.concatenate([rgb, band], axis=0)


@lru_cache(maxsize=1024)
def _caption_line(line: str, width: int, size: int) -> np.ndarray:
    """One caption line drawn on a strip of the band (`size` + 10 rows): kept, because the lines that repeat on every
    overlay (the note, the verdicts) took half of the 2 ms an overlay's caption cost to draw."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        font = ImageFont.load_default()
    strip = Image.new("RGB", (width, size + 10), CAPTION_BACKGROUND)
    ImageDraw.Draw(strip).text((4, 3), line, fill=(235, 235, 235), font=font)
    strip = np.asarray(strip)
    strip.flags.writeable = False  # shared by every caption with this line
    return strip
