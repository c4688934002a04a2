"""Colours, shapes and background handling shared by easy-VQA and the synthetic sets.

The eight colours are the exact RGB values easy-VQA draws with (measured as the modal
shape pixel of 600 training images per colour answer), so a model trained on one set sees
the same colours in the other.

>>> COLORS["teal"]
(0, 128, 128)
>>> arr = np.full((4, 4, 3), 240, dtype=np.uint8); arr[1:3, 1:3] = COLORS["red"]
>>> foreground_mask(arr).sum()
np.int64(4)
"""

from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")

# easy-VQA paints each image's background a random off-white, every channel uniform in
# [230, 255] (measured over its 1,000 test images); the synthetic sets copy that.
BACKGROUND_LOW, BACKGROUND_HIGH = 230, 255
# Summed |RGB| difference from the background above which a pixel belongs to a shape. Every
# palette colour is > 100 away from every background; 30 drops the faintest anti-aliased rim.
FOREGROUND_THRESHOLD = 30


def random_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """An off-white RGB colour drawn the way easy-VQA draws its backgrounds."""
    r, g, b = rng.integers(BACKGROUND_LOW, BACKGROUND_HIGH + 1, size=3)
    return int(r), int(g), int(b)


def background_color(pixels: np.ndarray) -> np.ndarray:
    """The most common colour on the image border (an HxWx3 array), taken as the background.

    Not simply the corner pixel: in 9 of easy-VQA's 5,000 images a shape or its anti-aliased
    rim covers a corner, and one of them then splits into two blobs.
    """
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colors, counts = np.unique(border.reshape(-1, 3), axis=0, return_counts=True)
    return colors[counts.argmax()]


def foreground_mask(pixels: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Boolean HxW mask of pixels whose summed |RGB| difference from the background > threshold."""
    difference = np.abs(pixels.astype(np.int16) - background_color(pixels).astype(np.int16))
    return difference.sum(axis=-1) > threshold
