"""Test helpers shared by the adapter tests: painting boxes and finding them in pixel values."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

RED = (255, 0, 0)


def image_with_box(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A white image of ``size`` with a pure red rectangle covering ``box`` (end-exclusive)."""
    image = Image.new("RGB", size, (255, 255, 255))
    x0, y0, x1, y1 = box
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), fill=RED)
    return image


def unnormalise(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """[3, H, W] normalised pixel values -> [H, W, 3] in 0..255."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return ((pixel_values.float() * std + mean) * 255).permute(1, 2, 0).numpy()


def red_cells(rgb: np.ndarray, cell: int) -> set[tuple[int, int]]:
    """Cells (row, col) of ``cell``-pixel squares holding at least one clearly red pixel."""
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    rows, cols = np.nonzero(red)
    return {(int(r) // cell, int(c) // cell) for r, c in zip(rows, cols)}


def shrink(box, by: float):
    x0, y0, x1, y1 = box
    return (x0 + by, y0 + by, x1 - by, y1 - by)
