"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): a CLIP tower seen at two scales.

The image processor makes one *base* view (the whole image squashed to the tower's square
input, e.g. 336x336, aspect ratio not kept) and *tiles*: the image is resized to fit the best
of ``image_grid_pinpoints`` keeping its aspect ratio (sizes rounded up), centred on that canvas
with black padding, and cut into tower-sized tiles, row by row. ``pack_image_features`` then
puts the base grid first (24x24 = 576 tokens at 336/14), reassembles the tile features into
one canvas-wide grid, drops the rows (or columns) of cells it computes as padding, and appends
one ``image_newline`` token at the end of every remaining row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers.image_processing_utils import select_best_resolution

from probes.errors import UserError
from probes.models.adapters.base import Adapter, size_field
from probes.models.adapters.grids import SEPARATOR, ImageLayout, PatchGrid, resized_grid


def _fit_inside(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image resized to fit ``target`` keeping its aspect ratio.

    Mirrors ``transformers.image_processing_utils.get_patch_output_size`` (the tiled path):
    the constrained side fills the target, the other is rounded *up*.

    >>> _fit_inside((644, 476), (672, 672))
    (672, 497)
    """
    width, height = image_size
    target_width, target_height = target
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return target_width, min(int(np.ceil(height * scale_w)), target_height)
    return min(int(np.ceil(width * scale_h)), target_width), target_height


def _unpadded_cells(
    image_size: tuple[int, int], rows: int, cols: int
) -> tuple[int, int, int, int]:
    """(first row, rows kept, first col, cols kept) of the canvas-wide feature grid after
    ``modeling_llava_next.unpad_image``.

    The model cuts padding in *feature cells*, from the original size alone, with its own
    rounding (not the pixel padding): the same number of cells from both ends, so a little
    padding may stay, or a sliver of image go. The float expressions match the source exactly.

    >>> _unpadded_cells((644, 476), rows=48, cols=48)
    (6, 36, 0, 48)
    """
    width, height = image_size
    if width / height > cols / rows:
        kept = int(round(height * (cols / width), 7))
        cut = (rows - kept) // 2
        return cut, rows - 2 * cut, 0, cols
    kept = int(round(width * (rows / height), 7))
    cut = (cols - kept) // 2
    return 0, rows, cut, cols - 2 * cut


def _canvas(
    image_size: tuple[int, int], side: int, patch: int, pinpoints: list[list[int]]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """Where the tiles put the image: its (width, height) resized onto the best pinpoint
    canvas, the (x, y) padding before it there, and :func:`_unpadded_cells` of the canvas-wide
    feature grid (``side // patch`` cells per tile)."""
    width, height = image_size
    best_height, best_width = select_best_resolution((height, width), pinpoints)
    resized = _fit_inside(image_size, (best_width, best_height))
    pad = ((best_width - resized[0]) // 2, (best_height - resized[1]) // 2)
    cells = side // patch
    kept = _unpadded_cells(image_size, best_height // side * cells, best_width // side * cells)
    return resized, pad, kept


def _token_cells(base: PatchGrid, tiled: PatchGrid) -> np.ndarray:
    """Sequence order of ``pack_image_features``: the base grid row by row, then each tiled row
    followed by its newline token, written ``(SEPARATOR, row, tiled.cols)``."""
    rows, cols = np.meshgrid(np.arange(base.rows), np.arange(base.cols), indexing="ij")
    base_cells = np.stack([np.zeros(rows.size, dtype=np.int64), rows.ravel(), cols.ravel()], 1)
    rows, cols = np.meshgrid(np.arange(tiled.rows), np.arange(tiled.cols + 1), indexing="ij")
    grid_index = np.where(cols == tiled.cols, SEPARATOR, 1)
    tiled_cells = np.stack([grid_index.ravel(), rows.ravel(), cols.ravel()], 1)
    return np.concatenate([base_cells, tiled_cells]).astype(np.int64)


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT / LLaVA-1.6 (llava-hf/llava-v1.6-*).

    >>> from transformers import LlavaNextConfig
    >>> from transformers.models.llava_next.image_processing_pil_llava_next import (
    ...     LlavaNextImageProcessorPil)
    >>> processor = LlavaNextImageProcessorPil(
    ...     size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    >>> layout = LlavaNextAdapter(LlavaNextConfig(), processor).image_layout((336, 336))
    >>> layout.n_tokens  # 24x24 base + 24 rows of 24 unpadded cells and a newline
    1176
    >>> layout.grids[1].cell_box(0, 0)  # the 336x672 canvas has 168 px of padding each side
    (0.0, 0.0, 14.0, 14.0)
    """

    family = "llava-next"
    label = "LLaVA-NeXT"  # in messages
    model_types = ("llava_next",)
    model_class_name = "LlavaNextForConditionalGeneration"

    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        side, patch, pinpoints = self._geometry()
        cells = side // patch
        base = resized_grid((side, side), image_size, cells, cells, patch)
        tiled = self._tiled_grid(image_size, side, patch, pinpoints)
        return ImageLayout(grids=(base, tiled), token_cells=_token_cells(base, tiled))

    def _tiled_grid(
        self, image_size: tuple[int, int], side: int, patch: int, pinpoints: list[list[int]]
    ) -> PatchGrid:
        """The unpadded canvas-wide grid of the tiles, placed on the original image."""
        resized, (pad_x, pad_y), (row0, rows, col0, cols) = _canvas(
            image_size, side, patch, pinpoints)
        # cell (0, 0) starts col0 cells into the canvas, which starts pad_x before the image
        offset = (col0 * patch - pad_x, row0 * patch - pad_y)
        return resized_grid(resized, image_size, rows, cols, patch, offset)

    # ----------------------------------------------------------------- checks
    def _geometry(self) -> tuple[int, int, list[list[int]]]:
        """(tile side, patch, pinpoints) once the model and processor are known to agree with
        the layout above; anything else is refused rather than guessed."""
        vision = self.config.vision_config
        side, patch = int(vision.image_size), int(vision.patch_size)
        self._check_tower(vision)
        pinpoints = [[int(h), int(w)] for h, w in self.config.image_grid_pinpoints]
        if any(h % side or w % side for h, w in pinpoints):
            raise UserError(
                f"image_grid_pinpoints {pinpoints} are not multiples of the {side} px tile."
            )
        self._check_image_processor(side, pinpoints)
        self._check_token_count(patch)
        return side, patch, pinpoints

    def _check_tower(self, vision: Any) -> None:
        """The tower and feature strategy whose features fill one patch per cell."""
        if getattr(vision, "model_type", None) != "clip_vision_model":
            raise UserError(
                f"the LLaVA-NeXT adapter knows CLIP vision towers only, not {vision.model_type!r}."
            )
        side, patch = int(vision.image_size), int(vision.patch_size)
        if side % patch:
            raise UserError(
                f"the vision tower's {side} px input is no multiple of its {patch} px patch."
            )
        if self.config.vision_feature_select_strategy != "default":
            # with "full" each tile keeps its CLS feature, so pack_image_features' reshape of
            # (tiles, 1 + 24*24) features into a 24x24 grid fails or silently mixes tokens
            raise UserError(
                "LLaVA-NeXT's tiled layout needs vision_feature_select_strategy 'default'; "
                f"this config says {self.config.vision_feature_select_strategy!r}."
            )

    def _check_image_processor(self, side: int, pinpoints: list[list[int]]) -> None:
        image_processor = self.image_processor
        if image_processor is None or not hasattr(image_processor, "image_grid_pinpoints"):
            raise UserError(
                f"the {self.label} adapter needs the checkpoint's {self.label} image processor."
            )
        own = [[int(h), int(w)] for h, w in image_processor.image_grid_pinpoints]
        if own != pinpoints:
            raise UserError(
                f"the image processor's image_grid_pinpoints {own} differ from the "
                f"model's {pinpoints}."
            )
        size, crop = image_processor.size, getattr(image_processor, "crop_size", None)
        # the base view is squashed to `size`, tiles are crop_size squares; later resize and
        # centre-crop steps are no-ops only when all of them equal the tower's input
        base = size_field(size, "shortest_edge") or (
            size_field(size, "height") if size_field(size, "height") == size_field(size, "width")
            else None
        )
        tile = (size_field(crop, "height"), size_field(crop, "width")) if crop else (base, base)
        if base != side or tile != (side, side):
            raise UserError(
                f"the {self.label} image processor's size {size} and crop_size {crop} do not "
                f"match the {side} px vision tower."
            )

    def _check_token_count(self, patch: int) -> None:
        """The processor counts image tokens on its own; refuse settings where it would insert
        a different number than the model fills (one patch per cell, the CLS dropped)."""
        processor: Any = self.processor
        if not hasattr(processor, "num_additional_image_tokens"):
            return  # an image processor alone: it inserts no tokens
        extra = int(processor.num_additional_image_tokens or 0)
        extra -= processor.vision_feature_select_strategy == "default"
        if processor.patch_size != patch or extra != 0:
            raise UserError(
                f"the processor's patch_size {processor.patch_size}, num_additional_image_tokens "
                f"{processor.num_additional_image_tokens} and strategy "
                f"{processor.vision_feature_select_strategy!r} would not count the model's tokens."
            )
