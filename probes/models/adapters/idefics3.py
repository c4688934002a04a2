"""Idefics3 (``Idefics3ForConditionalGeneration``) and SmolVLM / SmolVLM2
(``SmolVLMForConditionalGeneration``): a SigLIP tower, pixel shuffle, a Llama / SmolLM2 decoder.

The image processor resizes the image so its longest edge is ``size["longest_edge"]`` (the other
side keeps the aspect ratio, rounded to an even number), then up to multiples of the tile side
``max_image_size["longest_edge"]`` (``resize_for_vision_encoder``), and, when that is more than
one tile, cuts it into ``rows x cols`` tiles row by row and appends the *global* view: the image
squashed to one tile. An image of one tile is only the global view. The tower sees each view as
``side // patch`` squared patches (SmolVLM2-2.2B: 384 // 14 = 27, leaving 6 px of each view
unseen); pixel shuffle by ``scale_factor`` merges ``scale x scale`` patches into one token, so
a view gives ``image_seq_len`` tokens, row by row.

The processor writes, per tile, ``<fake_token_around_image><row_r_col_c>`` and the tile's
tokens, a line break after each row of tiles, then a line break,
``<fake_token_around_image><global-img>``, the global view's tokens and
``<fake_token_around_image>``: all of it is the image (:mod:`probes.models.adapters.marked`),
the markers its non-patch tokens. The layout is a canvas-wide grid of the tiles (grid 0, read
tile by tile) and the global view's grid (the last one). Positions are plain 1-D ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import AutoProcessor, SmolVLMProcessor
from transformers.models.idefics3.image_processing_pil_idefics3 import (
    get_resize_output_image_size,
)
from transformers.processing_utils import ProcessorMixin

from probes.errors import UserError
from probes.models.adapters.grids import PatchGrid, resized_grid
from probes.models.adapters.marked import MarkedImageAdapter, tile_cells


class SmolVLMImageOnlyProcessor(SmolVLMProcessor):
    """SmolVLM's processor without its video processor, which needs torchvision. Images and
    text are processed exactly as by ``SmolVLMProcessor``; video input is not supported.

    >>> "video_processor" in SmolVLMImageOnlyProcessor.get_attributes()
    False
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169,
                 chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len,
                         chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLM's own reads the video processor's frame settings; images need none
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


AutoProcessor.register(SmolVLMImageOnlyProcessor, SmolVLMImageOnlyProcessor)


def encoder_multiple(height: int, width: int, tile: int) -> tuple[int, int]:
    """(height, width) after ``resize_for_vision_encoder``: the long side up to a multiple of
    ``tile``, the other side from the aspect ratio, then up to a multiple of ``tile`` too.

    >>> encoder_multiple(96, 40, 32)
    (96, 64)
    """
    aspect_ratio = width / height
    if width >= height:
        width = int(np.ceil(width / tile)) * tile
        height = int(np.ceil(int(width / aspect_ratio) / tile)) * tile
    else:
        height = int(np.ceil(height / tile)) * tile
        width = int(np.ceil(int(height * aspect_ratio) / tile)) * tile
    return height, width


class Idefics3Adapter(MarkedImageAdapter):
    """Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3).

    >>> from transformers import Idefics3Config
    >>> Idefics3Adapter(Idefics3Config()).layers_path
    'model.text_model.layers'
    """

    family = "idefics3"
    model_types = ("idefics3",)
    model_class_name = "Idefics3ForConditionalGeneration"
    language_model_path = "model.text_model"
    layers_path = "model.text_model.layers"
    final_norm_path = "model.text_model.norm"

    def processor_images(self, images) -> list:
        return [[image] for image in images]  # SmolVLM's reads a flat list as one row's

    def tiles(self, image_size: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
        """(rows, cols) of tiles the processor cuts an image of ``image_size`` into (0, 0: only
        the global view) and the (width, height) of the resized image they are cut from."""
        tile, _, _, settings = self._geometry()
        width, height = image_size
        if settings["do_resize"]:
            height, width = get_resize_output_image_size(
                np.broadcast_to(np.zeros(1, np.uint8), (1, height, width)),
                resolution_max_side=settings["size"].longest_edge)
        if not settings["do_image_splitting"]:
            return 0, 0, (tile, tile)
        height, width = encoder_multiple(height, width, tile)
        if height > tile or width > tile:
            return height // tile, width // tile, (width, height)
        return 0, 0, (width, height)

    def expansion(self, image_size: tuple[int, int]) -> tuple[str, tuple[PatchGrid, ...], np.ndarray]:
        tile, cells, cell, _ = self._geometry()
        rows, cols, resized = self.tiles(image_size)
        grids, token_cells = [], []
        if rows:
            grids.append(resized_grid(resized, image_size, rows * cells, cols * cells, cell))
            token_cells.append(tile_cells((rows, cols), cells))
        grids.append(resized_grid((tile, tile), image_size, cells, cells, cell))
        token_cells.append(tile_cells((1, 1), cells, grid_index=len(grids) - 1))
        text = self.processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)
        return text, tuple(grids), np.concatenate(token_cells)

    def _geometry(self) -> tuple[int, int, int, dict[str, Any]]:
        """(view side, tokens per view side, token cell side in view pixels, the processor's
        image settings), once the model and processor agree with the layout above."""
        processor = self.processor
        image_processor = getattr(processor, "image_processor", None)
        if not hasattr(processor, "image_seq_len") or not hasattr(image_processor, "split_images"):
            raise UserError(f"the {self.family} adapter needs the checkpoint's {self.family} "
                            "processor to lay out images.")
        settings = image_processor._merge_and_standardize_kwargs(
            **processor._merge_kwargs(tokenizer_init_kwargs=processor.tokenizer.init_kwargs)[
                "images_kwargs"])
        vision = self.config.vision_config
        tile = int(settings["max_image_size"]["longest_edge"])
        if tile != int(vision.image_size):
            raise UserError(f"the {self.family} image processor cuts {tile} px views but the "
                            f"vision tower takes {vision.image_size} px.")
        if settings["do_resize"] and not settings["size"].longest_edge:
            raise UserError(f"fusionlens lays out {self.family} images resized by their longest "
                            f"edge; this image processor's size is {settings['size']}.")
        patches, scale = tile // int(vision.patch_size), int(self.config.scale_factor)
        cells = patches // scale
        if patches % scale or int(processor.image_seq_len) != cells * cells:
            raise UserError(
                f"the processor inserts {processor.image_seq_len} tokens per view but the tower's "
                f"{patches}x{patches} patches shuffled by {scale} give {patches / scale}x"
                f"{patches / scale}.")
        return tile, cells, int(vision.patch_size) * scale, settings


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM / SmolVLM2 (HuggingFaceTB/SmolVLM2-*): Idefics3's layout and model structure."""

    family = "smolvlm"
    model_types = ("smolvlm",)
    model_class_name = "SmolVLMForConditionalGeneration"

    image_only_processor = SmolVLMImageOnlyProcessor
