"""Families whose processor writes text markers among an image's tokens.

InternVL expands its image placeholder into ``<img>``, the image tokens and ``</img>``;
Idefics3 and SmolVLM into one ``<fake_token_around_image><row_r_col_c>`` tag per tile (and a
line break after each row of tiles), then ``<global-img>``, the global view's tokens and a
closing ``<fake_token_around_image>``. The *image* of such a row is the whole expansion: its
markers are tokens that are no patch (grid index ``SEPARATOR``), as LLaVA-NeXT's row newlines
are, so an ``image->X`` knockout blocks every token the processor wrote for the image, and
``image_patches`` holds only the tokens that read a patch.

A family says what its processor writes (:meth:`MarkedImageAdapter.expansion`: the text, the
grids and the cell of every patch token in order); which tokens of that text are patches is
read off its tokenisation, with the checkpoint's own tokenizer, so the layout counts exactly the
tokens the processor inserts.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from transformers.utils import is_torchvision_available

from probes.models.adapters.base import Adapter
from probes.models.adapters.grids import SEPARATOR, ImageLayout, PatchGrid


def tile_cells(tiles: tuple[int, int], cells: int, grid_index: int = 0) -> np.ndarray:
    """(grid_index, row, col) of every token of a ``rows x cols`` arrangement of square tiles of
    ``cells x cells`` tokens laid on one canvas-wide grid, tile by tile (row-major), each tile
    read row by row: the order in which tiled views reach the language model.

    >>> tile_cells((1, 2), 2)[:, 1:].tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    """
    rows, cols = tiles
    tile_row, tile_col, row, col = np.meshgrid(
        np.arange(rows), np.arange(cols), np.arange(cells), np.arange(cells), indexing="ij"
    )
    return np.stack([np.full(row.size, grid_index), (tile_row * cells + row).ravel(),
                     (tile_col * cells + col).ravel()], axis=1).astype(np.int64)


class MarkedImageAdapter(Adapter):
    """An adapter whose image is the processor's whole expansion of the image placeholder."""

    # the family's processor without its video processor, loaded where torchvision (which
    # only the video processor needs) is missing; None: the stock processor needs none
    image_only_processor: ClassVar[Any] = None

    @classmethod
    def load_processor(cls, location: str, **kwargs: Any) -> Any:
        if cls.image_only_processor is None or is_torchvision_available():
            return super().load_processor(location, **kwargs)
        return cls.image_only_processor.from_pretrained(location, **kwargs)

    @abstractmethod
    def expansion(
        self, image_size: tuple[int, int]
    ) -> tuple[str, tuple[PatchGrid, ...], np.ndarray]:
        """(the text the processor writes for an image of ``image_size``, the grids, the
        (grid, row, col) of each of its image tokens in order)."""

    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        text, grids, patch_cells = self.expansion(image_size)
        ids = self._token_ids(text)
        is_patch = ids == self.image_token_id
        if int(is_patch.sum()) != len(patch_cells):  # a tokenizer that splits the image token
            raise RuntimeError(
                f"the tokenizer makes {int(is_patch.sum())} image tokens of the {self.family} "
                f"processor's text for a {image_size} image, not {len(patch_cells)}"
            )
        cells = np.zeros((ids.size, 3), dtype=np.int64)
        cells[:, 0] = SEPARATOR
        cells[is_patch] = patch_cells
        return ImageLayout(grids=tuple(grids), token_cells=cells)

    def image_text(self, layout: ImageLayout) -> str:
        return self.expansion(layout.image_size)[0]

    def image_span(self, row_ids: np.ndarray, positions: np.ndarray,
                   layout: ImageLayout) -> np.ndarray:
        """The expansion's positions: it starts as many tokens before the first image token as
        the expansion has markers there; the row must hold exactly its ids."""
        ids = self._token_ids(self.image_text(layout))
        lead = int(np.argmax(ids == self.image_token_id))
        start = int(positions[0]) - lead if positions.size else -1
        span = np.arange(start, start + ids.size, dtype=np.int64)
        if start < 0 or span[-1] >= row_ids.size or not np.array_equal(row_ids[span], ids):
            raise RuntimeError(
                f"the row's image tokens are not the {self.family} processor's expansion for a "
                f"{layout.image_size} image"
            )
        return span

    def _token_ids(self, text: str) -> np.ndarray:
        tokenizer = self.processor.tokenizer
        return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
