"""Grounding (RefCOCO, RefCOCO+, RefCOCOg): read the box a reply gives, map it from the model's
coordinates to the original image, and compare it with the target box; a hit is IoU >= 0.5.

Qwen2.5-VL answers ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`` in absolute pixels of its
resized input (width = grid columns x 14, height = grid rows x 14 after ``smart_resize``), often
inside a fenced json block; a bare list of four numbers is read too. A :class:`BoxFrame` says
what those numbers are relative to; :func:`frame_for` derives it from a model's adapter.

>>> frame = BoxFrame(input_size=(28, 56), image_size=(100, 150))
>>> frame.to_image((14, 28, 28, 56))
(50.0, 75.0, 100.0, 150.0)
>>> parse_box('```json\\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\\n```')
(1.0, 2.0, 3.0, 4.0)
>>> iou((0, 0, 2, 2), (1, 0, 3, 2))
0.3333333333333333
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from analyses.scoring.base import Verdict, rule
from probes.errors import UserError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), continuous, x1 > x0 for a real box
HIT_IOU = 0.5
NUMBER = r"-?\d+(?:\.\d+)?"
FOUR_NUMBERS = re.compile(r"\[\s*" + r"\s*,\s*".join([f"({NUMBER})"] * 4) + r"\s*\]")
BBOX_KEY = re.compile(r'"bbox_2d"\s*:\s*')
NORMALISED_1000 = (1000, 1000)  # Qwen2-VL's box coordinates run 0..1000 on either side


@dataclass(frozen=True)
class BoxFrame:
    """The coordinates of a reply's box: ``input_size`` = (width, height) of the space the model
    answers in (Qwen2.5-VL: its resized input in pixels), ``image_size`` = (width, height) of the
    original image, where the target box lives."""

    input_size: tuple[int, int]
    image_size: tuple[int, int]

    def to_image(self, box: Box) -> Box:
        """``box`` in original-image pixels, clipped to the image."""
        scale_x = self.image_size[0] / self.input_size[0]
        scale_y = self.image_size[1] / self.input_size[1]
        width, height = self.image_size
        x0, y0, x1, y1 = box
        return (
            min(max(x0 * scale_x, 0.0), width), min(max(y0 * scale_y, 0.0), height),
            min(max(x1 * scale_x, 0.0), width), min(max(y1 * scale_y, 0.0), height),
        )


def frame_for(adapter, image_size: tuple[int, int]) -> BoxFrame:
    """The frame of ``adapter``'s box replies about an image of ``image_size`` = (width,
    height): Qwen2.5-VL's resized input (its layout's grid times the merged-patch side),
    Qwen2-VL's 0..1000 square; other families have no box protocol fusionlens knows."""
    family = getattr(adapter, "family", "")
    if family == "qwen2_vl":
        return BoxFrame(NORMALISED_1000, tuple(image_size))
    if family != "qwen2_5_vl":
        raise UserError(
            f"fusionlens knows the box coordinates of Qwen2.5-VL and Qwen2-VL replies, not of "
            f"{family or type(adapter).__name__}; grounding needs one of those."
        )
    grid = adapter.image_layout(tuple(image_size)).grids[0]
    processor = adapter.image_processor
    cell = int(processor.patch_size) * int(processor.merge_size)
    return BoxFrame((grid.cols * cell, grid.rows * cell), tuple(image_size))


def _numbers(values) -> Box | None:
    if isinstance(values, list) and len(values) == 4:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return tuple(float(v) for v in values)
    return None


def _from_json(text: str) -> Box | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None
    bare = _numbers(value)
    if bare is not None:
        return bare
    for item in value:
        if isinstance(item, dict) and (box := _numbers(item.get("bbox_2d"))) is not None:
            return box
    return None


def parse_box(reply: str) -> Box | None:
    """The first box in a reply: Qwen's JSON (fenced or not, also cut short), else the first
    bracketed list of four numbers; None when there is none."""
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", reply, re.DOTALL)
    body = (fenced.group(1) if fenced else reply).strip()
    box = _from_json(body)
    if box is not None:
        return box
    key = BBOX_KEY.search(body)
    match = FOUR_NUMBERS.search(body, key.end() if key else 0) or FOUR_NUMBERS.search(body)
    return tuple(float(v) for v in match.groups()) if match else None


def iou(first: Box, second: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either has no area."""
    def area(box: Box) -> float:
        return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)

    inner = (max(first[0], second[0]), max(first[1], second[1]),
             min(first[2], second[2]), min(first[3], second[3]))
    union = area(first) + area(second) - area(inner)
    return area(inner) / union if union > 0 else 0.0


def target_box(sample) -> Box:
    """The box a grounding sample asks for, in original-image pixels: ``meta["bbox"]``
    (COCO's float [x, y, width, height]) where present, else the first target box."""
    meta = getattr(sample, "meta", None) or {}
    if "bbox" in meta:
        x, y, width, height = (float(v) for v in meta["bbox"])
        return (x, y, x + width, y + height)
    boxes = sample.target_boxes
    if not boxes:
        raise UserError(f"the grounding sample {sample.id!r} has no target box.")
    box = boxes[0]
    return (float(box.x0), float(box.y0), float(box.x1), float(box.y1))


def _image_size(sample) -> tuple[int, int]:
    return sample.image.size


@rule("refcoco")
def judge_box(reply: str, sample, frame: BoxFrame | None = None) -> Verdict:
    """A hit (score 1) when the reply's box, mapped by ``frame`` (None: the reply is in
    original-image pixels), overlaps the target box with IoU >= 0.5."""
    box = parse_box(reply)
    if box is None:
        return Verdict(0.0, "", iou=0.0)
    frame = frame or BoxFrame(_image_size(sample), _image_size(sample))
    mapped = frame.to_image(box)
    overlap = iou(mapped, target_box(sample))
    shown = "[" + ", ".join(f"{v:.1f}" for v in mapped) + "]"
    return Verdict(float(overlap >= HIT_IOU), shown, iou=overlap)
