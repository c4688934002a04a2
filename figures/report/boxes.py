"""Where each map value goes on a sample's image: the pixel box every image token sees, from
the run's recorded model's processor (config and processor files only, no weights:
:func:`probes.models.loading.load_adapter`) and :func:`probes.inputs.token_boxes`, so
LLaVA-1.5's centre crop or padding, LLaVA-NeXT's tiles and Qwen2.5-VL's resize are undone
exactly. Boxes are computed when the report is built; runs do not store them.

A sample's boxes are one base64 blob of uint16 [tokens, 4] (x0, y0, x1, y1) in units of
1 / ``UNIT`` pixel of the image embedded in the page, one box per map value in the order of the
run's ``cells``; ``NONE`` (all four) marks a value with no box (padding, a token cropped away).

>>> import numpy as np
>>> cells = np.array([[0, 0, 1], [-1, -1, -1]])
>>> token_cells = np.array([[0, 0, 0], [0, 0, 1]])
>>> boxes = np.array([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
>>> scaled(cells, token_cells, boxes, (20, 10), (10, 5)).tolist()
[[40, 0, 80, 40], [65535, 65535, 65535, 65535]]
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

UNIT = 8  # sub-pixel units per pixel of the embedded image
NONE = np.iinfo(np.uint16).max


def adapter_for(summary: dict[str, Any]):
    """(the adapter of the run's recorded model, "") or (None, why it cannot be built here)."""
    from probes.models.loading import load_adapter

    model = summary.get("model") or {}
    config = summary.get("config") or {}
    name = model.get("id")
    if not name:
        return None, "the run records no model"
    try:
        return load_adapter(str(name), trust_remote_code=bool(config.get("trust_remote_code")),
                            min_pixels=config.get("min_pixels"),
                            max_pixels=config.get("max_pixels")), ""
    except Exception as err:  # a user's model that cannot be found or read here: say it
        return None, f"the processor of {name} cannot be built here ({str(err).rstrip('.')})"


def scaled(cells: np.ndarray, token_cells: np.ndarray, boxes: np.ndarray,
           image_size: tuple[int, int], shown_size: tuple[int, int]) -> np.ndarray:
    """uint16 [len(cells), 4]: the box of the token whose (grid, row, col) is each of ``cells``
    (``boxes`` [tokens, 4] of the tokens of ``token_cells`` in ``image_size`` pixels), clipped
    to the image and scaled to ``shown_size`` in 1 / UNIT pixels; NONE where no token has the
    cell or its box is empty."""
    where = {tuple(int(v) for v in cell): k for k, cell in enumerate(token_cells)}
    factor = np.array([shown_size[0] / image_size[0], shown_size[1] / image_size[1]] * 2) * UNIT
    limit = np.array([image_size[0], image_size[1]] * 2, dtype=float)
    out = np.full((len(cells), 4), NONE, dtype=np.uint16)
    for i, cell in enumerate(np.asarray(cells)):
        k = where.get(tuple(int(v) for v in cell))
        if k is None or np.isnan(boxes[k]).any():
            continue
        box = np.clip(boxes[k], 0, limit)
        if box[2] > box[0] and box[3] > box[1]:
            out[i] = np.rint(box * factor)
    return out


class Placer:
    """The boxes of a run's samples, one processor call per distinct image size (an image's
    token layout depends on its size alone: ``Adapter.image_layout``)."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.layouts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def pack(self, image, question: str, cells: np.ndarray, shown_size: tuple[int, int]) -> str:
        """The base64 boxes of one sample's map values (see the module's docstring)."""
        from probes.inputs import token_boxes

        size = tuple(image.size)
        if size not in self.layouts:
            inputs = self.adapter.build_inputs([image.convert("RGB")], [question or "?"])
            self.layouts[size] = (inputs.images[0].layout.token_cells, token_boxes(inputs))
        token_cells, boxes = self.layouts[size]
        out = scaled(cells, token_cells, boxes, size, shown_size)
        if (out == NONE).all():
            raise ValueError(f"none of the run's token cells is a token of the {size} image")
        return base64.b64encode(out.astype("<u2").tobytes()).decode("ascii")
