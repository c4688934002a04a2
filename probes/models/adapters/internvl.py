"""InternVL 3 / 3.5 in transformers' native format (``InternVLForConditionalGeneration``, the
``-hf`` checkpoints): an InternViT tower, pixel shuffle, a Qwen2.5 / Qwen3 decoder.

The image processor (GOT-OCR2's) picks the arrangement of ``cols x rows`` square tiles, between
``min_patches`` and ``max_patches`` of them, whose aspect ratio is closest to the image's
(``get_optimal_tiled_canvas``), squashes the image onto that canvas (aspect ratio not kept) and
cuts it into tiles, row by row; when there is more than one tile it adds a *thumbnail*, the whole
image squashed to one tile. The tower sees each view as ``side / patch`` squared patches; pixel
shuffle (``downsample_ratio`` 0.5) merges 2x2 of them into one token, so a 448 px view gives
16x16 = 256 tokens, row by row. The processor writes ``<img>``, 256 ``<IMG_CONTEXT>`` per view
and ``</img>``; the decoder's positions are plain 1-D ones.

The layout is a canvas-wide grid of the tiles (grid 0, read tile by tile) and the thumbnail's
grid (grid 1); ``<img>`` and ``</img>`` are the image's two non-patch tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import AutoProcessor, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from probes.errors import UserError
from probes.models.adapters.grids import PatchGrid, resized_grid
from probes.models.adapters.marked import MarkedImageAdapter, tile_cells


class InternVLImageOnlyProcessor(InternVLProcessor):
    """InternVL's processor without its video processor, which needs torchvision. Images and
    text are processed exactly as by ``InternVLProcessor``; video input is not supported.

    >>> "video_processor" in InternVLImageOnlyProcessor.get_attributes()
    False
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256,
                 chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                         chat_template=chat_template, **kwargs)


AutoProcessor.register(InternVLImageOnlyProcessor, InternVLImageOnlyProcessor)


class InternVLAdapter(MarkedImageAdapter):
    """InternVL (OpenGVLab/InternVL3-*-hf, InternVL3_5-*-HF).

    >>> from transformers import InternVLConfig
    >>> InternVLAdapter(InternVLConfig()).layers_path
    'model.language_model.layers'
    """

    family = "internvl"
    model_types = ("internvl",)
    model_class_name = "InternVLForConditionalGeneration"

    image_only_processor = InternVLImageOnlyProcessor

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        if config.vision_feature_select_strategy != "default":
            # with "full" the CLS feature stays and the square reshape before pixel shuffle fails
            raise UserError("InternVL's pixel shuffle needs vision_feature_select_strategy "
                            f"'default'; this config says "
                            f"{config.vision_feature_select_strategy!r}.")

    def expansion(self, image_size: tuple[int, int]) -> tuple[str, tuple[PatchGrid, ...], np.ndarray]:
        side, cells, settings = self._geometry()
        width, height = image_size
        cols = rows = 1
        if settings["crop_to_patches"] and settings["max_patches"] > 1:
            cols, rows = get_optimal_tiled_canvas(
                (height, width), (side, side), settings["min_patches"], settings["max_patches"]
            )
        cell = side // cells
        grids = [resized_grid((cols * side, rows * side), image_size, rows * cells,
                              cols * cells, cell)]
        token_cells = [tile_cells((rows, cols), cells)]
        if rows * cols > 1:  # the thumbnail: the whole image squashed to one tile
            grids.append(resized_grid((side, side), image_size, cells, cells, cell))
            token_cells.append(tile_cells((1, 1), cells, grid_index=1))
        processor = self.processor
        views = len(grids) - 1 + rows * cols
        text = (processor.start_image_token
                + processor.image_token * (processor.image_seq_length * views)
                + processor.end_image_token)
        return text, tuple(grids), np.concatenate(token_cells)

    def _geometry(self) -> tuple[int, int, dict[str, Any]]:
        """(view side in pixels, tokens per view side, the processor's tiling settings), once
        the model and processor are known to agree with the layout above."""
        processor = self.processor
        if not hasattr(processor, "image_seq_length") or not hasattr(
            getattr(processor, "image_processor", None), "crop_image_to_patches"
        ):
            raise UserError("the InternVL adapter needs the checkpoint's InternVL processor "
                            "(GOT-OCR2 image processor) to lay out images.")
        # what the processor passes its image processor: its own defaults over the image
        # processor's (InternVLProcessor turns crop_to_patches on)
        settings = processor.image_processor._merge_and_standardize_kwargs(
            **processor._merge_kwargs(tokenizer_init_kwargs=processor.tokenizer.init_kwargs)[
                "images_kwargs"])
        vision = self.config.vision_config
        side_h, side_w = (int(v) for v in vision.image_size)
        patch_h, patch_w = (int(v) for v in vision.patch_size)
        size = settings["size"]
        if not settings.get("do_resize", True) or (size.height, size.width) != (side_h, side_w):
            raise UserError(f"the InternVL image processor makes {size.height}x{size.width} px "
                            f"views but the vision tower takes {side_h}x{side_w}.")
        if side_h != side_w or patch_h != patch_w or side_h % patch_h:
            raise UserError(f"fusionlens lays out square InternVL views of square patches; this "
                            f"tower takes {side_h}x{side_w} px in {patch_h}x{patch_w} px patches.")
        cells = side_h // patch_h * float(self.config.downsample_ratio)
        if cells != int(cells) or int(processor.image_seq_length) != int(cells) ** 2:
            raise UserError(
                f"the processor inserts {processor.image_seq_length} tokens per view but the "
                f"tower's {side_h // patch_h}x{side_h // patch_h} patches shuffled by "
                f"{self.config.downsample_ratio} give {cells}x{cells}.")
        return side_h, int(cells), settings
