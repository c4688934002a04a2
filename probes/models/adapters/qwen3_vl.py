"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) and its MoE variant: Qwen2.5-VL's dynamic
grid (16 px patches merged 2x2, so one token per 32x32 resized pixels), interleaved multimodal
rotary positions from the model's own ``get_rope_index``, and **DeepStack**.

DeepStack: the vision tower hands the language model, besides the image tokens' embeddings,
one feature map per ``vision_config.deepstack_visual_indexes`` entry, and the language model
adds map ``j`` to the hidden states at the image positions right after decoder layer ``j``
(``Qwen3VLTextModel._deepstack_process``). The hidden states the model reports
(``output_hidden_states``, a decoder layer's output) are taken before that addition. The
executor (:mod:`probes.run`) makes the additions itself, from what :meth:`Qwen3VLAdapter.deepstack`
captured in the clean pass; full forwards (the naive reference, the nnsight engine) drop them
through the same method, which edits the additions the language model is called with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import AutoProcessor, Qwen3VLProcessor

from probes.models.adapters.qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL's processor without its video processor (which needs torchvision); images and
    text are processed exactly as by ``Qwen3VLProcessor``.

    >>> "video_processor" in Qwen3VLImageOnlyProcessor.get_attributes()
    False
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


AutoProcessor.register(Qwen3VLImageOnlyProcessor, Qwen3VLImageOnlyProcessor)


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Qwen3-VL: Qwen2.5-VL's layout arithmetic (patch 16), DeepStack additions after the
    first ``len(deepstack_visual_indexes)`` decoder layers.

    >>> from transformers import Qwen3VLConfig
    >>> Qwen3VLAdapter(Qwen3VLConfig()).deepstack_layers
    (0, 1, 2)
    """

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_class_name = "Qwen3VLForConditionalGeneration"
    image_only_processor = Qwen3VLImageOnlyProcessor

    @property
    def deepstack_layers(self) -> tuple[int, ...]:
        return tuple(range(len(self.config.vision_config.deepstack_visual_indexes)))

    @contextlib.contextmanager
    def deepstack(self, model: torch.nn.Module, removed: Sequence[frozenset[int]] = (),
                  captured: dict | None = None) -> Iterator[None]:
        def edit(module, args, kwargs):
            masks, embeds = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
            if masks is None or embeds is None:  # a decoding step: nothing is added
                return None
            if any(removed):
                embeds = _drop_rows(masks, list(embeds), removed)
                kwargs = {**kwargs, "deepstack_visual_embeds": embeds}
            if captured is not None:
                positions = torch.nonzero(masks[0].cpu()).flatten()
                count = int(positions.numel())
                captured.update({layer: (positions, values[:count].detach().clone())
                                 for layer, values in enumerate(embeds)})
            return args, kwargs

        handle = self.language_model(model).register_forward_pre_hook(edit, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def _drop_rows(masks: torch.Tensor, embeds: list[torch.Tensor],
               removed: Sequence[frozenset[int]]) -> list[torch.Tensor]:
    """The additions with row b's entries zeroed at the layers ``removed[b]``: the values of
    every row's image positions are concatenated row after row (``visual_pos_masks`` order),
    and adding zero leaves the hidden states exactly as they were."""
    counts = masks.sum(-1).tolist()
    starts = [sum(counts[:row]) for row in range(len(counts))]
    for layer in range(len(embeds)):
        rows = [row for row, dropped in enumerate(removed) if layer in dropped]
        if rows:
            embeds[layer] = embeds[layer].clone()
            for row in rows:
                embeds[layer][starts[row] : starts[row] + counts[row]] = 0
    return embeds


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: Qwen3-VL with mixture-of-experts MLPs in the decoder (the layers run as
    they are; the image path, positions and DeepStack are Qwen3-VL's)."""

    family = "qwen3_vl_moe"
    model_types = ("qwen3_vl_moe",)
    model_class_name = "Qwen3VLMoeForConditionalGeneration"

