"""Benchmark and user boxes -> the end-exclusive integer :class:`~analyses.data.sample.Box`.

Benchmarks store float ``[x, y, w, h]`` in pixels of the original image (top-left origin); users
give ``[x0, y0, x1, y1]``. Both become the smallest integer box holding the float box (floor the
start, ceil the end), so every pixel the annotation touches is inside. A benchmark box that
sticks out of its image is clipped to it (COCO and GQA boxes overrun by a pixel now and then);
a user's box must lie inside its image.

>>> xywh_to_xyxy([10.5, 2.0, 3.2, 0.0])
(10.5, 2.0, 13.7, 2.0)
>>> clipped_box((10.5, 2.0, 13.7, 2.0), (64, 64))
Box(x0=10, y0=2, x1=14, y1=3)
>>> clipped_box((60.2, 1.0, 70.0, 9.0), (64, 64))
Box(x0=60, y0=1, x1=64, y1=9)
>>> strict_box((0, 0, 8, 9), (8, 8), "row 3")
Traceback (most recent call last):
...
probes.errors.UserError: the box [0, 0, 8, 9] of row 3 is not inside its 8x8 image (boxes are [x0, y0, x1, y1] in image pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from analyses.data.sample import Box
from probes.errors import UserError

FloatBox = tuple[float, float, float, float]  # (x0, y0, x1, y1) in image pixels


def xywh_to_xyxy(xywh: Sequence[float]) -> FloatBox:
    """``[x, y, w, h]`` -> ``(x0, y0, x1, y1)``."""
    x, y, w, h = (float(v) for v in xywh)
    return (x, y, x + w, y + h)


def _covering(box: FloatBox) -> tuple[int, int, int, int]:
    """Floor the start, ceil the end; a zero-width side still covers one pixel."""
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    return x0, y0, max(math.ceil(box[2]), x0 + 1), max(math.ceil(box[3]), y0 + 1)


def clipped_box(box: FloatBox, size: tuple[int, int], where: str = "the sample") -> Box:
    """The integer box covering ``box``, clipped to an image of ``size`` = (width, height).

    Raises UserError, naming ``where``, when nothing of the box lies in the image.
    """
    width, height = size
    x0, y0, x1, y1 = _covering(box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        raise UserError(
            f"the box {[round(v, 2) for v in box]} of {where} lies outside its {width}x{height} "
            "image."
        )
    return Box(x0, y0, x1, y1)


def strict_box(box: Sequence[float], size: tuple[int, int], where: str) -> Box:
    """A user's ``[x0, y0, x1, y1]`` as an integer box; UserError unless it is non-empty and
    inside an image of ``size`` = (width, height)."""
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        shown = [int(v) if float(v).is_integer() else v for v in (x0, y0, x1, y1)]
        raise UserError(
            f"the box {shown} of {where} is not inside its {width}x{height} image "
            "(boxes are [x0, y0, x1, y1] in image pixels)."
        )
    return Box(*_covering((x0, y0, x1, y1)))
