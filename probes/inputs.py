"""Inputs for one (image, question): built with the family's processor, on the model's device,
carrying their token groups (with the ``object`` / ``background`` of a box or mask), and the
pixel box of every image token in the original image.

The groups travel with the inputs (``inputs.groups``), so every later call
(:func:`probes.run.run_knockouts`, :func:`probes.run.masked_generate`, :func:`probes.quick.record_attention`,
:func:`probes.quick.decode`, the nnsight engine) names the same ``object`` without being given
``groups=``; passing ``groups=`` explicitly still wins.

>>> from PIL import Image
>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> inputs = build_inputs(loaded, Image.new("RGB", (64, 64)), "what shape is it?", box=(0, 0, 16, 16))
>>> inputs.groups[0].get("object").tolist()
[3, 4, 11, 12]
>>> token_boxes(inputs, [3, 4]).tolist()  # 8 px cells of the 64 px image, in its pixels
[[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from probes.errors import UserError
from probes.images import load_image, to_rgb
from probes.models.adapters import VLInputs
from probes.models.adapters.grids import Box
from probes.models.loading import LoadedModel
from probes.tokens import token_groups


def build_inputs(loaded: LoadedModel, image: Image.Image | str | Path, question: str,
                 box: Box | None = None, mask: Any = None) -> VLInputs:
    """One input row for ``image`` (a PIL image or an image file) and ``question``, built with
    the family's processor and chat template, on the model's device and dtype.

    ``box`` (x0, y0, x1, y1 in the original image's pixels, end-exclusive) or ``mask`` (boolean
    [H, W]) marks the region the question is about: the tokens of the image patches overlapping
    it are the group ``object``, the other patches ``background``. The groups are kept in
    ``inputs.groups``, so knockouts, recording and decoding of these inputs all use them."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    elif isinstance(image, Image.Image):
        image = to_rgb(image)
    else:
        raise UserError(f"the image must be a PIL image or an image file's path, not "
                        f"{type(image).__name__}.")
    inputs = loaded.adapter.build_inputs([image], [question]).to(loaded.device, loaded.dtype)
    inputs.groups = (token_groups(loaded.adapter, inputs, 0, box=box, mask=mask),)
    return inputs


def token_boxes(inputs: VLInputs, positions: Sequence[int] | None = None, row: int = 0) -> np.ndarray:
    """The pixel box (x0, y0, x1, y1) in row ``row``'s original image that each token at
    ``positions`` (default: every image token, in order) sees, as float [n, 4]. A token that
    is no image patch (LLaVA-NeXT's row newline, text) or whose cell lies wholly in the
    processor's padding gets NaN. This is the geometry :func:`figures.overlay` draws with.

    The boxes undo each family's resize, crop, padding and tiling (the adapter's
    :meth:`~probes.models.adapters.base.Adapter.image_layout`): LLaVA-1.5's one grid, LLaVA-NeXT's
    base grid then its unpadded tiles, Qwen2.5-VL's merged 2x2 patches."""
    tokens = inputs.images[row]
    chosen = tokens.positions if positions is None else np.asarray(positions, dtype=np.int64)
    offset_of = {int(position): k for k, position in enumerate(tokens.positions)}
    boxes = np.full((chosen.size, 4), np.nan)
    for i, position in enumerate(chosen.tolist()):
        k = offset_of.get(int(position))
        cell = None if k is None else tokens.layout.token_box(k)
        if cell is not None and cell[2] > cell[0] and cell[3] > cell[1]:
            boxes[i] = cell
    return boxes
