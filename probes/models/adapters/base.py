"""The adapter: everything that differs between model families, as data and small functions.

One subclass per family (one small file each). Nothing outside ``probes/models/adapters``
branches on the family: code asks the adapter where the decoder layers are, which token is the
image token, how an image becomes tokens, how to build inputs and which position ids to pass.
"""

from __future__ import annotations

import contextlib
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from probes.errors import UserError
from probes.models.adapters.grids import ImageLayout, ImageTokens
from probes.models.adapters.modelled import check_modelled


@dataclass
class VLInputs:
    """A batch of (image, question) inputs built by an adapter.

    ``batch`` is exactly what ``model(**batch)`` and ``model.generate(**batch)`` take;
    ``images[b]`` says where row b's image tokens are and which patch each one is.
    Rows are left-padded, so position ``-1`` of every row is the last prompt token.
    ``groups[b]``, when set (:func:`probes.inputs.build_inputs` sets it, with the box or mask
    given there), are row b's token groups: :func:`probes.tokens.token_groups` asked for that
    row without a region returns them, so every later call sees the same ``object`` /
    ``background``.
    """

    batch: Any  # transformers.BatchFeature
    images: tuple[ImageTokens, ...]
    prompts: tuple[str, ...]
    groups: tuple[Any, ...] | None = None  # probes.tokens.TokenGroups per row

    @property
    def input_ids(self) -> torch.Tensor:
        return self.batch["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.batch["attention_mask"]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VLInputs:
        """Move tensors to ``device``; floating tensors (pixel values) also to ``dtype``."""
        moved = {}
        for key, value in self.batch.items():
            if isinstance(value, torch.Tensor):
                cast = dtype if (dtype is not None and value.is_floating_point()) else None
                value = value.to(device=device, dtype=cast)
            moved[key] = value
        self.batch.data.update(moved)
        return self


def size_field(size: Any, name: str) -> int | None:
    """Read ``name`` from an image processor's size (a transformers SizeDict or a plain dict)."""
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return None if value is None else int(value)


def check_question(question: str) -> str:
    """The question stripped, or a UserError if nothing is left."""
    question = question.strip()
    if not question:
        raise UserError("the question is empty; pass a question such as --question 'What shape is in the image?'.")
    return question


@dataclass(frozen=True)
class NormLayout:
    """Where a language model's norms depart from Llama's pre-norm block (what
    :mod:`probes.heads` linearises). ``unit_offset``: its RMSNorms scale by ``1 + weight``
    (Gemma's) rather than by ``weight``. ``post_norms``: the names, in a decoder layer, of the
    norms applied to the attention output and to the MLP output before each is added to the
    residual stream (Gemma 2 and 3's sandwich norms); None where both are added as they are."""

    unit_offset: bool = False
    post_norms: tuple[str, str] | None = None


_GEMMA_SANDWICH = NormLayout(True, ("post_attention_layernorm", "post_feedforward_layernorm"))
# by the language model's config.model_type (a LLaVA may hold a Gemma 2); any other: Llama's
NORM_LAYOUTS = {"gemma": NormLayout(unit_offset=True), "gemma2": _GEMMA_SANDWICH,
                "gemma3_text": _GEMMA_SANDWICH}


class Adapter(ABC):
    """Base class: the family-specific facts about one loaded model and its processor.

    Subclasses set the class attributes and implement :meth:`image_layout`; the rest is shared.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter handles
    model_class_name: ClassVar[str]  # the transformers class the checkpoint loads into
    language_model_path: ClassVar[str] = "model.language_model"
    layers_path: ClassVar[str] = "model.language_model.layers"
    final_norm_path: ClassVar[str] = "model.language_model.norm"
    lm_head_path: ClassVar[str] = "lm_head"
    attention_name: ClassVar[str] = "self_attn"
    # inside a decoder layer / its attention module: the MLP and the attention's output
    # projection (whose input holds each head's slice); None where a family has no such module
    # (activation patching refuses that site, probes.patching)
    mlp_name: ClassVar[str | None] = "mlp"
    output_projection_name: ClassVar[str | None] = "o_proj"

    def __init__(self, config: Any, processor: Any = None) -> None:
        if config is not None:  # a processor-only adapter (prompts) has no model to check
            self.check_config(config)
        self.config = config
        self.processor = processor

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse (one UserError sentence) a model whose config turns on an attention feature
        the engine does not reproduce: :mod:`probes.models.adapters.modelled`. A family with
        features of its own to refuse extends this."""
        check_modelled(config, cls.models_sliding_windows)

    # a processor class that handles images and text as the family's stock one does without
    # torchvision, for a family whose stock processor needs torchvision (for video only)
    image_only_processor: ClassVar[type | None] = None

    @classmethod
    def load_processor(cls, location: str, **kwargs: Any) -> Any:
        """Load a checkpoint's processor: the stock one, or without torchvision the family's
        ``image_only_processor`` where it has one; a family whose processor cannot load here
        otherwise overrides this."""
        import transformers
        from transformers.utils import is_torchvision_available

        if cls.image_only_processor is not None and not is_torchvision_available():
            return cls.image_only_processor.from_pretrained(location, **kwargs)
        return transformers.AutoProcessor.from_pretrained(location, **kwargs)

    # ----------------------------------------------------------------- model structure
    @property
    def text_config(self) -> Any:
        return self.config.get_text_config()

    @property
    def norm_layout(self) -> NormLayout:
        """How the language model's norms depart from Llama's (:data:`NORM_LAYOUTS`)."""
        return NORM_LAYOUTS.get(getattr(self.text_config, "model_type", None), NormLayout())

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        explicit = getattr(self.text_config, "head_dim", None)
        return int(explicit or self.text_config.hidden_size // self.num_heads)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def max_context(self) -> int:
        return int(self.text_config.max_position_embeddings)

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def language_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The decoder stack (embeddings, layers, final norm, rotary embedding)."""
        return operator.attrgetter(self.language_model_path)(model)

    def decoder_layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        """The language model's decoder layers, in order."""
        return operator.attrgetter(self.layers_path)(model)

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The self-attention module of every decoder layer."""
        return [getattr(layer, self.attention_name) for layer in self.decoder_layers(model)]

    def final_norm(self, model: torch.nn.Module) -> torch.nn.Module:
        return operator.attrgetter(self.final_norm_path)(model)

    def lm_head(self, model: torch.nn.Module) -> torch.nn.Module:
        return operator.attrgetter(self.lm_head_path)(model)

    # ----------------------------------------------------------------- DeepStack
    @property
    def deepstack_layers(self) -> tuple[int, ...]:
        """The decoder layers after which the model adds vision features to the residual
        stream at the image positions (Qwen3-VL's DeepStack); none in most families."""
        return ()

    @contextlib.contextmanager
    def deepstack(self, model: torch.nn.Module, removed: Sequence[frozenset[int]] = (),
                  captured: dict | None = None) -> Iterator[None]:
        """Within the block, a forward of ``model`` drops batch row b's DeepStack additions
        after the layers ``removed[b]``, and ``captured`` (if given) is filled with row 0's
        additions {layer: (positions, values [positions, hidden])} as the forward makes them.
        A family without DeepStack (this base) has nothing to drop or capture."""
        if any(removed):
            raise UserError(f"the {self.family} model has no DeepStack additions to remove.")
        yield

    # ----------------------------------------------------------------- images
    @property
    def image_processor(self) -> Any:
        """The image processor (the processor may be given whole or as its image part)."""
        return getattr(self.processor, "image_processor", self.processor)

    @abstractmethod
    def image_layout(self, image_size: tuple[int, int]) -> ImageLayout:
        """How an image of ``image_size`` = (width, height) pixels becomes tokens."""

    def image_positions(self, input_ids: torch.Tensor) -> list[np.ndarray]:
        """Per row, the positions holding the image token."""
        return [
            np.flatnonzero(row.cpu().numpy() == self.image_token_id) for row in input_ids
        ]

    @property
    def image_placeholder(self) -> str:
        """The text the chat template writes where an image goes."""
        return getattr(self.processor, "image_token", None) or (
            self.processor.tokenizer.convert_ids_to_tokens(self.image_token_id)
        )

    def image_text(self, layout: ImageLayout) -> str:
        """The text the processor writes in place of one image's placeholder: the placeholder
        once per image token here; a family whose processor writes text markers among the
        image tokens (tile tags, ``<img>``) overrides this."""
        return self.image_placeholder * layout.n_tokens

    def image_span(self, row_ids: np.ndarray, positions: np.ndarray,
                   layout: ImageLayout) -> np.ndarray:
        """The positions of one image's tokens in a row, given where the image token itself
        is (``positions``): those here; a family whose image also holds text markers widens
        them to the whole expansion of the placeholder."""
        return positions

    # ----------------------------------------------------------------- inputs
    def prompt(self, question: str) -> str:
        """The family's chat-templated prompt for one image and one question."""
        question = check_question(question)
        if getattr(self.processor, "chat_template", None) is None:
            raise UserError("the checkpoint's processor has no chat template, so a prompt cannot be built.")
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def build_inputs(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> VLInputs:
        """Tokenise (image, question) pairs with the family's processor, left-padded."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        prompts = tuple(self.prompt(question) for question in questions)
        self.processor.tokenizer.padding_side = "left"  # the answer position is -1 in every row
        batch = self.processor(
            images=self.processor_images(images), text=list(prompts), padding=True, return_tensors="pt"
        )
        length = batch["input_ids"].shape[1]
        if length > self.max_context:
            raise UserError(
                f"the input is {length} tokens long but the model's context is {self.max_context}; "
                "shorten the question or use a smaller image."
            )
        positions = self.image_positions(batch["input_ids"])
        image_tokens = []
        for row, (image, row_positions) in enumerate(zip(images, positions)):
            layout = self.image_layout(image.size)
            row_ids = batch["input_ids"][row].cpu().numpy()
            row_positions = self.image_span(row_ids, row_positions, layout)
            if layout.n_tokens != len(row_positions):
                raise RuntimeError(
                    f"row {row}: the processor inserted {len(row_positions)} image tokens but the "
                    f"{self.family} adapter expects {layout.n_tokens} for a {image.size} image"
                )
            image_tokens.append(ImageTokens(positions=row_positions, layout=layout))
        return VLInputs(batch=batch, images=tuple(image_tokens), prompts=prompts)

    def processor_images(self, images: Sequence[Image.Image]) -> list:
        """The images as the processor takes them with one prompt per row: a flat list here;
        a processor that reads a flat list as one row's images takes one list per row."""
        return list(images)

    # ----------------------------------------------------------------- attention structure
    # whether the engine reproduces this family's sliding windows (Gemma 3's); the config
    # check refuses a window that cuts within the context for every other family
    models_sliding_windows: ClassVar[bool] = False

    def sliding_windows(self) -> tuple[int | None, ...]:
        """Per decoder layer, the sliding window a query reads within (None: the layer attends
        to every earlier key). Only a family that ``models_sliding_windows`` has any."""
        return (None,) * self.num_layers

    def image_blocks(self, inputs: VLInputs, row: int = 0) -> np.ndarray | None:
        """Per position of ``inputs``' row ``row``, the id of the image block whose tokens
        attend to each other bidirectionally in prefill (-1 outside any); None for a family
        that attends causally inside images (every one but Gemma 3)."""
        return None

    def rotary_type(self, layer: int) -> str | None:
        """The argument a layer's rotary tables are computed with (Gemma 3: its layer type,
        whose table has its own base), or None where one table serves every layer."""
        return None

    def position_ids(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Position ids for a forward with a custom attention mask, in the shape the model's
        forward takes: ``[batch, seq]`` here, ``[3, batch, seq]`` for Qwen's multimodal rotary
        positions (which override this).

        Left padding shifts real tokens; positions count only non-padding tokens, as
        ``generate`` does.
        """
        attention_mask = batch["attention_mask"]
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
