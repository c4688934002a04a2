"""One map of per-image-token values drawn over the original image, each value on the pixels
its token sees.

The geometry comes in as data: ``boxes[k]`` is the (x0, y0, x1, y1) box, in the original
image's pixels, that token k sees (NaN for a token that is no patch), as
:func:`probes.inputs.token_boxes` or ``Recording.boxes`` give it for every family (LLaVA-1.5's
grid, LLaVA-NeXT's base grid and tiles, Qwen2.5-VL's merged patches). Where several tokens see
a pixel (LLaVA-NeXT's base grid under its tiles) the pixel shows their mean (or max);
pixels no token sees (cropped away) stay uncoloured.

>>> import numpy as np
>>> boxes = np.array([[0, 0, 4, 4], [4, 0, 8, 4], [np.nan] * 4])  # two cells and a newline
>>> raster(np.array([1.0, 2.0, 9.0]), boxes, (8, 6))[[0, 3, 5], ::3]
array([[ 1.,  1.,  2.],
       [ 1.,  1.,  2.],
       [nan, nan, nan]])
>>> figure = overlay(np.zeros((6, 8, 3)), np.array([1.0, 2.0, 9.0]), boxes)
>>> [float(v) for v in (*figure.axes[0].get_xlim(), *figure.axes[0].get_ylim())]  # y down
[0.0, 8.0, 6.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from figures.style import COLUMN_WIDTH, PALETTE, SEQUENTIAL, house_style, new_figure

MAX_RASTER = 1024  # pixels along the longer side of the drawn map: finer than any token grid
COMBINE = ("mean", "max")


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)


def raster(values: np.ndarray, boxes: np.ndarray, size: tuple[int, int], combine: str = "mean",
           scale: float = 1.0) -> np.ndarray:
    """[H * scale, W * scale] (rounded up) of ``values`` painted on an image of ``size`` =
    (W, H): a raster pixel takes the ``combine`` of the values of the tokens whose box holds
    its centre; NaN where none does. Tokens with a NaN box or value are left out."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, not {combine!r}")
    values, boxes = np.asarray(values, dtype=float), np.asarray(boxes, dtype=float)
    if boxes.shape != (values.size, 4):
        raise ValueError(f"{values.size} values need boxes of shape ({values.size}, 4), "
                         f"not {boxes.shape}: one pixel box per token")
    width, height = int(np.ceil(size[0] * scale)), int(np.ceil(size[1] * scale))
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    best = np.full((height, width), -np.inf)
    # raster pixel j holds image x in [j, j+1) / scale; it is inside [x0, x1) when its centre
    # is. Rounded first: neighbouring cells' shared edge, computed as two sums, may differ in
    # the last bit (312.5 and 312.50000000000006), which would leave a pixel column between them
    edges = np.ceil(np.round(boxes * scale - 0.5, 6))
    for value, (x0, y0, x1, y1) in zip(values, edges):
        if np.isnan(value) or np.isnan(x0):
            continue
        rows = slice(int(np.clip(y0, 0, height)), int(np.clip(y1, 0, height)))
        cols = slice(int(np.clip(x0, 0, width)), int(np.clip(x1, 0, width)))
        total[rows, cols] += value
        count[rows, cols] += 1
        best[rows, cols] = np.maximum(best[rows, cols], value)
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = total / count if combine == "mean" else best
    return np.where(count > 0, combined, np.nan)


def overlay(image, values: np.ndarray, boxes: np.ndarray, ax=None, *, cmap: str = SEQUENTIAL,
            alpha: float = 0.6, vmin: float | None = None, vmax: float | None = None,
            combine: str = "mean", colorbar: bool = False, title: str | None = None,
            marked: Sequence[int] = ()) -> Figure:
    """Draw ``values`` (one per token) over ``image`` (a PIL image or an [H, W(, C)] array, the
    original image the boxes are in), each token's value on its box ``boxes[k]``; returns the
    Figure (``ax``'s when given, else a new one-column figure). ``marked`` token indices get an
    orange x at their box's centre; ``colorbar=True`` adds a colour bar."""
    pixels = _pixels(image)
    height, width = pixels.shape[:2]
    scale = min(1.0, MAX_RASTER / max(width, height))
    painted = raster(values, boxes, (width, height), combine, scale)
    if ax is None:
        figure = new_figure(columns=1, height=COLUMN_WIDTH * height / width + (0.3 if title else 0))
        ax = figure.axes[0]
    with house_style():
        ax.imshow(pixels, extent=(0, width, height, 0), interpolation="nearest")
        shown = ax.imshow(painted, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                          interpolation="nearest",
                          extent=(0, painted.shape[1] / scale, painted.shape[0] / scale, 0))
        if len(marked):
            chosen = np.asarray(boxes, dtype=float)[np.asarray(marked, dtype=int)]
            ax.plot((chosen[:, 0] + chosen[:, 2]) / 2, (chosen[:, 1] + chosen[:, 3]) / 2, "x",
                    color=PALETTE["highlight"], markersize=4, markeredgewidth=1.0)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        if title:
            ax.set_title(title)
        if colorbar:
            ax.figure.colorbar(shown, ax=ax, shrink=0.8)
    return ax.figure
