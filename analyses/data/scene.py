"""Drawing and placing flat, un-anti-aliased shapes, so every pixel belongs to exactly one object.

Each object is drawn once into its own boolean footprint that fills its box edge to edge; its
box is that footprint's position on the canvas, so boxes and masks are exact by construction.

>>> objects = [SceneObject("circle", "red", Box(2, 2, 10, 10)),
...            SceneObject("triangle", "blue", Box(20, 4, 29, 13))]
>>> pixels = render(objects, (240, 240, 240), canvas=32)
>>> pixels[6, 6].tolist(), pixels[0, 0].tolist()
([255, 0, 0], [240, 240, 240])
>>> int(objects_mask(objects, [1], canvas=32).sum()) == int(footprint("triangle", 9, 9).sum())
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from analyses.data.palette import COLORS
from analyses.data.sample import Box


@lru_cache(maxsize=4096)
def footprint(shape: str, width: int, height: int) -> np.ndarray:
    """Read-only boolean ``height x width`` array of a shape's pixels, filling its box.

    Drawn with PIL's aliased fill, so pixel colours stay exact; every tested size from 4 to
    40 px touches all four edges, which :func:`_check_fills_box` asserts rather than trusts.
    """
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([0, 0, width - 1, height - 1], fill=1)
    elif shape == "rectangle":
        draw.rectangle([0, 0, width - 1, height - 1], fill=1)
    elif shape == "triangle":
        draw.polygon([(0, height - 1), (width - 1, height - 1), ((width - 1) / 2, 0)], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes: circle, rectangle, triangle.")
    pixels = np.array(canvas, dtype=bool)
    _check_fills_box(pixels, shape)
    pixels.setflags(write=False)
    return pixels


def _check_fills_box(pixels: np.ndarray, shape: str) -> None:
    height, width = pixels.shape
    if Box.from_mask(pixels) != Box(0, 0, width, height):
        raise RuntimeError(f"a {width}x{height} {shape} does not fill its box; pick other sizes.")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape and colour words and its box on the canvas."""

    shape: str
    color: str
    box: Box

    @property
    def pixels(self) -> np.ndarray:
        """The footprint: which pixels of :attr:`box` the object covers."""
        return footprint(self.shape, self.box.width, self.box.height)

    @property
    def pixel_count(self) -> int:
        return int(self.pixels.sum())


def separated(a: Box, b: Box, gap: int) -> bool:
    """True when at least ``gap`` background pixels lie between the boxes on some axis."""
    return a.x1 + gap <= b.x0 or b.x1 + gap <= a.x0 or a.y1 + gap <= b.y0 or b.y1 + gap <= a.y0


def place(
    sizes: Sequence[tuple[int, int]],
    canvas: int,
    gap: int,
    rng: np.random.Generator,
    accept: Callable[[list[Box]], bool] | None = None,
    layouts: int = 50,
    tries: int = 100,
) -> list[Box]:
    """Non-touching boxes of the given ``(width, height)`` sizes, in the same order.

    Objects go down largest first (small ones fill the gaps that are left) at uniform random
    positions; a layout that cannot fit everything, or that ``accept`` rejects, is redrawn.
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
    for _ in range(layouts):
        boxes: dict[int, Box] = {}
        for i in order:
            box = _random_free_box(sizes[i], list(boxes.values()), canvas, gap, rng, tries)
            if box is None:
                break
            boxes[i] = box
        else:
            layout = [boxes[i] for i in range(len(sizes))]
            if accept is None or accept(layout):
                return layout
    raise RuntimeError(
        f"could not place {len(sizes)} objects on a {canvas}x{canvas} canvas in {layouts} "
        "layouts; lower the number or size of objects."
    )


def _random_free_box(
    size: tuple[int, int],
    placed: list[Box],
    canvas: int,
    gap: int,
    rng: np.random.Generator,
    tries: int,
) -> Box | None:
    width, height = size
    # One draw of all candidate corners: a generator call costs more than checking a box.
    corners = rng.integers(0, (canvas - width + 1, canvas - height + 1), size=(tries, 2))
    for x0, y0 in corners.tolist():
        box = Box(x0, y0, x0 + width, y0 + height)
        if all(separated(box, other, gap) for other in placed):
            return box
    return None


def render(
    objects: Sequence[SceneObject], background: tuple[int, int, int], canvas: int
) -> np.ndarray:
    """The ``canvas x canvas x 3`` uint8 image of the objects on a flat background."""
    pixels = np.tile(np.asarray(background, dtype=np.uint8), (canvas, canvas, 1))
    for obj in objects:
        box = obj.box
        pixels[box.y0 : box.y1, box.x0 : box.x1][obj.pixels] = COLORS[obj.color]
    return pixels


def objects_mask(objects: Sequence[SceneObject], indices: Sequence[int], canvas: int) -> np.ndarray:
    """Boolean ``canvas x canvas`` mask of the pixels of ``objects[i]`` for i in ``indices``."""
    mask = np.zeros((canvas, canvas), dtype=bool)
    for i in indices:
        box = objects[i].box
        mask[box.y0 : box.y1, box.x0 : box.x1] |= objects[i].pixels
    return mask
