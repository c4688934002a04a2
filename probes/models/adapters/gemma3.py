"""Gemma 3 (``Gemma3ForConditionalGeneration``): a SigLIP tower, soft tokens pooled to one
square grid, and a decoder with sliding-window layers and bidirectional attention inside images.

The image processor resizes every image to ``size`` (896 x 896 for the real checkpoints),
aspect ratio not kept; SigLIP cuts it into ``patch_size`` patches (64 x 64) and the projector
average-pools them to ``mm_tokens_per_image`` soft tokens (256: a 16 x 16 grid, each cell
``size / 16`` resized pixels wide), read row by row. The prompt holds
``<start_of_image>``, the soft tokens, ``<end_of_image>``; only the soft tokens are the image
token (and only they form the image's bidirectional block: ``token_type_ids`` is 1 on them).
Pan-and-scan (extra crops of a long image) is refused.

The decoder's layer types (``text_config.layer_types``: five ``sliding_attention`` layers,
then one ``full_attention``) say which layers read only the last ``sliding_window`` keys and
which of the two rotary tables (local base 10k, global 1M) each layer uses; the engine models
both (:mod:`probes.structure`, :meth:`rotary_type`).
"""

from __future__ import annotations

import math

import numpy as np

from probes.errors import UserError
from probes.models.adapters.base import Adapter, VLInputs, size_field
from probes.models.adapters.grids import ImageLayout, resized_grid
from probes.structure import windows_from

IMAGE_TYPE = 1  # the processor's token_type_ids on an image's soft tokens


class Gemma3Adapter(Adapter):
    """Gemma 3.

    >>> from transformers import Gemma3Config
    >>> from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    >>> processor = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})
    >>> adapter = Gemma3Adapter(Gemma3Config(), processor)
    >>> grid = adapter.image_layout((1000, 500)).grids[0]
    >>> (grid.rows, grid.cols, grid.cell_width, grid.cell_height)
    (16, 16, 62.5, 31.25)
    >>> adapter.sliding_windows()[:6], adapter.rotary_type(5)
    ((4096, 4096, 4096, 4096, 4096, None), 'full_attention')
    """

    family = "gemma3"
    model_types = ("gemma3",)
    model_class_name = "Gemma3ForConditionalGeneration"
    models_sliding_windows = True

    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        processor = self.image_processor
        if getattr(processor, "do_pan_and_scan", False):
            raise UserError("fusionlens does not model Gemma 3's pan-and-scan crops; load the "
                            "processor with do_pan_and_scan=False (its default).")
        side = math.isqrt(int(self.config.mm_tokens_per_image))
        if side * side != int(self.config.mm_tokens_per_image):
            raise UserError(f"mm_tokens_per_image={self.config.mm_tokens_per_image} is not a "
                            "square number of soft tokens; fusionlens cannot place them on a grid.")
        resized = (size_field(processor.size, "width"), size_field(processor.size, "height"))
        if not getattr(processor, "do_resize", True) or None in resized:
            raise UserError(f"the Gemma 3 image processor's size {processor.size} is not a fixed "
                            "height and width, which fusionlens needs to place the soft tokens.")
        # one cell covers resized / side pixels each way; the resize maps it back to the image
        grid = resized_grid((side, side), image_size, side, side, 1)
        return ImageLayout.single_grid(grid)

    def processor_images(self, images) -> list:
        # Gemma3Processor reads a flat list as the images of one prompt
        return [[image] for image in images]

    def image_text(self, layout: ImageLayout) -> str:
        # "\n\n<start_of_image>", the soft tokens, "<end_of_image>\n\n"
        return self.processor.full_image_sequence

    def sliding_windows(self) -> tuple[int | None, ...]:
        text = self.text_config
        return windows_from(text.layer_types, text.sliding_window, self.num_layers)

    def image_blocks(self, inputs: VLInputs, row: int = 0) -> np.ndarray | None:
        types = inputs.batch.get("token_type_ids")
        if types is None:  # no image: every token is text
            return np.full(inputs.input_ids.shape[1], -1, dtype=np.int64)
        is_image = types[row].cpu().numpy() == IMAGE_TYPE
        starts = is_image & ~np.concatenate([[False], is_image[:-1]])
        return np.where(is_image, np.cumsum(starts) - 1, -1).astype(np.int64)

    def rotary_type(self, layer: int) -> str | None:
        return self.text_config.layer_types[layer]
