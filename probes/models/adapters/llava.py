"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, one square patch grid.

The CLIP processor resizes the shortest edge to ``size`` and centre-crops ``crop_size``
(optionally padding to a square first); the 336 px checkpoints give a 24x24 grid of 14 px
patches, 576 image tokens.
"""

from __future__ import annotations

import numpy as np

from probes.errors import UserError
from probes.models.adapters.base import Adapter, size_field
from probes.models.adapters.grids import SEPARATOR, ImageLayout, PatchGrid, resized_grid


def _shortest_edge_resize(image_size: tuple[int, int], shortest_edge: int) -> tuple[int, int]:
    """(width, height) after transformers' shortest-edge resize (long side truncated)."""
    width, height = image_size
    short, long = min(width, height), max(width, height)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    model_class_name = "LlavaForConditionalGeneration"

    @classmethod
    def check_config(cls, config) -> None:
        vision = getattr(config, "vision_config", None)
        if getattr(vision, "model_type", None) == "pixtral":
            # pixtral-12b: any image size, [IMG_BREAK] rows; Mistral 3's layout, merged 1x1
            raise UserError("this LLaVA checkpoint has a Pixtral vision tower (as "
                            "mistral-community/pixtral-12b), whose image layout fusionlens' LLaVA "
                            "adapter does not model; Mistral 3 checkpoints (model type mistral3) "
                            "are supported.")
        super().check_config(config)

    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        processor = self.image_processor
        patch = int(self.config.vision_config.patch_size)
        width, height = image_size
        offset = np.zeros(2)
        if getattr(processor, "do_pad", False):
            # pad to a square centred on the image: the padded canvas starts before the image
            side = max(width, height)
            offset -= ((side - width) // 2, (side - height) // 2)
            canvas = (side, side)
        else:
            canvas = (width, height)
        resized = self._resized(canvas)
        crop_offset = np.zeros(2)
        if getattr(processor, "do_center_crop", False):
            crop = processor.crop_size
            final = (size_field(crop, "width"), size_field(crop, "height"))
            crop_offset += ((resized[0] - final[0]) // 2, (resized[1] - final[1]) // 2)
        else:
            final = resized
        # one cell = `patch` resized pixels; map the canvas back to the image, then the padding
        grid = resized_grid(
            resized, canvas, final[1] // patch, final[0] // patch, patch, tuple(crop_offset)
        )
        grid = PatchGrid(
            rows=grid.rows, cols=grid.cols, cell_width=grid.cell_width,
            cell_height=grid.cell_height, origin_x=float(grid.origin_x + offset[0]),
            origin_y=float(grid.origin_y + offset[1]), image_size=image_size,
        )
        layout = ImageLayout.single_grid(grid)
        if self.config.vision_feature_select_strategy == "full":
            # the CLS token comes first and is no patch
            cls = np.array([[SEPARATOR, 0, 0]], dtype=np.int64)
            layout = ImageLayout(grids=layout.grids, token_cells=np.vstack([cls, layout.token_cells]))
        return layout

    def _resized(self, canvas: tuple[int, int]) -> tuple[int, int]:
        processor = self.image_processor
        size = processor.size
        if not getattr(processor, "do_resize", True):
            return canvas
        if size_field(size, "shortest_edge"):
            return _shortest_edge_resize(canvas, size_field(size, "shortest_edge"))
        if size_field(size, "height") and size_field(size, "width"):
            return (size_field(size, "width"), size_field(size, "height"))
        raise UserError(f"the LLaVA image processor's size {size} is not one fusionlens understands.")
