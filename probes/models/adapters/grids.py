"""Where each image token sits: patch grids and their boxes in the original image.

An image becomes tokens laid out on one or more grids (LLaVA-1.5: one 24x24 grid; LLaVA-NeXT:
a base grid plus the tiled grid with one newline token per row; Qwen2.5-VL: one dynamic grid of
merged patches). A :class:`PatchGrid` maps a cell (row, col) to the pixel box it covers in the
*original* image, undoing the processor's resize, crop and padding, so that boxes and masks
given in image pixels can be turned into image tokens and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original-image pixels, end-exclusive

SEPARATOR = -1  # grid index of tokens that are no patch (LLaVA-NeXT's row newline)


@dataclass(frozen=True)
class PatchGrid:
    """A ``rows x cols`` grid of image tokens placed on the original image.

    Cell (r, c) covers ``[origin_x + c*cell_width, origin_x + (c+1)*cell_width)`` horizontally
    (and the same vertically), clipped to the image. A cell that falls in padding covers nothing.

    >>> grid = PatchGrid(rows=2, cols=2, cell_width=8, cell_height=8, origin_x=0, origin_y=0,
    ...                  image_size=(16, 16))
    >>> grid.cell_box(1, 0)
    (0.0, 8.0, 8.0, 16.0)
    >>> grid.cells_overlapping((9, 1, 12, 4))
    [(0, 1)]
    """

    rows: int
    cols: int
    cell_width: float
    cell_height: float
    origin_x: float
    origin_y: float
    image_size: tuple[int, int]  # (width, height) of the original image

    def cell_box(self, row: int, col: int) -> Box:
        """The pixel box (x0, y0, x1, y1) of cell (row, col), clipped to the image."""
        width, height = self.image_size
        x0 = self.origin_x + col * self.cell_width
        y0 = self.origin_y + row * self.cell_height
        x1, y1 = x0 + self.cell_width, y0 + self.cell_height
        return (
            float(min(max(x0, 0), width)),
            float(min(max(y0, 0), height)),
            float(min(max(x1, 0), width)),
            float(min(max(y1, 0), height)),
        )

    def cells_overlapping(self, box: Box) -> list[tuple[int, int]]:
        """Cells whose box overlaps ``box`` with positive area, in row-major order."""
        return _cells_overlapping(self, box)


def _cells_overlapping(grid: PatchGrid | SpanGrid, box: Box) -> list[tuple[int, int]]:
    x0, y0, x1, y1 = box
    cells = []
    for row in range(grid.rows):
        for col in range(grid.cols):
            cx0, cy0, cx1, cy1 = grid.cell_box(row, col)
            if min(cx1, x1) > max(cx0, x0) and min(cy1, y1) > max(cy0, y0):
                cells.append((row, col))
    return cells


def _clip(value: float, limit: int) -> float:
    return float(min(max(value, 0), limit))


@dataclass(frozen=True)
class SpanGrid:
    """A grid whose columns and rows each cover their own span of the original image, for
    cells that are not evenly spaced (LLaVA-OneVision's tiles: 27 patches of 14 px cover 378 of
    each tile's 384 px, so the tiled grid skips 6 px at every tile seam).

    ``col_spans[c] = (x0, x1)`` and ``row_spans[r] = (y0, y1)`` in original-image pixels,
    end-exclusive, unclipped; :meth:`cell_box` clips them to the image.

    >>> grid = SpanGrid(col_spans=((0, 7), (8, 15)), row_spans=((-2, 5),), image_size=(15, 5))
    >>> grid.rows, grid.cols, grid.cell_box(0, 1)
    (1, 2, (8.0, 0.0, 15.0, 5.0))
    >>> grid.cells_overlapping((7, 0, 8, 5))  # the gap between the columns
    []
    """

    col_spans: tuple[tuple[float, float], ...]
    row_spans: tuple[tuple[float, float], ...]
    image_size: tuple[int, int]  # (width, height) of the original image

    @property
    def rows(self) -> int:
        return len(self.row_spans)

    @property
    def cols(self) -> int:
        return len(self.col_spans)

    def cell_box(self, row: int, col: int) -> Box:
        """The pixel box (x0, y0, x1, y1) of cell (row, col), clipped to the image."""
        width, height = self.image_size
        (x0, x1), (y0, y1) = self.col_spans[col], self.row_spans[row]
        return (_clip(x0, width), _clip(y0, height), _clip(x1, width), _clip(y1, height))

    def cells_overlapping(self, box: Box) -> list[tuple[int, int]]:
        """Cells whose box overlaps ``box`` with positive area, in row-major order."""
        return _cells_overlapping(self, box)


@dataclass(frozen=True)
class ImageLayout:
    """How one image becomes a run of tokens: the grids, and the cell of every token in order.

    ``token_cells[k] = (grid_index, row, col)`` for the k-th image token of this image;
    ``grid_index == SEPARATOR`` marks a token that is no patch (a row newline).
    """

    grids: tuple[PatchGrid | SpanGrid, ...]
    token_cells: np.ndarray  # int64 [n_tokens, 3]

    @property
    def n_tokens(self) -> int:
        return int(self.token_cells.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return self.grids[0].image_size

    def token_box(self, k: int) -> Box | None:
        """The pixel box of the k-th token of this image, or None for a separator token."""
        grid, row, col = (int(v) for v in self.token_cells[k])
        return None if grid == SEPARATOR else self.grids[grid].cell_box(row, col)

    def tokens_in_box(self, box: Box) -> np.ndarray:
        """Offsets (within this image's tokens) of the patch tokens overlapping ``box``."""
        wanted = {
            (grid_index, row, col)
            for grid_index, grid in enumerate(self.grids)
            for row, col in grid.cells_overlapping(box)
        }
        return np.array(
            [k for k, cell in enumerate(map(tuple, self.token_cells.tolist())) if cell in wanted],
            dtype=np.int64,
        )

    @staticmethod
    def single_grid(grid: PatchGrid) -> ImageLayout:
        """The layout of an image that is exactly one grid, read row by row."""
        rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
        cells = np.stack([np.zeros(rows.size, dtype=np.int64), rows.ravel(), cols.ravel()], axis=1)
        return ImageLayout(grids=(grid,), token_cells=cells)


@dataclass(frozen=True)
class ImageTokens:
    """One image inside one input row: the sequence positions of its tokens and their layout."""

    positions: np.ndarray  # int64 [n_tokens], absolute positions in the (padded) row
    layout: ImageLayout

    def positions_in_box(self, box: Box) -> np.ndarray:
        """Sequence positions of this image's patch tokens overlapping ``box``."""
        return self.positions[self.layout.tokens_in_box(box)]


def resized_grid(
    resized: tuple[int, int],
    image_size: tuple[int, int],
    rows: int,
    cols: int,
    cell_pixels: int,
    offset: tuple[float, float] = (0.0, 0.0),
) -> PatchGrid:
    """The grid of an image resized to ``resized`` = (width, height), whose cell (0, 0) starts at
    ``offset`` in resized pixels (a crop gives a positive offset, padding a negative one) and whose
    cells are ``cell_pixels`` wide in resized pixels."""
    scale_x = image_size[0] / resized[0]
    scale_y = image_size[1] / resized[1]
    return PatchGrid(
        rows=rows,
        cols=cols,
        cell_width=cell_pixels * scale_x,
        cell_height=cell_pixels * scale_y,
        origin_x=float(offset[0] * scale_x),
        origin_y=float(offset[1] * scale_y),
        image_size=image_size,
    )
