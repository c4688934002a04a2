"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) and Qwen2-VL: one dynamic-resolution
grid per image, multimodal rotary positions.

The image processor resizes each image so both sides are multiples of ``patch * merge`` pixels
and its area lies in ``[min_pixels, max_pixels]`` (``smart_resize``), cuts it into ``patch``-pixel
patches and groups them ``merge x merge``; the tower merges each group into one token, so an
image gives ``(h / (patch*merge)) x (w / (patch*merge))`` tokens, read row by row. The processor
reports ``image_grid_thw = (1, h / patch, w / patch)``, in patches, not tokens.

Positions are three ids per token (time, height, width): text tokens count up as usual, an image's
tokens take the position reached before the image plus their (row, col) in the grid, and the
text after the image resumes at that position plus the larger grid side. The forward computes
them itself only when it is given a 2-D attention mask and no position ids, so a caller that
passes a custom 4-D mask must pass :meth:`Qwen2_5_VLAdapter.position_ids` too.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoProcessor, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from probes.errors import UserError
from probes.models.adapters.base import Adapter, size_field
from probes.models.adapters.grids import ImageLayout, resized_grid

TEXT, IMAGE, VIDEO = 0, 1, 2  # the values of the processor's ``mm_token_type_ids``


class QwenImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen's processor without its video processor, which needs torchvision (transformers
    refuses to build or load a Qwen processor without one). Images and text are processed
    exactly as by ``Qwen2_5_VLProcessor``; video input is not supported.

    >>> "video_processor" in QwenImageOnlyProcessor.get_attributes()
    False
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # the parent passes video_processor=None on; the mixin keeps only the attributes this
        # signature names, so it never looks for a video processor class
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# AutoProcessor finds a saved processor's class by name among the registered ones. Registering
# it under itself, not under Qwen2_5_VLConfig, leaves every other Qwen checkpoint untouched.
AutoProcessor.register(QwenImageOnlyProcessor, QwenImageOnlyProcessor)


class Qwen2_5_VLAdapter(Adapter):
    """Qwen2.5-VL: the layout of an image is pure arithmetic on the image processor's settings.

    >>> from transformers import Qwen2_5_VLConfig
    >>> from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    ...     Qwen2VLImageProcessorPil)
    >>> adapter = Qwen2_5_VLAdapter(Qwen2_5_VLConfig(), Qwen2VLImageProcessorPil())
    >>> layout = adapter.image_layout((336, 336))
    >>> layout.grids[0].rows, layout.grids[0].cols, layout.n_tokens
    (12, 12, 144)
    """

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    # the stock Qwen processor insists on a video processor, which needs torchvision
    image_only_processor = QwenImageOnlyProcessor

    @classmethod
    def load_processor(cls, location: str, min_pixels: int | None = None,
                       max_pixels: int | None = None, **kwargs: Any) -> Any:
        """The checkpoint's processor; ``min_pixels`` / ``max_pixels`` replace its pixel
        budget (the image processor's ``size``; the side not given keeps the checkpoint's)."""
        processor = super().load_processor(location, **kwargs)
        if min_pixels is None and max_pixels is None:
            return processor
        size = processor.image_processor.size
        budget = {"shortest_edge": size_field(size, "shortest_edge") if min_pixels is None
                  else int(min_pixels),
                  "longest_edge": size_field(size, "longest_edge") if max_pixels is None
                  else int(max_pixels)}
        return super().load_processor(location, size=budget, **kwargs)


    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        width, height = image_size
        cell, min_pixels, max_pixels = self._resize_settings()
        try:
            resized_height, resized_width = smart_resize(
                height, width, factor=cell, min_pixels=min_pixels, max_pixels=max_pixels
            )
        except ValueError as err:  # aspect ratio beyond 200:1
            raise UserError(
                f"the {width}x{height} image is too elongated for {self.family}: {err}."
            ) from err
        grid = resized_grid(
            (resized_width, resized_height), image_size,
            rows=resized_height // cell, cols=resized_width // cell, cell_pixels=cell,
        )
        return ImageLayout.single_grid(grid)

    def pixel_budget(self) -> dict[str, int]:
        """The area range every image is resized into (``load_model(min_pixels=...,
        max_pixels=...)`` sets it; recorded with every result)."""
        _, min_pixels, max_pixels = self._resize_settings()
        return {"min_pixels": min_pixels, "max_pixels": max_pixels}

    def _resize_settings(self) -> tuple[int, int, int]:
        """(token cell side in resized pixels, min_pixels, max_pixels), checked on the tower."""
        processor = self.image_processor
        if processor is None:
            raise UserError(
                f"the {self.family} adapter needs the checkpoint's processor to lay out images."
            )
        size = getattr(processor, "size", None)
        min_pixels, max_pixels = size_field(size, "shortest_edge"), size_field(size, "longest_edge")
        if not (min_pixels and max_pixels) or not hasattr(processor, "merge_size"):
            raise UserError(
                f"the image processor {type(processor).__name__} (size {size}) is not Qwen's "
                "min/max-pixels resizer, so fusionlens cannot place its image tokens."
            )
        if not getattr(processor, "do_resize", True):
            raise UserError(
                f"the {self.family} image processor has do_resize=False, which fusionlens "
                "does not support."
            )
        vision = self.config.vision_config
        patch, merge = processor.patch_size, processor.merge_size
        if (patch, merge) != (vision.patch_size, vision.spatial_merge_size):
            raise UserError(
                f"the image processor cuts {patch} px patches merged {merge}x{merge} but the model "
                f"expects {vision.patch_size} px merged {vision.spatial_merge_size}x"
                f"{vision.spatial_merge_size}."
            )
        return int(patch) * int(merge), min_pixels, max_pixels

    def position_ids(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The multimodal rotary position ids a plain forward of ``batch`` uses: ``[3, batch, seq]``
        (time, height, width), 0 at left padding, as the model's own ``get_rope_index`` gives them.

        Pass them with a custom 4-D attention mask; without them the forward cannot compute
        multimodal positions from a 4-D mask and falls back to (or fails on) 1-D positions.
        """
        input_ids = batch["input_ids"]
        types = batch.get("mm_token_type_ids")
        if types is None:  # an older processor: derive the modality of each token from its id
            types = torch.zeros_like(input_ids)
            types[input_ids == self.image_token_id] = IMAGE
            types[input_ids == int(self.config.video_token_id)] = VIDEO
        owner = model if hasattr(model, "get_rope_index") else model.model
        wanted = inspect.signature(owner.get_rope_index).parameters
        optional = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
        kwargs = {name: batch.get(name) for name in optional if name in wanted}
        if "mm_token_type_ids" in wanted:
            kwargs["mm_token_type_ids"] = types.to(input_ids.device)
        with torch.no_grad():
            positions, _ = owner.get_rope_index(
                input_ids, attention_mask=batch["attention_mask"], **kwargs
            )
        return positions


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Qwen2-VL: the same processor, token layout and position scheme as Qwen2.5-VL (its tower
    attends globally instead of in windows, which changes no token's place)."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_class_name = "Qwen2VLForConditionalGeneration"
