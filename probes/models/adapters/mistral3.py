"""Mistral 3 (``Mistral3ForConditionalGeneration``): a Pixtral tower (2-D rotary positions,
any image size) whose patches are merged 2x2, then a plain causal Mistral decoder.

The Pixtral image processor shrinks an image (keeping its aspect ratio) until it fits
``longest_edge`` pixels, then stretches each side up to a multiple of ``patch * merge`` pixels
(28 for Mistral-Small-3.1). One token per ``28 x 28`` resized pixels, read row by row; the
processor writes ``[IMG]`` per token, ``[IMG_BREAK]`` after every row but the last, whose
break becomes ``[IMG_END]``. The image's token run is those ``rows * (cols + 1)`` tokens: the
break and end tokens are text embeddings (not image features) but they sit inside the image and
mark its rows, so they belong to it as LLaVA-NeXT's row newlines do (separators, no cell).

The rotary positions of the tower are 2-D (``PixtralRotaryEmbedding``) but live inside the
vision tower, which the engine runs unchanged; the decoder is a plain causal Mistral.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoProcessor
from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size
from transformers.processing_utils import ProcessorMixin

from probes.errors import UserError
from probes.models.adapters.base import Adapter, size_field
from probes.models.adapters.grids import SEPARATOR, ImageLayout, resized_grid


class PixtralImageOnlyProcessor(ProcessorMixin):
    """Pixtral's processor (``PixtralProcessor``) without its torchvision requirement: transformers
    cannot even import the stock one without torchvision, though its PIL image processor needs
    none. Images and text are processed as by ``PixtralProcessor`` (the torchvision test
    compares the two); the settings and saved files are the same.

    >>> sorted(PixtralImageOnlyProcessor.get_attributes())
    ['image_processor', 'tokenizer']
    """

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16,
                 spatial_merge_size: int = 1, chat_template=None, image_token="[IMG]",
                 image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
        self.image_token, self.image_break_token = image_token, image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    def __call__(self, images=None, text=None, **kwargs):
        kwargs.setdefault("return_tensors", "pt")  # as PixtralProcessor's defaults
        return super().__call__(images=images, text=text, **kwargs)

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        cell = self.patch_size * self.spatial_merge_size
        height, width = (int(side) for side in image_inputs["image_sizes"][image_idx])
        row = [self.image_token] * (width // cell) + [self.image_break_token]
        tokens = row * (height // cell)
        tokens[-1] = self.image_end_token
        return "".join(tokens)


AutoProcessor.register(PixtralImageOnlyProcessor, PixtralImageOnlyProcessor)


class Mistral3Adapter(Adapter):
    """Mistral 3 (mistralai/Mistral-Small-3.1-24B-Instruct-2503 and its kin).

    >>> from transformers import Mistral3Config
    >>> from transformers.models.pixtral.image_processing_pil_pixtral import (
    ...     PixtralImageProcessorPil)
    >>> processor = PixtralImageProcessorPil(size={"longest_edge": 1540}, patch_size=14)
    >>> layout = Mistral3Adapter(Mistral3Config(), processor).image_layout((644, 476))
    >>> layout.grids[0].rows, layout.grids[0].cols, layout.n_tokens  # 17 rows of 23 and a break
    (17, 23, 408)
    """

    family = "mistral3"
    model_types = ("mistral3",)
    model_class_name = "Mistral3ForConditionalGeneration"
    image_only_processor = PixtralImageOnlyProcessor  # the stock one needs torchvision

    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        width, height = image_size
        cell, longest = self._resize_settings()
        resized_height, resized_width = get_resize_output_image_size(
            np.zeros((height, width, 3)), size=(longest, longest), patch_size=(cell, cell))
        rows, cols = resized_height // cell, resized_width // cell
        grid = resized_grid((resized_width, resized_height), image_size, rows, cols, cell)
        # row by row: cols patches, then a break (the last row's is the end token)
        row, col = np.meshgrid(np.arange(rows), np.arange(cols + 1), indexing="ij")
        index = np.where(col == cols, SEPARATOR, 0)
        cells = np.stack([index.ravel(), row.ravel(), col.ravel()], 1).astype(np.int64)
        return ImageLayout(grids=(grid,), token_cells=cells)

    def image_text(self, layout: ImageLayout) -> str:
        """``[IMG]`` per patch cell, ``[IMG_BREAK]`` after each row, the last one ``[IMG_END]``."""
        self._separator_ids()  # the processor that writes them, or one sentence
        grid, processor = layout.grids[0], self.processor
        row = self.image_placeholder * grid.cols + processor.image_break_token
        return (row * grid.rows)[: -len(processor.image_break_token)] + processor.image_end_token

    def image_positions(self, input_ids: torch.Tensor) -> list[np.ndarray]:
        """Per row, the positions of the image's tokens: ``[IMG]``, ``[IMG_BREAK]``, ``[IMG_END]``."""
        ids = [self.image_token_id, *self._separator_ids()]
        return [np.flatnonzero(np.isin(row.cpu().numpy(), ids)) for row in input_ids]

    def _separator_ids(self) -> list[int]:
        processor = self.processor
        if not hasattr(processor, "image_break_token_id"):
            raise UserError("the Mistral 3 adapter needs the checkpoint's Pixtral processor, "
                            "which writes the [IMG_BREAK] and [IMG_END] tokens.")
        return [int(processor.image_break_token_id), int(processor.image_end_token_id)]

    def _resize_settings(self) -> tuple[int, int]:
        """(token cell side in resized pixels, longest edge), checked against the model."""
        image_processor = self.image_processor
        size = getattr(image_processor, "size", None)
        longest = size_field(size, "longest_edge")
        patch = getattr(image_processor, "patch_size", None)
        if longest is None or patch is None:
            raise UserError(f"the image processor {type(image_processor).__name__} (size {size}) "
                            "is not Pixtral's longest-edge resizer, so fusionlens cannot place "
                            "its image tokens.")
        if not getattr(image_processor, "do_resize", True):
            raise UserError("the Pixtral image processor has do_resize=False, which fusionlens "
                            "does not support.")
        if longest > int(self.config.vision_config.image_size):
            raise UserError(
                f"the image processor's longest edge {longest} px exceeds the Pixtral tower's "
                f"{self.config.vision_config.image_size} px, beyond its rotary table.")
        tower = int(self.config.vision_config.patch_size)
        merge = int(self.config.spatial_merge_size)
        processor = self.processor
        if hasattr(processor, "spatial_merge_size") and (
                (int(processor.patch_size), int(processor.spatial_merge_size)) != (tower, merge)):
            raise UserError(
                f"the processor cuts {processor.patch_size} px patches merged "
                f"{processor.spatial_merge_size}x{processor.spatial_merge_size} but the model "
                f"expects {tower} px merged {merge}x{merge}.")
        return tower * merge, longest
