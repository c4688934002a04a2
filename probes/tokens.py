"""Named token groups of one input row: which sequence positions are the image, the question,
the answer position, the template, and the image patches inside or outside a region.

Every intervention and measurement names groups, never raw index ranges. Positions are absolute
in the left-padded row, as sorted int64 arrays. ``text`` follows the design's flows: the text
that reads the image is the question, ``last`` and the generated tokens ("image->text (question,
last and generated)"); the chat template's own tokens (e.g. "ASSISTANT:") are not in it.

>>> from PIL import Image
>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> image, question = Image.new("RGB", (64, 64)), "What color is the object?"
>>> inputs = loaded.adapter.build_inputs([image], [question])
>>> groups = token_groups(loaded.adapter, inputs, box=(0, 0, 16, 16))
>>> loaded.processor.tokenizer.decode(inputs.input_ids[0, groups.question])
'what color is the object?'
>>> groups.get("object").tolist(), groups.get("last").tolist()
([3, 4, 11, 12], [74])
>>> groups.with_generated(2).get("question,generated")[-3:].tolist()
[72, 75, 76]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probes.errors import UserError
from probes.models.adapters.base import Adapter, VLInputs
from probes.models.adapters.grids import SEPARATOR, Box, ImageLayout, ImageTokens

GROUPS = (
    "image", "image_patches", "question", "last", "system", "template", "padding", "generated",
    "text", "object", "background",
)
# a question no user types: the template is rendered around it to find where the question goes
_SENTINEL = "\ue000fusionlens-question\ue000"


def _positions(values: Any) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=np.int64))  # sorted, without repeats


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool
class TokenGroups:
    """The token groups of one row of a :class:`VLInputs` (build them with :func:`token_groups`).

    ``image`` holds all image tokens (LLaVA-NeXT's row newlines included), ``image_patches``
    only those that are patches. ``padding, system, image, question, template, last`` partition
    the prompt row; ``question`` leaves out ``last`` should a template end on the question.
    """

    row: int
    length: int  # the padded prompt length: the first generated token's position
    image_tokens: ImageTokens  # the row's image positions and patch grid
    padding: np.ndarray
    system: np.ndarray
    image: np.ndarray
    image_patches: np.ndarray
    question: np.ndarray
    template: np.ndarray
    last: np.ndarray
    object: np.ndarray  # empty without a box or mask
    background: np.ndarray
    n_generated: int = 0

    @classmethod
    def for_row(
        cls, adapter: Adapter, inputs: VLInputs, row: int = 0, **region: Any
    ) -> TokenGroups:
        """Same as :func:`token_groups`."""
        return token_groups(adapter, inputs, row, **region)

    @property
    def generated(self) -> np.ndarray:
        return np.arange(self.length, self.length + self.n_generated, dtype=np.int64)

    @property
    def text(self) -> np.ndarray:
        return _positions(np.concatenate([self.question, self.last, self.generated]))

    def with_generated(self, n: int) -> TokenGroups:
        """The same groups once ``n`` tokens have been generated after the prompt."""
        if n < 0:
            raise ValueError(f"cannot have generated {n} tokens")
        return dataclasses.replace(self, n_generated=int(n))

    def with_region(self, box: Box | None = None, mask: Any = None) -> TokenGroups:
        """The same groups with ``object`` / ``background`` from a box or a pixel mask."""
        obj = _region_positions(self.image_tokens, box, mask)
        return dataclasses.replace(
            self, object=obj, background=np.setdiff1d(self.image_patches, obj)
        )

    def get(self, name: str) -> np.ndarray:
        """Positions of a group, or of a union written ``"question,last"``."""
        parts = [part.strip() for part in name.split(",")]
        unknown = [part for part in parts if part not in GROUPS]
        if unknown:
            raise UserError(
                f"unknown token group {unknown[0]!r}; valid groups are {', '.join(GROUPS)}."
            )
        empty = [part for part in parts if getattr(self, part).size == 0]
        if empty:
            present = [group for group in GROUPS if getattr(self, group).size]
            raise UserError(
                f"the token group {empty[0]!r} is empty in this input (object and background "
                "need a box or mask, generated needs generated tokens); groups here are "
                f"{', '.join(present)}."
            )
        return _positions(np.concatenate([getattr(self, part) for part in parts]))

    def patches(
        self, *, offsets: Sequence[int] | None = None, positions: Sequence[int] | None = None
    ) -> np.ndarray:
        """An explicit set of this row's image tokens, as ``offsets`` into the image's tokens
        (0 = its first token) or as sequence ``positions``; returns sorted positions."""
        if (offsets is None) == (positions is None):
            raise ValueError("pass exactly one of offsets= or positions=")
        image = self.image_tokens.positions
        if offsets is not None:
            chosen = _positions(offsets)
            if chosen.size and (chosen[0] < 0 or chosen[-1] >= image.size):
                raise UserError(f"image token offsets must lie in 0..{image.size - 1}.")
            return image[chosen]
        chosen = _positions(positions)
        if not np.isin(chosen, image).all():
            stray = np.setdiff1d(chosen, image).tolist()
            raise UserError(f"positions {stray} are no image tokens.")
        return chosen


def token_groups(
    adapter: Adapter, inputs: VLInputs, row: int = 0, box: Box | None = None, mask: Any = None
) -> TokenGroups:
    """The token groups of row ``row`` of ``inputs`` (built by ``adapter.build_inputs``), with
    ``object`` / ``background`` from ``box`` (x0, y0, x1, y1 in original-image pixels) or a
    boolean ``mask`` [H, W] of the original image, if given. Without a region, the groups the
    inputs carry (``inputs.groups``, with the region they were built with) are returned."""
    if box is None and mask is None and inputs.groups is not None:
        return inputs.groups[row]
    ids = inputs.input_ids[row].cpu().numpy().astype(np.int64)
    attention = inputs.attention_mask[row].cpu().numpy()
    start = int(np.argmax(attention)) if attention.any() else ids.size
    if not attention[start:].all():
        raise RuntimeError(f"row {row} is not left-padded; fusionlens builds left-padded rows")
    tokens = inputs.images[row]
    question = start + _question_offsets(adapter, inputs.prompts[row], ids[start:],
                                         ids[tokens.positions])
    last = np.array([ids.size - 1], dtype=np.int64)
    question = np.setdiff1d(question, last)
    prompt = np.arange(start, ids.size, dtype=np.int64)
    taken = np.concatenate([tokens.positions, question, last])
    system = np.setdiff1d(prompt[prompt < tokens.positions.min()], taken)
    patch = tokens.layout.token_cells[:, 0] != SEPARATOR
    groups = TokenGroups(
        row=row, length=int(ids.size), image_tokens=tokens,
        padding=np.arange(start, dtype=np.int64), system=system,
        image=_positions(tokens.positions), image_patches=_positions(tokens.positions[patch]),
        question=question, template=np.setdiff1d(prompt, np.concatenate([taken, system])),
        last=last, object=np.zeros(0, np.int64), background=np.zeros(0, np.int64),
    )
    return groups if box is None and mask is None else groups.with_region(box, mask)


def token_groups_batch(
    adapter: Adapter, inputs: VLInputs, boxes: Sequence[Box | None] | None = None,
    masks: Sequence[Any] | None = None,
) -> list[TokenGroups]:
    """:func:`token_groups` of every row; ``boxes`` / ``masks`` give one entry (or None) per row."""
    rows = len(inputs.prompts)
    boxes = [None] * rows if boxes is None else list(boxes)
    masks = [None] * rows if masks is None else list(masks)
    if len(boxes) != rows or len(masks) != rows:
        raise ValueError(f"{rows} rows but {len(boxes)} boxes and {len(masks)} masks")
    return [token_groups(adapter, inputs, row, boxes[row], masks[row]) for row in range(rows)]


# ----------------------------------------------------------------- the question's tokens
def _question_offsets(
    adapter: Adapter, prompt: str, row_ids: np.ndarray, image_ids: np.ndarray
) -> np.ndarray:
    """Offsets (into the row's unpadded tokens) of the tokens that spell the question.

    The template is rendered around a sentinel to split the prompt into template prefix,
    question and template suffix exactly; the image placeholder is expanded as the processor
    expands it, and the fast tokenizer's character offsets map the question's span to tokens.
    Tokenising the expanded prompt must give exactly the processor's ids, else we raise.
    """
    prefix, suffix = adapter.prompt(_SENTINEL).split(_SENTINEL)
    end = len(prompt) - len(suffix)
    if not (prompt.startswith(prefix) and prompt.endswith(suffix) and end > len(prefix)):
        raise RuntimeError("the chat template renders differently around different questions")
    tokenizer = adapter.processor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("finding the question's tokens needs a fast tokenizer with offsets.")
    placeholder = getattr(adapter.processor, "image_token", None) or (
        tokenizer.convert_ids_to_tokens(adapter.image_token_id)
    )
    if prompt.count(placeholder) != 1:
        count = prompt.count(placeholder)
        raise RuntimeError(f"the prompt holds {count} image placeholders, not 1")
    # the processor writes the placeholder once per image token (Pixtral: with its row-break
    # and end tokens among them), then tokenises that text: the image's own tokens, spelled out
    expanded = "".join(tokenizer.convert_ids_to_tokens(image_ids.tolist()))
    head, question = prefix.replace(placeholder, expanded), prompt[len(prefix):end]
    encoded = tokenizer(
        head + question + suffix.replace(placeholder, expanded), return_offsets_mapping=True
    )
    if encoded["input_ids"] != row_ids.tolist():
        raise RuntimeError(
            "re-tokenising the prompt does not give the processor's input_ids, so the "
            "question's tokens cannot be located exactly"
        )
    spans = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    lo, hi = len(head), len(head) + len(question)
    # a token overlapping the question's characters is the question's (a leading-space piece
    # like "▁What" included); zero-width spans are special tokens the tokenizer added
    inside = (spans[:, 1] > spans[:, 0]) & (spans[:, 0] < hi) & (spans[:, 1] > lo)
    if not inside.any():
        raise RuntimeError(f"no token covers the question {question!r}")
    return np.flatnonzero(inside).astype(np.int64)


# ----------------------------------------------------------------- regions
def _region_positions(tokens: ImageTokens, box: Box | None, mask: Any) -> np.ndarray:
    """Positions of the patch tokens overlapping a box or a pixel mask of the original image."""
    layout = tokens.layout
    width, height = layout.image_size
    if (box is None) == (mask is None):
        raise UserError("give either a box or a mask for the object region, not both or neither.")
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise UserError(
                f"the box {tuple(box)} is not a non-empty (x0, y0, x1, y1) box inside the "
                f"{width}x{height} image."
            )
        found = tokens.positions_in_box((x0, y0, x1, y1))
    else:
        found = tokens.positions[_offsets_in_mask(layout, np.asarray(mask, dtype=bool))]
    if found.size == 0:
        raise UserError("the region covers no image patch (the processor may crop it away).")
    return _positions(found)


def _offsets_in_mask(layout: ImageLayout, mask: np.ndarray) -> np.ndarray:
    """Offsets of the patch tokens whose cell overlaps a True pixel (pixel (i, j) covers
    [j, j+1) x [i, i+1), so a full-rectangle mask gives exactly its bounding box's tokens)."""
    width, height = layout.image_size
    if mask.shape != (height, width):
        raise UserError(f"the mask is {mask.shape} but the image needs ({height}, {width}) (H, W).")
    if not mask.any():
        raise UserError("the mask selects no pixel.")
    offsets = []
    for k in range(layout.n_tokens):
        cell = layout.token_box(k)
        if cell is None or cell[2] <= cell[0] or cell[3] <= cell[1]:
            continue  # a separator, or a cell that lies wholly in padding
        x0, y0 = int(np.floor(cell[0])), int(np.floor(cell[1]))
        x1, y1 = int(np.ceil(cell[2])), int(np.ceil(cell[3]))
        if mask[y0:y1, x0:x1].any():
            offsets.append(k)
    return np.asarray(offsets, dtype=np.int64)
