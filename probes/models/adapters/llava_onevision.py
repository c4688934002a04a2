"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's two scales with a
SigLIP tower, many more tiles ("anyres_max_9"), and a bilinear downsampling of the tiles.

The image processor makes the same base view and tiles as LLaVA-NeXT's (the whole image
squashed to the tower's square input; the image fitted into the best of ``image_grid_pinpoints``
keeping its aspect ratio, centred with black padding, cut into tower-sized tiles), and
``pack_image_features`` reassembles and unpads the tiles' features exactly as LLaVA-NeXT's does.
Then, when the unpadded grid holds more than 1.1^2 times ``max_num_patches`` (9) tiles' worth
of cells, it is resized bilinearly to ``int(rows // ratio) x int(cols // ratio)`` cells
(``ratio = sqrt(rows * cols / (9 * cells_per_tile))``): each token of that grid then covers
``rows / new_rows`` by ``cols / new_cols`` of the unpadded grid's cells, the same stretch of the
image. A newline token ends every row. SigLIP has no CLS token: the strategy is "full" and the
base view gives ``(side / patch)^2`` tokens (27 x 27 = 729 at 384 / 14).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from transformers import AutoProcessor, LlavaOnevisionProcessor

from probes.errors import UserError
from probes.models.adapters.grids import SpanGrid
from probes.models.adapters.llava_next import LlavaNextAdapter, _canvas

ASPECT_RATIO = re.compile(r"anyres_max_(\d+)")


class OnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision's processor without its video processor, which needs torchvision
    (transformers refuses to build or load the stock processor without one). Images and text
    are processed exactly as by ``LlavaOnevisionProcessor``; video input is not supported.

    >>> "video_processor" in OnevisionImageOnlyProcessor.get_attributes()
    False
    """

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None,
                 vision_aspect_ratio="anyres_max_9", **kwargs):
        # the mixin saves and loads only what this signature names: no video processor class
        super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy,
                         chat_template=chat_template, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)


AutoProcessor.register(OnevisionImageOnlyProcessor, OnevisionImageOnlyProcessor)


def downsampled_shape(rows: int, cols: int, cells: int, max_tiles: int) -> tuple[int, int]:
    """(rows, cols) of the unpadded tiled grid after ``pack_image_features``' bilinear resize:
    the same when it holds at most 1.1^2 * ``max_tiles`` tiles of ``cells`` x ``cells``. The
    float expressions match the source exactly.

    >>> downsampled_shape(20, 20, cells=4, max_tiles=9)  # ratio sqrt(400 / 144) = 1.67
    (11, 11)
    >>> downsampled_shape(12, 12, cells=4, max_tiles=9)  # ratio 1: kept
    (12, 12)
    """
    ratio = math.sqrt(rows * cols / (max_tiles * cells**2))
    if ratio <= 1.1:
        return rows, cols
    return int(rows // ratio), int(cols // ratio)


def spans(first: int, kept: int, count: int, cells: int, side: int, patch: int,
          pad: int, scale: float) -> tuple[tuple[float, float], ...]:
    """The original-image spans of ``count`` tokens along one axis of the tiled grid.

    The unpadded grid keeps feature cells ``first .. first + kept`` of the canvas; ``count``
    tokens cover them evenly (``count < kept`` after the downsampling), token i the cells
    ``[i * kept / count, (i + 1) * kept / count)``. Canvas cell u is patch ``u % cells`` of tile
    ``u // cells``: canvas pixels from ``side * (u // cells) + patch * (u % cells)``, with the
    ``side - cells * patch`` pixels at the end of every tile seen by no patch. The canvas starts
    ``pad`` resized pixels before the image; ``scale`` = original / resized pixels.

    >>> spans(0, 8, 8, cells=4, side=36, patch=8, pad=0, scale=1.0)[3:5]  # the 4 px seam
    ((24.0, 32.0), (36.0, 44.0))
    """
    def canvas(u: Fraction, end: bool) -> float:
        tile, within = divmod(u, cells)
        if end and within == 0 and tile > 0:  # an end on a seam: the previous tile's last patch
            tile, within = tile - 1, Fraction(cells)
        return float((side * tile + patch * within - pad) * Fraction(scale))

    step = Fraction(kept, count)
    return tuple((canvas(first + i * step, end=False), canvas(first + (i + 1) * step, end=True))
                 for i in range(count))


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf), one image per prompt.

    >>> from transformers import LlavaOnevisionConfig
    >>> from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    ...     LlavaOnevisionImageProcessorPil)
    >>> adapter = LlavaOnevisionAdapter(LlavaOnevisionConfig(), LlavaOnevisionImageProcessorPil())
    >>> layout = adapter.image_layout((1000, 1000))  # 729 base + 81 rows of 81 and a newline
    >>> layout.n_tokens, layout.grids[1].rows
    (7371, 81)
    >>> adapter.image_layout((2000, 2000)).grids[1].rows  # 6x6 tiles: 162 rows resized to 81
    81
    """

    family = "llava-onevision"
    label = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    image_only_processor = OnevisionImageOnlyProcessor  # the stock one needs torchvision

    def _tiled_grid(
        self, image_size: tuple[int, int], side: int, patch: int, pinpoints: list[list[int]]
    ) -> SpanGrid:
        """The unpadded, maybe downsampled, canvas-wide grid of the tiles on the image."""
        resized, (pad_x, pad_y), (row0, rows, col0, cols) = _canvas(
            image_size, side, patch, pinpoints)
        cells = side // patch
        new_rows, new_cols = downsampled_shape(rows, cols, cells, self._max_tiles())
        width, height = image_size
        return SpanGrid(
            col_spans=spans(col0, cols, new_cols, cells, side, patch, pad_x, width / resized[0]),
            row_spans=spans(row0, rows, new_rows, cells, side, patch, pad_y, height / resized[1]),
            image_size=image_size,
        )

    def _max_tiles(self) -> int:
        """``max_num_patches`` of the config's "anyres_max_<n>" (the model's own setting)."""
        setting = str(self.config.vision_aspect_ratio)
        match = ASPECT_RATIO.fullmatch(setting)
        if match is None:
            raise UserError(f"LLaVA-OneVision's vision_aspect_ratio {setting!r} is not "
                            "'anyres_max_<n>', the only one fusionlens lays out.")
        return int(match.group(1))

    # ----------------------------------------------------------------- checks
    def _check_tower(self, vision: Any) -> None:
        if getattr(vision, "model_type", None) != "siglip_vision_model":
            raise UserError(f"the LLaVA-OneVision adapter knows SigLIP vision towers only, not "
                            f"{vision.model_type!r}.")
        if self.config.vision_feature_select_strategy != "full":
            # SigLIP has no CLS token: "default" would drop a patch and break the 27x27 grid
            raise UserError(
                "LLaVA-OneVision's SigLIP tower needs vision_feature_select_strategy 'full'; "
                f"this config says {self.config.vision_feature_select_strategy!r}."
            )
        self._max_tiles()

    def _check_token_count(self, patch: int) -> None:
        """The processor counts image tokens on its own, from ``num_image_tokens`` (the base
        view's), its strategy and its aspect-ratio setting: refuse any that disagree with the
        model's."""
        processor: Any = self.processor
        if not hasattr(processor, "num_image_tokens"):
            return  # an image processor alone: it inserts no tokens
        cells = int(self.config.vision_config.image_size) // patch
        own = (processor.num_image_tokens, processor.vision_feature_select_strategy,
               processor.vision_aspect_ratio)
        if own != (cells * cells, "full", self.config.vision_aspect_ratio):
            raise UserError(
                f"the processor's num_image_tokens {own[0]}, strategy {own[1]!r} and "
                f"vision_aspect_ratio {own[2]!r} would not count the model's tokens "
                f"({cells * cells}, 'full', {self.config.vision_aspect_ratio!r})."
            )
